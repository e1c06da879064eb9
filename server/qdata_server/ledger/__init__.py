"""LedgerService: prepaid credits as a double-entry ledger with holds (SQL functions in db/functions/ledger.sql)."""
