"""The `mpp` command line."""

__all__: list[str] = []
