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
-- nothing twice. The legacy record it came from is kept with it (never a secret), which is where
-- the old transaction history stays, read-only.

ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_kind_valid;
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_kind_valid CHECK (
    kind IN ('deposit', 'charge', 'refund', 'transfer', 'hold_capture', 'opening_balance'));

ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_system_account_valid;
ALTER TABLE ledger_postings ADD CONSTRAINT ledger_postings_system_account_valid CHECK (
    system_account IN ('payments_received', 'promotions', 'revenue', 'refunds', 'opening_balances'));

CREATE TABLE import_log (
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
