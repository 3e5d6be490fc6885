"""shardsession benchmarks: ratios against raw psycopg (and SQLAlchemy) in one run."""
