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
-- written_xid (set by a trigger, as for audit_events) orders the feed by commit (see
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
