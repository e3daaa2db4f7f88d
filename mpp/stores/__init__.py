"""Where records live: one interface per kind of record, SQLite and PostgreSQL side by side."""

__all__: list[str] = []
