"""The SQL expression language and its compiler to PostgreSQL text."""

__all__: list[str] = []
