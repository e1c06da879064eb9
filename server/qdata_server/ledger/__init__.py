"""LedgerService: prepaid credits as a double-entry ledger with holds (SQL in 0003_ledger.sql)."""
