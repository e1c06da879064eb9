"""Database access: connection pool, transactions, named SQL and migrations."""
