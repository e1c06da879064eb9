-- Current source: BudgetService's one-call writes (tables: migration 0018_budgets.sql; the
-- enforcement and the period functions they call: budget_enforcement.sql).
--
-- Each write is one database call, like the ledger's *_once functions: it claims the request's
-- idempotency key with idempotency_claim and, only if it took the key, checks what only the
-- database can tell (the model, the user's count of budgets; the server checked the time zone
-- against pg_timezone_names, budgets/time_zones.py), locks the user's
-- account in the budget's currency (the row lock every spend of that user and currency holds, so
-- a budget never changes in the middle of a spend's check; CreateBudget takes it with
-- ledger_lock_account, which also rejects an unknown or deleted user), writes, and appends the
-- audit event with audit_append.
-- When a committed request already holds the key nothing changes: the claim's stored method,
-- fingerprint and response come back for the server to compare and answer. Rejections go through
-- ledger_reject with the pseudo-constraints budget_not_found, budget_too_many
-- and budget_model_not_found (db/constraints.py maps them) and roll
-- everything back, the claim included. The statements that call these (queries/budgets.sql) read
-- the answer in the same statement through budget_answer.

-- A budget as the API answers it, with its consumption in its current period (budget_usage);
-- period_start is NULL for a lifetime budget. VOLATILE (plpgsql) so that it sees what the
-- one-call function in the same statement has just written.
CREATE OR REPLACE FUNCTION budget_answer(p_user uuid, p_budget uuid)
RETURNS TABLE (
    user_id uuid, budget_id uuid, display_name text, currency_code text, limit_micros bigint, period text,
    time_zone text, model_id text, caller text, enforcement text, alert_thresholds_percent integer[],
    created_at timestamptz, updated_at timestamptz, period_start timestamptz, period_end timestamptz,
    spent_micros bigint, held_micros bigint
)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY
    SELECT b.user_id, b.budget_id, b.display_name, b.currency_code, b.limit_micros, b.period, b.time_zone,
           b.model_id, b.caller, b.enforcement, b.alert_thresholds_percent, b.created_at, b.updated_at,
           nullif(u.period_start, '-infinity'::timestamptz), u.period_end, u.spent_micros, u.held_micros
      FROM budgets b
      LEFT JOIN LATERAL budget_usage(b.user_id, b.budget_id) u ON true
     WHERE b.user_id = p_user AND b.budget_id = p_budget;
END;
$$;

CREATE OR REPLACE FUNCTION budget_create_once(
    p_user uuid, p_display_name text, p_currency text, p_limit bigint, p_period text, p_time_zone text,
    p_model text, p_caller text, p_enforcement text, p_thresholds integer[], p_max_budgets integer,
    p_request_id text, p_actor text, p_method text, p_request_hash bytea,
    p_audit_actor text, p_audit_action text, p_audit_request_id text, p_audit_summary jsonb,
    OUT claimed boolean, OUT stored_method text, OUT stored_hash bytea, OUT stored_response bytea,
    OUT budget_id uuid
)
LANGUAGE plpgsql AS $$
DECLARE
    existing integer;
BEGIN
    SELECT c.claimed, c.stored_method, c.stored_hash, c.stored_response
      INTO claimed, stored_method, stored_hash, stored_response
      FROM idempotency_claim(p_user, p_actor, p_request_id, p_method, p_request_hash) c;
    IF NOT claimed THEN
        RETURN;
    END IF;
    IF p_model IS NOT NULL THEN
        PERFORM 1 FROM models m WHERE m.model_id = p_model;
        IF NOT FOUND THEN
            PERFORM ledger_reject('budget_model_not_found', '');
        END IF;
    END IF;
    PERFORM ledger_lock_account(p_user, p_currency);
    -- The user's budgets in every currency: creations in two currencies hold different account
    -- locks, so the count is taken under a lock of the user's own (budget creation only).
    PERFORM pg_advisory_xact_lock(hashtextextended('qdata.budgets:' || p_user::text, 0));
    SELECT count(*) INTO existing FROM budgets b WHERE b.user_id = p_user;
    IF existing >= p_max_budgets THEN
        PERFORM ledger_reject('budget_too_many', p_max_budgets::text);
    END IF;
    INSERT INTO budgets AS b (user_id, display_name, currency_code, limit_micros, period, time_zone, model_id,
                              caller, enforcement, alert_thresholds_percent)
    VALUES (p_user, p_display_name, p_currency, p_limit, p_period, p_time_zone, p_model, p_caller,
            p_enforcement, p_thresholds)
    RETURNING b.budget_id INTO budget_id;
    PERFORM budget_backfill(p_user, budget_id);
    PERFORM audit_append(p_audit_actor, p_user, p_audit_action, 'budget', budget_id::text, p_audit_request_id,
                         p_audit_summary);
END;
$$;

-- Before an update or a deletion: rejects an unknown budget (budget_not_found), then takes the
-- row lock of the budget's account, as ledger_lock_account takes it (the account exists:
-- CreateBudget made it), so the change and a spend's check never interleave. A deleted user's
-- budget still answers; such a user cannot spend.
CREATE OR REPLACE FUNCTION budget_lock_for_change(p_user uuid, p_budget uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    currency text;
BEGIN
    SELECT b.currency_code INTO currency FROM budgets b WHERE b.user_id = p_user AND b.budget_id = p_budget;
    IF NOT FOUND THEN
        PERFORM ledger_reject('budget_not_found', p_budget::text);
    END IF;
    PERFORM 1 FROM ledger_accounts a WHERE a.user_id = p_user AND a.currency_code = currency FOR UPDATE;
END;
$$;

-- Sets the fields whose p_set_* is true; the budget's other fields are immutable.
CREATE OR REPLACE FUNCTION budget_update_once(
    p_user uuid, p_budget uuid, p_set_display_name boolean, p_display_name text, p_set_limit boolean,
    p_limit bigint, p_set_enforcement boolean, p_enforcement text, p_set_thresholds boolean,
    p_thresholds integer[], p_request_id text, p_actor text, p_method text, p_request_hash bytea,
    p_audit_actor text, p_audit_action text, p_audit_request_id text, p_audit_summary jsonb,
    OUT claimed boolean, OUT stored_method text, OUT stored_hash bytea, OUT stored_response bytea,
    OUT budget_id uuid
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.claimed, c.stored_method, c.stored_hash, c.stored_response
      INTO claimed, stored_method, stored_hash, stored_response
      FROM idempotency_claim(p_user, p_actor, p_request_id, p_method, p_request_hash) c;
    IF NOT claimed THEN
        RETURN;
    END IF;
    PERFORM budget_lock_for_change(p_user, p_budget);
    UPDATE budgets b
       SET display_name = CASE WHEN p_set_display_name THEN p_display_name ELSE b.display_name END,
           limit_micros = CASE WHEN p_set_limit THEN p_limit ELSE b.limit_micros END,
           enforcement = CASE WHEN p_set_enforcement THEN p_enforcement ELSE b.enforcement END,
           alert_thresholds_percent = CASE WHEN p_set_thresholds THEN p_thresholds
                                           ELSE b.alert_thresholds_percent END,
           updated_at = now()
     WHERE b.user_id = p_user AND b.budget_id = p_budget
    RETURNING b.budget_id INTO budget_id;
    IF budget_id IS NULL THEN
        -- Deleted while this call waited for the account lock.
        PERFORM ledger_reject('budget_not_found', p_budget::text);
    END IF;
    PERFORM audit_append(p_audit_actor, p_user, p_audit_action, 'budget', p_budget::text, p_audit_request_id,
                         p_audit_summary);
END;
$$;

-- Deletes a budget with its period rollups and spend entries (ON DELETE CASCADE); its alerts stay.
CREATE OR REPLACE FUNCTION budget_delete_once(
    p_user uuid, p_budget uuid, p_request_id text, p_actor text, p_method text, p_request_hash bytea,
    p_audit_actor text, p_audit_action text, p_audit_request_id text, p_audit_summary jsonb,
    OUT claimed boolean, OUT stored_method text, OUT stored_hash bytea, OUT stored_response bytea
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.claimed, c.stored_method, c.stored_hash, c.stored_response
      INTO claimed, stored_method, stored_hash, stored_response
      FROM idempotency_claim(p_user, p_actor, p_request_id, p_method, p_request_hash) c;
    IF NOT claimed THEN
        RETURN;
    END IF;
    PERFORM budget_lock_for_change(p_user, p_budget);
    DELETE FROM budgets b WHERE b.user_id = p_user AND b.budget_id = p_budget;
    IF NOT FOUND THEN
        PERFORM ledger_reject('budget_not_found', p_budget::text);
    END IF;
    PERFORM audit_append(p_audit_actor, p_user, p_audit_action, 'budget', p_budget::text, p_audit_request_id,
                         p_audit_summary);
END;
$$;
