"""BudgetService: users' spend caps (CRUD, reads with the current period's consumption) and the
alert feed. The enforcement itself lives in the database, in the ledger's write path
(db/functions/budget_enforcement.sql); this package only keeps the budgets and reads them."""
