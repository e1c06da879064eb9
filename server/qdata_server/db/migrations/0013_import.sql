-- qdata: no-transaction
-- Importing the old services' dictionaries (`qdata-server import`, docs/import.md).
--
-- Opening balances are ledger transactions of their own kind, credited from a system account of
-- their own (opening_balances), so imported money is neither a payment received nor a promotion
-- and revenue reports stay true.
--
-- import_log is the importer's provenance and resume record: one row per imported entity (a user,
-- an opening balance, a chat session, a batch of messages, a rating, the preferences, an API key),
-- keyed by a request_id derived from the old keys and written in the same transaction as the
-- entity. It is never purged (unlike idempotency_keys), so a re-run a week after a crash creates
-- nothing twice. It keeps the old keys, never a secret or personal data (rows here outlive
-- DeleteUser's erasure); the opening balance's row keeps the old transaction history, read-only.

-- Outside a transaction, each statement on its own and each safe to run twice: swapping a CHECK
-- (drop the old, add the wider one NOT VALID) is one statement that holds the table's lock for a
-- moment only, and VALIDATE then checks the existing rows without blocking writes, where a plain
-- ADD CONSTRAINT would hold off every ledger write for the length of a full scan. The new sets
-- are supersets of the old, so no row can fail. (One migration number was allotted to the
-- import, so the table is created here too, re-runnably.)

ALTER TABLE ledger_transactions
    DROP CONSTRAINT IF EXISTS ledger_transactions_kind_valid,
    ADD CONSTRAINT ledger_transactions_kind_valid CHECK (
        kind IN ('deposit', 'charge', 'refund', 'transfer', 'hold_capture', 'opening_balance')) NOT VALID;
ALTER TABLE ledger_transactions VALIDATE CONSTRAINT ledger_transactions_kind_valid;

ALTER TABLE ledger_postings
    DROP CONSTRAINT IF EXISTS ledger_postings_system_account_valid,
    ADD CONSTRAINT ledger_postings_system_account_valid CHECK (
        system_account IN ('payments_received', 'promotions', 'revenue', 'refunds', 'opening_balances')) NOT VALID;
ALTER TABLE ledger_postings VALIDATE CONSTRAINT ledger_postings_system_account_valid;

CREATE TABLE IF NOT EXISTS import_log (
    user_id     uuid        NOT NULL,
    request_id  text        NOT NULL,
    step        text        NOT NULL,
    legacy_key  text        NOT NULL,
    legacy      jsonb       NOT NULL,
    response    bytea       NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT import_log_pkey PRIMARY KEY (user_id, request_id),
    CONSTRAINT import_log_user_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT import_log_step_valid CHECK (
        step IN ('user', 'opening_balance', 'chat_session', 'chat_messages', 'rating', 'preferences', 'api_key',
                 'complete'))
);

-- Written once, read for resuming and reconciliation; never changed.
GRANT SELECT, INSERT ON import_log TO qdata_service;
