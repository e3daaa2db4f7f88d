"""The sans-I/O protocol: wire formats, headers, challenge ids, digests, models, errors, keys, receipts."""

__all__: list[str] = []
