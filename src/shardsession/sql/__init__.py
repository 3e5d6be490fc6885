"""The SQL expression language and its compiler to PostgreSQL text."""
