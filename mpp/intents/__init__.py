"""Payment intents other than charge: their sans-I/O rules."""

__all__: list[str] = []
