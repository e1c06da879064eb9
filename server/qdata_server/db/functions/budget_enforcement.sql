-- Current source: budget enforcement (tables: migration 0018_budgets.sql; the service's own
-- functions: db/functions/budgets.sql).
--
-- Budgets are enforced where the ledger writes, by two statement-level triggers: AFTER INSERT on
-- ledger_transactions (charges and hold captures add spend, refunds give it back) and AFTER
-- INSERT on ledger_holds (a new hold counts while active). Each statement pays one set-based
-- check whatever its row count (RecordUsageBatch's set-based INSERT of many charges included),
-- and a statement that touches no account with a budget pays one index probe of budgets.
--
-- Every writer of the ledger holds the account's row lock (ledger_lock_account, or the up-front
-- locks of usage_record_many) before it inserts, and every budget change takes the same lock, so
-- the consumption a trigger reads cannot change under it until the spending transaction ends:
-- the check is exact however many calls run at once.
--
-- consumed = spent + held: spent is the period's rollup row (budget_periods, keyed by the
-- period's start, so a new period is a new row and periods reset by time alone); held is the live
-- sum of the user's active, unexpired holds in the currency (only for budgets without a model
-- scope, since holds name no model; a caller scope compares the hold's request_actor). A
-- statement fails (ledger_reject 'budget_exceeded', mapped to BUDGET_EXCEEDED) if it raises the
-- consumption of an applicable HARD budget and leaves it above the limit; the error names the
-- exceeded budget with the least room before the statement. For each applicable budget whose
-- consumption it raised, the statement writes the alerts of the thresholds now reached, once per
-- budget, period and threshold (budget_alerts_once_key).
--
-- The triggers run as the owner (SECURITY DEFINER, search path fixed as for
-- ledger_transactions_position): what counts never depends on the caller's row security. They
-- and budget_judge plan their statements once per session (plan_cache_mode =
-- force_generic_plan): every statement looks rows up by key (user, budget, transaction), so a
-- plan for the parameters at hand is no better, and PostgreSQL's default kept re-planning some of
-- them for every spend (measured with track_functions, one budget, 550 Charges: the trigger's
-- own time 0.25 -> 0.18 ms per Charge, budget_judge 0.079 -> 0.056 ms).

-- The budgets' clock: the server's injected time (qdata.clock, set by begin_transaction; empty
-- unless the server was built with a clock, as tests do), else the transaction's time.
CREATE OR REPLACE FUNCTION budget_now() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('qdata.clock', true), '')::timestamptz, now())
$$;

-- The period of a budget that contains p_at: calendar day, ISO week (from Monday) or month in
-- p_time_zone, so a day across a daylight-saving change lasts 23 or 25 hours. Lifetime: start
-- '-infinity' (the key of its one budget_periods row), end NULL.
CREATE OR REPLACE FUNCTION budget_period_bounds(
    p_period text, p_time_zone text, p_at timestamptz, OUT period_start timestamptz, OUT period_end timestamptz
)
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_period = 'lifetime' THEN '-infinity'::timestamptz
                ELSE date_trunc(u.unit, p_at, p_time_zone) END,
           CASE WHEN p_period = 'lifetime' THEN NULL
                ELSE (date_trunc(u.unit, p_at, p_time_zone) AT TIME ZONE p_time_zone
                      + make_interval(days => CASE u.unit WHEN 'day' THEN 1 WHEN 'week' THEN 7 ELSE 0 END,
                                      months => CASE u.unit WHEN 'month' THEN 1 ELSE 0 END))
                     AT TIME ZONE p_time_zone END
      FROM (SELECT CASE p_period WHEN 'daily' THEN 'day' WHEN 'weekly' THEN 'week' ELSE 'month' END AS unit) u
$$;

-- A budget's consumption in its current period (budget_now), as the caller's row security lets
-- it see the budget (no row: no such budget). period_start and period_end are NULL for a
-- lifetime budget. VOLATILE: it sees the calling statement's own writes. (plpgsql, so that this
-- file, which sorts before the ledger's, never needs the budget tables to exist to be created.)
CREATE OR REPLACE FUNCTION budget_usage(p_user uuid, p_budget uuid)
RETURNS TABLE (period_start timestamptz, period_end timestamptz, spent_micros bigint, held_micros bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY
    SELECT CASE WHEN b.period = 'lifetime' THEN NULL ELSE pb.period_start END, pb.period_end,
           coalesce((SELECT p.spent_micros FROM budget_periods p
                      WHERE p.user_id = b.user_id AND p.budget_id = b.budget_id
                        AND p.period_start = pb.period_start), 0)::bigint,
           coalesce((SELECT sum(h.amount_micros) FROM ledger_holds h
                      WHERE b.model_id IS NULL AND h.user_id = b.user_id AND h.currency_code = b.currency_code
                        AND h.status = 'active' AND h.expire_at > now()
                        AND (b.caller IS NULL OR h.request_actor = b.caller)), 0)::bigint
      FROM budgets b
     CROSS JOIN LATERAL budget_period_bounds(b.period, b.time_zone, budget_now()) pb
     WHERE b.user_id = p_user AND b.budget_id = p_budget;
END;
$$;

-- Starts a new budget with the spend already made in its current period: every charge and hold
-- capture of the user in the budget's currency and scope (model_id; coalesce(caller,
-- request_actor)) created in the period, each an entry less what refunds gave back of it so far,
-- and their sum as the period's row. Rows from before migration 0018 carry no model: they count
-- only toward budgets without a model scope. The caller holds the account lock
-- (ledger_lock_account) and has just inserted the budget row.
CREATE OR REPLACE FUNCTION budget_backfill(p_user uuid, p_budget uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    b record;
    bounds record;
BEGIN
    SELECT * INTO b FROM budgets WHERE user_id = p_user AND budget_id = p_budget;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO bounds FROM budget_period_bounds(b.period, b.time_zone, budget_now());
    WITH counted AS (
        INSERT INTO budget_spend_entries (user_id, transaction_id, budget_id, period_start, amount_micros,
                                          refunded_micros)
        SELECT t.user_id, t.transaction_id, b.budget_id, bounds.period_start, t.amount_micros,
               least(t.amount_micros, coalesce(r.refunded, 0))
          FROM ledger_transactions t
          LEFT JOIN LATERAL (
              SELECT sum(x.amount_micros) AS refunded FROM ledger_transactions x
               WHERE x.user_id = t.user_id AND x.original_transaction_id = t.transaction_id AND x.kind = 'refund'
          ) r ON true
         WHERE t.user_id = p_user AND t.currency_code = b.currency_code AND t.kind IN ('charge', 'hold_capture')
           AND t.amount_micros > 0
           AND t.created_at >= bounds.period_start AND (bounds.period_end IS NULL OR t.created_at < bounds.period_end)
           AND (b.model_id IS NULL OR t.model_id = b.model_id)
           AND (b.caller IS NULL OR coalesce(t.caller, t.request_actor) = b.caller)
        ON CONFLICT ON CONSTRAINT budget_spend_entries_pkey DO NOTHING
        RETURNING amount_micros - refunded_micros AS net
    )
    INSERT INTO budget_periods AS p (user_id, budget_id, period_start, spent_micros)
    SELECT p_user, b.budget_id, bounds.period_start, sum(net) FROM counted HAVING count(*) > 0
    ON CONFLICT ON CONSTRAINT budget_periods_pkey DO UPDATE SET spent_micros = p.spent_micros + excluded.spent_micros;
END;
$$;

-- Judges the budgets a statement raised or lowered (one element per budget, from the triggers
-- below): rejects with 'budget_exceeded' if a HARD budget's consumption rose and ends above its
-- limit (naming the one with the least room before), else writes the alerts of every threshold
-- reached by a budget whose consumption rose. DETAIL of the rejection: a JSON object of strings,
-- the ErrorInfo metadata of BUDGET_EXCEEDED (error_reason.proto).
CREATE OR REPLACE FUNCTION budget_judge(
    p_users uuid[], p_budgets uuid[], p_period_starts timestamptz[], p_period_ends timestamptz[],
    p_spent_before bigint[], p_held_before bigint[], p_increase bigint[], p_at timestamptz
) RETURNS void
LANGUAGE plpgsql
-- Generic plans for its statements (see the top of this file).
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    worst record;
BEGIN
    SELECT b.budget_id, b.limit_micros, v.spent, v.held, v.increase, v.period_end INTO worst
      FROM unnest(p_users, p_budgets, p_period_starts, p_period_ends, p_spent_before, p_held_before, p_increase)
           AS v(user_id, budget_id, period_start, period_end, spent, held, increase)
      JOIN budgets b ON b.user_id = v.user_id AND b.budget_id = v.budget_id
     WHERE b.enforcement = 'hard' AND v.increase > 0 AND v.spent + v.held + v.increase > b.limit_micros
     ORDER BY b.limit_micros - v.spent - v.held, b.budget_id
     LIMIT 1;
    IF FOUND THEN
        PERFORM ledger_reject('budget_exceeded', jsonb_build_object(
            'budget_id', worst.budget_id::text,
            'limit_micros', worst.limit_micros::text,
            'spent_micros', worst.spent::text,
            'held_micros', worst.held::text,
            'requested_micros', worst.increase::text,
            'period_end', coalesce(to_char(worst.period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '')
        )::text);
    END IF;
    INSERT INTO budget_alerts (user_id, budget_id, period_start, period_end, threshold_percent, limit_micros,
                               consumed_micros, currency_code, created_at, written_xid)
    SELECT v.user_id, v.budget_id, v.period_start, v.period_end, t.threshold, b.limit_micros,
           v.spent + v.held + v.increase, b.currency_code, p_at, pg_current_xact_id()::text::bigint
      FROM unnest(p_users, p_budgets, p_period_starts, p_period_ends, p_spent_before, p_held_before, p_increase)
           AS v(user_id, budget_id, period_start, period_end, spent, held, increase)
      JOIN budgets b ON b.user_id = v.user_id AND b.budget_id = v.budget_id
     CROSS JOIN LATERAL unnest(b.alert_thresholds_percent) AS t(threshold)
     WHERE v.increase > 0 AND (v.spent + v.held + v.increase)::numeric * 100 >= t.threshold::numeric * b.limit_micros
     ORDER BY v.user_id, v.budget_id, t.threshold
    ON CONFLICT ON CONSTRAINT budget_alerts_once_key DO NOTHING;
END;
$$;

-- AFTER INSERT ON ledger_transactions, once per statement (new_rows: the statement's rows).
-- Refunds give back first: to each entry of the refunded transaction whose period is still its
-- budget's current one, min(refund, what the entry has not had back yet). Then charges and hold
-- captures: an entry per (transaction, applicable budget) in the budget's current period, the
-- period's row raised by the amounts, and the budgets judged. A capture frees its whole hold
-- where the hold counted (budgets without a model scope, caller matching the hold's), so its
-- increase is the captured amount less the hold's; at this point the captured hold may still read
-- 'active' (ledger_capture_hold marks it after the insert), so the live held sum leaves out the
-- holds this statement captures.
CREATE OR REPLACE FUNCTION budget_transactions_counted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
-- Generic plans for its statements (see the top of this file).
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    at timestamptz;
    captured uuid[];
    f record;
BEGIN
    -- The common case: no budget on any account the statement wrote (one index probe per account).
    PERFORM 1 FROM (SELECT DISTINCT n.user_id, n.currency_code FROM new_rows n
                     WHERE n.kind IN ('charge', 'hold_capture', 'refund')) a
     WHERE EXISTS (SELECT 1 FROM budgets b WHERE b.user_id = a.user_id AND b.currency_code = a.currency_code)
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    at := budget_now();

    WITH back AS (
        SELECT e.user_id, e.transaction_id, e.budget_id, e.period_start,
               least(r.amount_micros, e.amount_micros - e.refunded_micros) AS given
          FROM new_rows r
          JOIN budget_spend_entries e ON e.user_id = r.user_id AND e.transaction_id = r.original_transaction_id
          JOIN budgets b ON b.user_id = e.user_id AND b.budget_id = e.budget_id
         CROSS JOIN LATERAL budget_period_bounds(b.period, b.time_zone, at) pb
         WHERE r.kind = 'refund' AND e.period_start = pb.period_start AND e.amount_micros > e.refunded_micros
    ), entries AS (
        UPDATE budget_spend_entries e SET refunded_micros = e.refunded_micros + k.given
          FROM back k
         WHERE e.user_id = k.user_id AND e.transaction_id = k.transaction_id AND e.budget_id = k.budget_id
    )
    UPDATE budget_periods p SET spent_micros = p.spent_micros - k.given
      FROM (SELECT user_id, budget_id, period_start, sum(given) AS given FROM back
             GROUP BY user_id, budget_id, period_start) k
     WHERE p.user_id = k.user_id AND p.budget_id = k.budget_id AND p.period_start = k.period_start;

    captured := ARRAY(SELECT n.hold_id FROM new_rows n WHERE n.kind = 'hold_capture' AND n.hold_id IS NOT NULL);
    WITH applied AS (
        SELECT n.user_id, n.transaction_id, n.amount_micros, b.budget_id, b.currency_code, b.model_id,
               b.caller, pb.period_start, pb.period_end, coalesce(h.amount_micros, 0) AS freed
          FROM new_rows n
          JOIN budgets b ON b.user_id = n.user_id AND b.currency_code = n.currency_code
                        AND (b.model_id IS NULL OR b.model_id = n.model_id)
                        AND (b.caller IS NULL OR b.caller = coalesce(n.caller, n.request_actor))
         CROSS JOIN LATERAL budget_period_bounds(b.period, b.time_zone, at) pb
          LEFT JOIN LATERAL (
              SELECT x.amount_micros FROM ledger_holds x
               WHERE n.hold_id IS NOT NULL AND b.model_id IS NULL AND x.user_id = n.user_id
                 AND x.hold_id = n.hold_id AND (b.caller IS NULL OR x.request_actor = b.caller)
          ) h ON true
         WHERE n.kind IN ('charge', 'hold_capture') AND n.amount_micros > 0
    ), entries AS (
        INSERT INTO budget_spend_entries (user_id, transaction_id, budget_id, period_start, amount_micros)
        SELECT user_id, transaction_id, budget_id, period_start, amount_micros FROM applied
    ), per_budget AS (
        SELECT a.user_id, a.budget_id, a.period_start, a.period_end, sum(a.amount_micros)::bigint AS added,
               sum(a.freed)::bigint AS freed,
               coalesce((SELECT p.spent_micros FROM budget_periods p
                          WHERE p.user_id = a.user_id AND p.budget_id = a.budget_id
                            AND p.period_start = a.period_start), 0) AS spent,
               coalesce((SELECT sum(h.amount_micros) FROM ledger_holds h
                          WHERE a.model_id IS NULL AND h.user_id = a.user_id AND h.currency_code = a.currency_code
                            AND h.status = 'active' AND h.expire_at > now()
                            AND (a.caller IS NULL OR h.request_actor = a.caller)
                            AND h.hold_id <> ALL (captured)), 0)::bigint AS held_others
          FROM applied a
         GROUP BY a.user_id, a.budget_id, a.period_start, a.period_end, a.model_id, a.currency_code, a.caller
    ), periods AS (
        INSERT INTO budget_periods AS p (user_id, budget_id, period_start, spent_micros)
        SELECT user_id, budget_id, period_start, added FROM per_budget
        ON CONFLICT ON CONSTRAINT budget_periods_pkey DO UPDATE SET spent_micros = p.spent_micros + excluded.spent_micros
    )
    SELECT array_agg(user_id) AS users, array_agg(budget_id) AS budgets, array_agg(period_start) AS starts,
           array_agg(period_end) AS ends, array_agg(spent) AS spent, array_agg(held_others + freed) AS held,
           array_agg(added - freed) AS increase
      INTO f FROM per_budget;
    IF f.users IS NOT NULL THEN
        PERFORM budget_judge(f.users, f.budgets, f.starts, f.ends, f.spent, f.held, f.increase, at);
    END IF;
    RETURN NULL;
END;
$$;

-- AFTER INSERT ON ledger_holds, once per statement: a new hold raises the consumption of the
-- budgets without a model scope in its currency (and caller, compared with its request_actor) by
-- its amount; the budgets are judged.
CREATE OR REPLACE FUNCTION budget_holds_counted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
-- Generic plans for its statements (see the top of this file).
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    at timestamptz;
    f record;
BEGIN
    PERFORM 1 FROM (SELECT DISTINCT n.user_id, n.currency_code FROM new_rows n WHERE n.status = 'active') a
     WHERE EXISTS (SELECT 1 FROM budgets b WHERE b.user_id = a.user_id AND b.currency_code = a.currency_code)
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    at := budget_now();
    WITH applied AS (
        SELECT n.user_id, n.hold_id, n.amount_micros, b.budget_id, b.currency_code, b.caller,
               pb.period_start, pb.period_end
          FROM new_rows n
          JOIN budgets b ON b.user_id = n.user_id AND b.currency_code = n.currency_code AND b.model_id IS NULL
                        AND (b.caller IS NULL OR b.caller = n.request_actor)
         CROSS JOIN LATERAL budget_period_bounds(b.period, b.time_zone, at) pb
         WHERE n.status = 'active'
    ), per_budget AS (
        SELECT a.user_id, a.budget_id, a.period_start, a.period_end, sum(a.amount_micros)::bigint AS added,
               coalesce((SELECT p.spent_micros FROM budget_periods p
                          WHERE p.user_id = a.user_id AND p.budget_id = a.budget_id
                            AND p.period_start = a.period_start), 0) AS spent,
               coalesce((SELECT sum(h.amount_micros) FROM ledger_holds h
                          WHERE h.user_id = a.user_id AND h.currency_code = a.currency_code
                            AND h.status = 'active' AND h.expire_at > now()
                            AND (a.caller IS NULL OR h.request_actor = a.caller)), 0)::bigint AS held_now
          FROM applied a
         GROUP BY a.user_id, a.budget_id, a.period_start, a.period_end, a.currency_code, a.caller
    )
    SELECT array_agg(user_id) AS users, array_agg(budget_id) AS budgets, array_agg(period_start) AS starts,
           array_agg(period_end) AS ends, array_agg(spent) AS spent, array_agg(held_now - added) AS held,
           array_agg(added) AS increase
      INTO f FROM per_budget;
    IF f.users IS NOT NULL THEN
        PERFORM budget_judge(f.users, f.budgets, f.starts, f.ends, f.spent, f.held, f.increase, at);
    END IF;
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION budget_transactions_counted() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION budget_holds_counted() SET search_path = %I, pg_temp', current_schema());
END;
$$;
REVOKE EXECUTE ON FUNCTION budget_transactions_counted() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION budget_holds_counted() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION budget_judge(uuid[], uuid[], timestamptz[], timestamptz[], bigint[], bigint[], bigint[],
                                        timestamptz) FROM PUBLIC;

CREATE OR REPLACE TRIGGER budget_transactions_counted AFTER INSERT ON ledger_transactions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION budget_transactions_counted();
CREATE OR REPLACE TRIGGER budget_holds_counted AFTER INSERT ON ledger_holds
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION budget_holds_counted();
