-- PLACEHOLDER: replaced by the enforcement branch
--
-- The four functions BudgetService (db/functions/budgets.sql, queries/budgets.sql) calls, with
-- their fixed signatures and the simplest correct bodies: the clock, a period's bounds, a
-- budget's usage in its current period (spend from budget_periods, no holds) and a backfill that
-- does nothing. The enforcement (triggers on the ledger, holds, backfill) comes with the real file.

-- The budgets' clock: qdata.clock (sent by the server in every transaction's settings; '' unless a
-- clock was injected) or the transaction's start.
CREATE OR REPLACE FUNCTION budget_now() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('qdata.clock', true), '')::timestamptz, now())
$$;

-- The calendar period of a budget containing p_at, in p_time_zone: a day from local midnight, an
-- ISO week from Monday 00:00, a month from the first 00:00 (so 23 or 25 hours across a DST
-- change); lifetime: from '-infinity', no end.
CREATE OR REPLACE FUNCTION budget_period_bounds(
    p_period text, p_time_zone text, p_at timestamptz, OUT period_start timestamptz, OUT period_end timestamptz
)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    unit text;
    local_start timestamp;
BEGIN
    IF p_period = 'lifetime' THEN
        period_start := '-infinity';
        period_end := NULL;
        RETURN;
    END IF;
    unit := CASE p_period WHEN 'daily' THEN 'day' WHEN 'weekly' THEN 'week' WHEN 'monthly' THEN 'month' END;
    IF unit IS NULL THEN
        RAISE EXCEPTION 'unknown budget period %', p_period USING ERRCODE = 'invalid_parameter_value';
    END IF;
    local_start := date_trunc(unit, p_at AT TIME ZONE p_time_zone);
    period_start := date_trunc(unit, p_at, p_time_zone);
    period_end := (local_start + ('1 ' || unit)::interval) AT TIME ZONE p_time_zone;
END;
$$;

-- A budget's consumption in its current period: the spend rolled up in budget_periods (0 when
-- none), held 0 here. No row for an unknown budget. VOLATILE: sees the calling statement's writes.
CREATE OR REPLACE FUNCTION budget_usage(p_user uuid, p_budget uuid)
RETURNS TABLE (period_start timestamptz, period_end timestamptz, spent_micros bigint, held_micros bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    b_period text;
    b_time_zone text;
    bounds record;
BEGIN
    SELECT b.period, b.time_zone INTO b_period, b_time_zone
      FROM budgets b WHERE b.user_id = p_user AND b.budget_id = p_budget;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT x.period_start, x.period_end INTO bounds FROM budget_period_bounds(b_period, b_time_zone, budget_now()) x;
    period_start := bounds.period_start;
    period_end := bounds.period_end;
    SELECT coalesce(max(p.spent_micros), 0) INTO spent_micros
      FROM budget_periods p
     WHERE p.user_id = p_user AND p.budget_id = p_budget AND p.period_start = bounds.period_start;
    held_micros := 0;
    RETURN NEXT;
END;
$$;

-- Fills a new budget's current period with the spend already made in it (the caller holds the
-- account lock and has just inserted the budget row). Does nothing here.
CREATE OR REPLACE FUNCTION budget_backfill(p_user uuid, p_budget uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RETURN;
END;
$$;
