-- Budgets (BudgetService, budget.proto): spend caps per user, currency and period, with optional
-- model and caller scopes, enforced in the spending call's own transaction.
--
-- What counts is decided where the ledger writes (db/functions/budget_enforcement.sql): triggers
-- on ledger_transactions (charges, hold captures, refunds) and ledger_holds (new holds) add a
-- spend to every budget that applies, in the period current at that moment, and refuse it when a
-- HARD budget would go above its limit. Every writer of a user's ledger in a currency holds the
-- account's row lock (ledger_lock_account), and so does every budget change, so the check and
-- the spend it judges cannot interleave with another spend of the same user and currency.
--
-- A period's spend is a rollup row (budget_periods) maintained in the spending transaction and
-- keyed by the period's start: a new period is a new row, so periods reset by time alone and no
-- job ever resets anything. Active holds are not rolled up: they are summed from ledger_holds
-- when needed (few rows, an index of their own), so a hold that expires stops counting at once.
-- budget_spend_entries remembers what each transaction counted toward, and in which period, so a
-- refund gives back exactly there.

-- The model a usage charge paid for, and the calling service that moved the money (also for
-- movements that carry no request key of their own, such as a usage record's overage charge):
-- the two scopes a budget can have. NULL in rows written before this migration.
ALTER TABLE ledger_transactions ADD COLUMN model_id text, ADD COLUMN caller text;

-- The ledger functions that write transactions take them as two trailing parameters (default
-- NULL, so the previous release's positional calls still run); the old signatures are dropped so
-- that no call is ambiguous, and the new ones created here at once (their current text is in
-- db/functions/ledger.sql, applied right after) so that no call finds them missing in between.
DROP FUNCTION IF EXISTS ledger_insert_transaction(uuid, text, bigint, text, uuid, text, uuid, text, uuid, text, text, text,
                                                  text, uuid, uuid, text, text, text, bytea);
DROP FUNCTION IF EXISTS ledger_charge(uuid, bigint, text, text, text, text, text, text, bytea);
DROP FUNCTION IF EXISTS ledger_capture_hold(uuid, uuid, bigint, text, text, text, text, text, bytea);

CREATE OR REPLACE FUNCTION ledger_insert_transaction(
    p_owner uuid, p_kind text, p_amount bigint, p_currency text, p_debit_user uuid, p_debit_system text,
    p_credit_user uuid, p_credit_system text, p_counterparty uuid, p_description text, p_reference text,
    p_external_reference text, p_deposit_source text, p_original uuid, p_hold uuid, p_request_id text,
    p_actor text, p_method text, p_request_hash bytea, p_model text DEFAULT NULL, p_caller text DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    new_id uuid;
BEGIN
    INSERT INTO ledger_transactions (user_id, kind, counterparty_user_id, amount_micros, currency_code,
                                     description, reference, external_reference, deposit_source,
                                     original_transaction_id, hold_id, request_id, request_actor,
                                     request_method, request_hash, model_id, caller)
    VALUES (p_owner, p_kind, p_counterparty, p_amount, p_currency, p_description, p_reference,
            p_external_reference, p_deposit_source, p_original, p_hold, p_request_id, p_actor,
            p_method, p_request_hash, p_model, coalesce(p_caller, p_actor))
    RETURNING transaction_id INTO new_id;
    INSERT INTO ledger_postings (user_id, transaction_id, leg, account_user_id, system_account, currency_code, amount_micros)
    VALUES (p_owner, new_id, 1, p_debit_user, p_debit_system, p_currency, -p_amount),
           (p_owner, new_id, 2, p_credit_user, p_credit_system, p_currency, p_amount);
    RETURN new_id;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_charge(
    p_user uuid, p_amount bigint, p_currency text, p_description text, p_reference text, p_request_id text,
    p_actor text DEFAULT NULL, p_method text DEFAULT NULL, p_request_hash bytea DEFAULT NULL,
    p_model text DEFAULT NULL, p_caller text DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_check_request(p_user, p_actor, p_request_id);
    PERFORM ledger_debit_available(ledger_lock_account(p_user, p_currency), p_amount);
    RETURN ledger_insert_transaction(
        p_user, 'charge', p_amount, p_currency, p_user, NULL, NULL, 'revenue',
        NULL, p_description, p_reference, '', '', NULL, NULL, p_request_id, p_actor, p_method, p_request_hash,
        p_model, p_caller);
END;
$$;

CREATE OR REPLACE FUNCTION ledger_capture_hold(
    p_user uuid, p_hold uuid, p_amount bigint, p_description text, p_request_id text, p_reference text DEFAULT '',
    p_actor text DEFAULT NULL, p_method text DEFAULT NULL, p_request_hash bytea DEFAULT NULL,
    p_model text DEFAULT NULL, p_caller text DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    hold ledger_holds;
    new_id uuid;
BEGIN
    -- Before the hold's status: a late replay finds the hold captured by its own first call.
    PERFORM ledger_check_request(p_user, p_actor, p_request_id);
    hold := ledger_lock_active_hold(p_user, p_hold);
    IF p_amount > hold.amount_micros THEN
        PERFORM ledger_reject('ledger_capture_exceeds_hold', hold.amount_micros::text);
    END IF;
    -- The reservation goes away whole; the captured part leaves the account.
    UPDATE ledger_accounts
       SET held_micros = held_micros - hold.amount_micros, posted_micros = posted_micros - p_amount,
           updated_at = now()
     WHERE user_id = p_user AND currency_code = hold.currency_code;
    new_id := ledger_insert_transaction(
        p_user, 'hold_capture', p_amount, hold.currency_code, p_user, NULL, NULL, 'revenue',
        NULL, CASE WHEN p_description = '' THEN hold.description ELSE p_description END,
        CASE WHEN p_reference = '' THEN hold.reference ELSE p_reference END,
        '', '', NULL, p_hold, p_request_id, p_actor, p_method, p_request_hash, p_model, p_caller);
    UPDATE ledger_holds
       SET status = 'captured', captured_micros = p_amount, capture_transaction_id = new_id, resolved_at = now()
     WHERE user_id = p_user AND hold_id = p_hold;
    RETURN new_id;
END;
$$;

CREATE TABLE budgets (
    user_id                  uuid        NOT NULL,
    budget_id                uuid        NOT NULL DEFAULT gen_random_uuid(),
    display_name             text        NOT NULL DEFAULT '',
    currency_code            text        NOT NULL,
    limit_micros             bigint      NOT NULL,
    -- 'daily', 'weekly', 'monthly' or 'lifetime'.
    period                   text        NOT NULL,
    -- IANA name, checked against pg_timezone_names when the budget is created.
    time_zone                text        NOT NULL DEFAULT 'UTC',
    -- Scopes; NULL: any model, any caller.
    model_id                 text,
    caller                   text,
    -- 'hard' refuses spend above the limit; 'soft' only raises alerts.
    enforcement              text        NOT NULL DEFAULT 'hard',
    -- Ascending, distinct, each 1 to 100.
    alert_thresholds_percent integer[]   NOT NULL DEFAULT '{}',
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT budgets_pkey PRIMARY KEY (user_id, budget_id),
    CONSTRAINT budgets_user_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT budgets_limit_range CHECK (limit_micros BETWEEN 1 AND 1000000000000000),
    CONSTRAINT budgets_period_valid CHECK (period IN ('daily', 'weekly', 'monthly', 'lifetime')),
    CONSTRAINT budgets_enforcement_valid CHECK (enforcement IN ('hard', 'soft')),
    CONSTRAINT budgets_display_name_length CHECK (char_length(display_name) <= 100),
    CONSTRAINT budgets_caller_length CHECK (char_length(caller) BETWEEN 1 AND 100),
    CONSTRAINT budgets_thresholds_valid CHECK (
        cardinality(alert_thresholds_percent) <= 10
        AND 1 <= ALL (alert_thresholds_percent) AND 100 >= ALL (alert_thresholds_percent))
);
-- The lookup every spend makes (the budgets of a user in a currency), and ListBudgets' order.
CREATE INDEX budgets_user_currency_idx ON budgets (user_id, currency_code);
CREATE INDEX budgets_user_created_idx ON budgets (user_id, created_at, budget_id);

-- A budget's billed spend in one period, less refunds given back. Absent: nothing spent yet.
-- period_start is '-infinity' for a lifetime budget.
CREATE TABLE budget_periods (
    user_id      uuid        NOT NULL,
    budget_id    uuid        NOT NULL,
    period_start timestamptz NOT NULL,
    spent_micros bigint      NOT NULL,
    CONSTRAINT budget_periods_pkey PRIMARY KEY (user_id, budget_id, period_start),
    CONSTRAINT budget_periods_budget_fkey FOREIGN KEY (user_id, budget_id)
        REFERENCES budgets (user_id, budget_id) ON DELETE CASCADE,
    CONSTRAINT budget_periods_spent_nonnegative CHECK (spent_micros >= 0)
);

-- What one ledger transaction (a charge or hold capture) counted toward: which budget, in which
-- period, how much, and how much of it refunds have given back since.
CREATE TABLE budget_spend_entries (
    user_id         uuid        NOT NULL,
    transaction_id  uuid        NOT NULL,
    budget_id       uuid        NOT NULL,
    period_start    timestamptz NOT NULL,
    amount_micros   bigint      NOT NULL,
    refunded_micros bigint      NOT NULL DEFAULT 0,
    CONSTRAINT budget_spend_entries_pkey PRIMARY KEY (user_id, transaction_id, budget_id),
    CONSTRAINT budget_spend_entries_budget_fkey FOREIGN KEY (user_id, budget_id)
        REFERENCES budgets (user_id, budget_id) ON DELETE CASCADE,
    CONSTRAINT budget_spend_entries_amounts_valid CHECK (
        amount_micros > 0 AND refunded_micros BETWEEN 0 AND amount_micros)
);
-- The cascade from budgets.
CREATE INDEX budget_spend_entries_budget_idx ON budget_spend_entries (user_id, budget_id);

-- A threshold reached, once per budget, period and threshold (the unique key), written in the
-- transaction of the spend that reached it. No foreign key: alerts outlive their budget.
-- written_xid (pg_current_xact_id() of the writing transaction, set by the code that inserts the
-- alert: budget_judge in db/functions/budget_enforcement.sql) orders the feed by commit (see
-- budget_alerts_listable in db/functions/budgets.sql).
CREATE TABLE budget_alerts (
    user_id           uuid        NOT NULL,
    alert_id          uuid        NOT NULL DEFAULT gen_random_uuid(),
    budget_id         uuid        NOT NULL,
    period_start      timestamptz NOT NULL,
    -- NULL for a lifetime budget.
    period_end        timestamptz,
    threshold_percent integer     NOT NULL,
    limit_micros      bigint      NOT NULL,
    consumed_micros   bigint      NOT NULL,
    currency_code     text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    written_xid       bigint      NOT NULL,
    CONSTRAINT budget_alerts_pkey PRIMARY KEY (user_id, alert_id),
    CONSTRAINT budget_alerts_once_key UNIQUE (user_id, budget_id, period_start, threshold_percent),
    CONSTRAINT budget_alerts_threshold_range CHECK (threshold_percent BETWEEN 1 AND 100)
);
-- The feed, for all users and for one.
CREATE INDEX budget_alerts_feed_idx ON budget_alerts (written_xid, alert_id);
CREATE INDEX budget_alerts_user_feed_idx ON budget_alerts (user_id, written_xid, alert_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON budgets TO qdata_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON budget_periods TO qdata_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON budget_spend_entries TO qdata_service;
GRANT SELECT, INSERT ON budget_alerts TO qdata_service;
