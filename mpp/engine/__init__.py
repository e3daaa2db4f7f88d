"""The seller engine: the purchase as a pipeline of steps, framework-neutral."""

__all__: list[str] = []
