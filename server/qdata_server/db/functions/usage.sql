-- Current source: UsageService's functions and triggers (tables: migration 0004).
--
-- Recording (usage_record) writes the record, bills it through the ledger functions
-- (functions/ledger.sql) and appends one narrow row to usage_rollup_queue, all in the caller's
-- transaction. A single folder (usage_fold, run by the server in the background) moves queued
-- rows into the rollup tables. Reads add the rollups, the queued rows and, for the parts of a
-- window that do not start and end on whole hours, the raw records, all in one snapshot (see
-- 0004_usage.sql, also for why usage records carry no foreign keys).

-- Price versions are immutable.
CREATE OR REPLACE FUNCTION usage_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege', CONSTRAINT = 'usage_append_only';
END;
$$;

CREATE OR REPLACE TRIGGER model_prices_immutable BEFORE UPDATE OR DELETE ON model_prices
    FOR EACH ROW EXECUTE FUNCTION usage_forbid_change();
CREATE OR REPLACE TRIGGER model_prices_no_truncate BEFORE TRUNCATE ON model_prices
    FOR EACH STATEMENT EXECUTE FUNCTION usage_forbid_change();

-- Raises a business rejection that the server maps by its constraint name (db/constraints.py).
CREATE OR REPLACE FUNCTION usage_reject(p_reason text, p_detail text DEFAULT '') RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'usage rejected the request: %', p_reason
        USING ERRCODE = 'check_violation', CONSTRAINT = p_reason, DETAIL = p_detail;
END;
$$;

-- The latency histogram's bucket of a duration in nanoseconds: DDSketch's logarithmic mapping
-- (Masson, Rim, Lee: "DDSketch", VLDB 2019) with gamma = 1.05. Bucket 0 holds [0, 1 us); bucket
-- i >= 1 holds [1 us * 1.05^(i-1), 1 us * 1.05^i), so each bucket is 5% wide and 24 hours fall
-- in bucket 517. The server reports a bucket as 2 * lower * 1.05 / 2.05, within 2.5% of any
-- value in it.
CREATE OR REPLACE FUNCTION usage_latency_bucket(p_ns bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_ns IS NULL THEN NULL
                WHEN p_ns < 1000 THEN 0
                ELSE 1 + floor(ln(p_ns / 1000.0::double precision) / ln(1.05::double precision))::integer END
$$;

-- The partition of usage_records that holds time p_at (schema-qualified name).
CREATE OR REPLACE FUNCTION usage_partition_name(p_at timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT 'usage_partitions.usage_records_' || to_char(p_at AT TIME ZONE 'UTC', 'YYYY_MM')
$$;

-- Creates the monthly (UTC) partition that holds p_at unless it exists; true if it created it.
-- Creating a partition briefly locks usage_records exclusively, so the server does it ahead of
-- time (usage_ensure_partitions); recording creates a missing one itself only as a fallback.
-- Runs as the owner: partitions are the owner's (the serving role cannot create tables).
CREATE OR REPLACE FUNCTION usage_create_partition(p_at timestamptz) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    month_start timestamp := date_trunc('month', p_at AT TIME ZONE 'UTC');
    relname text := 'usage_records_' || to_char(month_start, 'YYYY_MM');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('usage_partition:' || relname, 0));
    IF to_regclass('usage_partitions.' || relname) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE usage_partitions.%I PARTITION OF usage_records FOR VALUES FROM (%L) TO (%L)',
                   relname, month_start AT TIME ZONE 'UTC', (month_start + interval '1 month') AT TIME ZONE 'UTC');
    RETURN true;
END;
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION usage_create_partition(timestamptz) SET search_path = %I, pg_temp', current_schema());
END;
$$;
REVOKE EXECUTE ON FUNCTION usage_create_partition(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_create_partition(timestamptz) TO qdata_service;

-- Makes sure partitions exist from the month of 7 days ago (the oldest call_time accepted) to
-- p_months_ahead months after the current one; returns how many it created.
CREATE OR REPLACE FUNCTION usage_ensure_partitions(p_months_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamp := date_trunc('month', (now() - interval '7 days') AT TIME ZONE 'UTC');
    last_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => p_months_ahead);
    created integer := 0;
BEGIN
    -- Wait a bounded time for in-flight recordings instead of queueing every new one behind us.
    PERFORM set_config('lock_timeout', '5s', true);
    WHILE month_start <= last_month LOOP
        IF usage_create_partition(month_start AT TIME ZONE 'UTC') THEN
            created := created + 1;
        END IF;
        month_start := month_start + interval '1 month';
    END LOOP;
    RETURN created;
END;
$$;

-- Records one model call and bills it (see usage.proto): checks the request's key first (before
-- the user, session or hold checks a late replay might no longer pass), then the user, model,
-- session, price and hold, computes the cost exactly (ceil of the integer sum / 10^6), charges it,
-- captures the hold (and charges any overage) or releases it, writes the record, its queue row and
-- its audit event. The charge or hold capture of a billed record carries the key (p_actor,
-- p_method, p_request_hash; no key without p_method). Any rejection raises and so rolls back
-- everything the caller's transaction did.
CREATE OR REPLACE FUNCTION usage_record(
    p_user uuid, p_model text, p_session uuid, p_input bigint, p_cached bigint, p_output bigint,
    p_reasoning bigint, p_latency_ns bigint, p_ttft_ns bigint, p_outcome text, p_error_code text,
    p_own_key boolean, p_hold uuid, p_called_at timestamptz, p_request_id text, p_actor text,
    p_method text DEFAULT NULL, p_request_hash bytea DEFAULT NULL
) RETURNS usage_records
LANGUAGE plpgsql AS $$
DECLARE
    user_status text;
    model models;
    price model_prices;
    hold ledger_holds;
    hold_status text;
    rec usage_records;
    description text;
    -- The key only travels with its method (NULL: the previous release's call, no key).
    key_actor text := CASE WHEN p_method IS NOT NULL THEN p_actor END;
BEGIN
    PERFORM ledger_check_request(p_user, key_actor, p_request_id);
    rec.usage_record_id := gen_random_uuid();
    rec.called_at := coalesce(p_called_at, now());
    SELECT status INTO user_status FROM users WHERE user_id = p_user;
    IF user_status IS NULL OR user_status = 'deleted' THEN
        PERFORM usage_reject('usage_user_not_found', p_user::text);
    END IF;
    SELECT * INTO model FROM models WHERE model_id = p_model;
    IF NOT FOUND THEN
        PERFORM usage_reject('usage_model_not_found', p_model);
    END IF;
    IF p_session IS NOT NULL THEN
        PERFORM 1 FROM chat_sessions WHERE user_id = p_user AND session_id = p_session;
        IF NOT FOUND THEN
            PERFORM usage_reject('usage_session_not_found', p_session::text);
        END IF;
    END IF;
    SELECT * INTO price FROM model_prices
     WHERE model_id = p_model AND effective_at <= rec.called_at
     ORDER BY effective_at DESC LIMIT 1;
    IF NOT FOUND THEN
        PERFORM usage_reject('usage_model_not_priced', p_model);
    END IF;
    IF p_hold IS NOT NULL THEN
        SELECT * INTO hold FROM ledger_holds WHERE user_id = p_user AND hold_id = p_hold;
        IF NOT FOUND THEN
            PERFORM ledger_reject('ledger_hold_not_found', p_hold::text);
        END IF;
    END IF;

    -- Exact integer arithmetic (numeric, no rounding), one ceiling per record.
    rec.cost_micros := div(p_input::numeric * price.input_micros_per_million
                           + p_cached::numeric * price.cached_input_micros_per_million
                           + p_output::numeric * price.output_micros_per_million
                           + p_reasoning::numeric * price.reasoning_micros_per_million
                           + 999999, 1000000)::bigint;
    rec.billed := p_outcome = 'success' AND NOT p_own_key AND rec.cost_micros > 0;
    description := 'Usage of ' || p_model || ' (usage/' || rec.usage_record_id || ')';

    IF rec.billed AND p_hold IS NULL THEN
        rec.ledger_transaction_id := ledger_charge(
            p_user, rec.cost_micros, price.currency_code, description, 'usage/' || rec.usage_record_id, p_request_id,
            key_actor, p_method, p_request_hash);
    ELSIF rec.billed THEN
        IF hold.currency_code <> price.currency_code THEN
            PERFORM usage_reject('usage_currency_mismatch', hold.currency_code);
        END IF;
        -- The capture releases the rest of the hold; a cost above it captures the whole hold and
        -- charges the overage from the available balance (the capture freed nothing for it). The
        -- capture carries the key; the overage is part of the same record.
        rec.ledger_transaction_id := ledger_capture_hold(
            p_user, p_hold, least(rec.cost_micros, hold.amount_micros), description, p_request_id,
            'usage/' || rec.usage_record_id, key_actor, p_method, p_request_hash);
        IF rec.cost_micros > hold.amount_micros THEN
            rec.overage_transaction_id := ledger_charge(
                p_user, rec.cost_micros - hold.amount_micros, price.currency_code, description,
                'usage/' || rec.usage_record_id, p_request_id);
        END IF;
    ELSIF p_hold IS NOT NULL THEN
        -- Unbilled: release the hold if it still reserves money, leave an inactive one as it is.
        -- The account lock (which also sweeps expired holds) keeps its status from changing.
        PERFORM ledger_lock_account(p_user, hold.currency_code);
        SELECT status INTO hold_status FROM ledger_holds WHERE user_id = p_user AND hold_id = p_hold;
        IF hold_status = 'active' THEN
            PERFORM ledger_release_hold(p_user, p_hold);
        END IF;
    END IF;

    -- A month without partition (the server creates them ahead; this is the fallback).
    IF to_regclass(usage_partition_name(rec.called_at)) IS NULL THEN
        PERFORM usage_create_partition(rec.called_at);
    END IF;
    INSERT INTO usage_records (
        user_id, called_at, usage_record_id, request_id, model_id, price_id, session_id, input_tokens,
        cached_input_tokens, output_tokens, reasoning_tokens, latency_ns, time_to_first_token_ns, outcome,
        error_code, used_own_provider_key, hold_id, cost_micros, billed, ledger_transaction_id,
        overage_transaction_id)
    VALUES (
        p_user, rec.called_at, rec.usage_record_id, p_request_id, p_model, price.price_id, p_session, p_input,
        p_cached, p_output, p_reasoning, p_latency_ns, p_ttft_ns, p_outcome, p_error_code, p_own_key, p_hold,
        rec.cost_micros, rec.billed, rec.ledger_transaction_id, rec.overage_transaction_id)
    RETURNING * INTO rec;
    INSERT INTO usage_rollup_queue (
        model_id, user_id, called_at, is_error, input_tokens, cached_input_tokens, output_tokens,
        reasoning_tokens, cost_micros, billed_micros, latency_bucket)
    VALUES (
        p_model, p_user, rec.called_at, p_outcome = 'error', p_input, p_cached, p_output, p_reasoning,
        rec.cost_micros, CASE WHEN rec.billed THEN rec.cost_micros ELSE 0 END,
        CASE WHEN p_outcome = 'success' THEN usage_latency_bucket(p_latency_ns) END);
    PERFORM audit_append(
        p_actor, p_user, 'usage.RecordUsage', 'usage_record', rec.usage_record_id::text, p_request_id,
        jsonb_build_object('model_id', p_model, 'price_id', price.price_id, 'cost_micros', rec.cost_micros,
                           'currency_code', price.currency_code, 'billed', rec.billed,
                           'outcome', p_outcome, 'hold_id', p_hold));
    RETURN rec;
END;
$$;

-- Records the items of a RecordUsageBatch chunk in order, each atomically on its own (a
-- subtransaction): claims its request_id with idempotency_claim, as qdata_server.idempotency
-- does (a key already taken reports the stored method, fingerprint and response, for the server to
-- compare and answer), else calls usage_record with the item's
-- key. A business rejection or constraint violation is returned as the item's result, and only
-- that item is rolled back; a late replay (ledger_request_remembered) or a lost race on a key's
-- unique index comes back so too, named by its constraint, and the server answers it from the
-- ledger rows. The caller stores the responses of the recorded items before it commits. Keep a
-- chunk under 64 items: more subtransactions than that in one transaction overflow PostgreSQL's
-- per-backend subtransaction cache and slow down every other session's snapshots.
CREATE OR REPLACE FUNCTION usage_record_batch(
    p_actor text, p_method text, p_request_ids text[], p_request_hashes bytea[], p_users uuid[],
    p_models text[], p_sessions uuid[], p_input bigint[], p_cached bigint[], p_output bigint[],
    p_reasoning bigint[], p_latency_ns bigint[], p_ttft_ns bigint[], p_outcomes text[], p_error_codes text[],
    p_own_keys boolean[], p_holds uuid[], p_called_at timestamptz[]
) RETURNS TABLE (
    o_item integer, o_status text, o_record usage_records, o_error_constraint text, o_error_detail text,
    o_error_sqlstate text, o_stored_method text, o_stored_hash bytea, o_stored_response bytea
)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    claimed boolean;
BEGIN
    -- Lock the accounts of every user in the chunk up front, in user_id order (the ledger's lock
    -- order), so that concurrent chunks cannot deadlock on them whatever their item order.
    PERFORM 1 FROM ledger_accounts WHERE user_id = ANY (p_users) ORDER BY user_id, currency_code FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(p_request_ids, 1), 0) LOOP
        o_item := i - 1;
        o_record := NULL;
        o_error_constraint := NULL;
        o_error_detail := NULL;
        o_error_sqlstate := NULL;
        o_stored_method := NULL;
        o_stored_hash := NULL;
        o_stored_response := NULL;
        BEGIN
            SELECT c.claimed, c.stored_method, c.stored_hash, c.stored_response
              INTO claimed, o_stored_method, o_stored_hash, o_stored_response
              FROM idempotency_claim(p_users[i], p_actor, p_request_ids[i], p_method, p_request_hashes[i]) c;
            IF NOT claimed THEN
                o_status := 'claimed';
            ELSE
                o_status := 'recorded';
                o_record := usage_record(
                    p_users[i], p_models[i], p_sessions[i], p_input[i], p_cached[i], p_output[i], p_reasoning[i],
                    p_latency_ns[i], p_ttft_ns[i], p_outcomes[i], p_error_codes[i], p_own_keys[i], p_holds[i],
                    p_called_at[i], p_request_ids[i], p_actor, p_method, p_request_hashes[i]);
            END IF;
        EXCEPTION WHEN integrity_constraint_violation THEN
            o_status := 'rejected';
            o_record := NULL;
            GET STACKED DIAGNOSTICS o_error_constraint = CONSTRAINT_NAME, o_error_detail = PG_EXCEPTION_DETAIL,
                                    o_error_sqlstate = RETURNED_SQLSTATE;
        END;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- Folds up to p_limit queued rows into the rollups in one statement and returns how many it
-- folded (0 if another folder is at work: one at a time, so the rollups have a single writer).
CREATE OR REPLACE FUNCTION usage_fold(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    folded integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('usage_fold', 0)) THEN
        RETURN 0;
    END IF;
    WITH batch AS (
        DELETE FROM usage_rollup_queue
         WHERE ctid = ANY (ARRAY(SELECT ctid FROM usage_rollup_queue LIMIT p_limit))
        RETURNING *, date_trunc('hour', called_at, 'UTC') AS hour, date_trunc('day', called_at, 'UTC') AS day
    ), model_hours AS (
        INSERT INTO usage_model_hours AS t
        SELECT model_id, hour, count(*), count(*) FILTER (WHERE is_error), sum(input_tokens), sum(cached_input_tokens),
               sum(output_tokens), sum(reasoning_tokens), sum(cost_micros), sum(billed_micros)
          FROM batch GROUP BY model_id, hour
        ON CONFLICT (model_id, hour) DO UPDATE SET
            request_count = t.request_count + excluded.request_count,
            error_count = t.error_count + excluded.error_count,
            input_tokens = t.input_tokens + excluded.input_tokens,
            cached_input_tokens = t.cached_input_tokens + excluded.cached_input_tokens,
            output_tokens = t.output_tokens + excluded.output_tokens,
            reasoning_tokens = t.reasoning_tokens + excluded.reasoning_tokens,
            cost_micros = t.cost_micros + excluded.cost_micros,
            billed_micros = t.billed_micros + excluded.billed_micros
    ), model_days AS (
        INSERT INTO usage_model_days AS t
        SELECT model_id, day, count(*), count(*) FILTER (WHERE is_error), sum(input_tokens), sum(cached_input_tokens),
               sum(output_tokens), sum(reasoning_tokens), sum(cost_micros), sum(billed_micros)
          FROM batch GROUP BY model_id, day
        ON CONFLICT (model_id, day) DO UPDATE SET
            request_count = t.request_count + excluded.request_count,
            error_count = t.error_count + excluded.error_count,
            input_tokens = t.input_tokens + excluded.input_tokens,
            cached_input_tokens = t.cached_input_tokens + excluded.cached_input_tokens,
            output_tokens = t.output_tokens + excluded.output_tokens,
            reasoning_tokens = t.reasoning_tokens + excluded.reasoning_tokens,
            cost_micros = t.cost_micros + excluded.cost_micros,
            billed_micros = t.billed_micros + excluded.billed_micros
    ), latency_hours AS (
        INSERT INTO usage_latency_hours AS t
        SELECT model_id, hour, latency_bucket, count(*) FROM batch WHERE latency_bucket IS NOT NULL
         GROUP BY model_id, hour, latency_bucket
        ON CONFLICT (model_id, hour, bucket) DO UPDATE SET call_count = t.call_count + excluded.call_count
    ), latency_days AS (
        INSERT INTO usage_latency_days AS t
        SELECT model_id, day, latency_bucket, count(*) FROM batch WHERE latency_bucket IS NOT NULL
         GROUP BY model_id, day, latency_bucket
        ON CONFLICT (model_id, day, bucket) DO UPDATE SET call_count = t.call_count + excluded.call_count
    ), user_days AS (
        INSERT INTO usage_user_days AS t
        SELECT user_id, day, model_id, count(*), count(*) FILTER (WHERE is_error), sum(input_tokens),
               sum(cached_input_tokens), sum(output_tokens), sum(reasoning_tokens), sum(cost_micros), sum(billed_micros)
          FROM batch GROUP BY user_id, day, model_id
        ON CONFLICT (user_id, day, model_id) DO UPDATE SET
            request_count = t.request_count + excluded.request_count,
            error_count = t.error_count + excluded.error_count,
            input_tokens = t.input_tokens + excluded.input_tokens,
            cached_input_tokens = t.cached_input_tokens + excluded.cached_input_tokens,
            output_tokens = t.output_tokens + excluded.output_tokens,
            reasoning_tokens = t.reasoning_tokens + excluded.reasoning_tokens,
            cost_micros = t.cost_micros + excluded.cost_micros,
            billed_micros = t.billed_micros + excluded.billed_micros
    ), user_months AS (
        INSERT INTO usage_model_user_months AS t
        SELECT model_id, date_trunc('month', called_at, 'UTC'), user_id,
               bit_or(1 << (extract(day FROM called_at AT TIME ZONE 'UTC')::integer - 1))
          FROM batch GROUP BY 1, 2, 3
        ON CONFLICT (model_id, month, user_id) DO UPDATE SET days = t.days | excluded.days
    ), user_hours AS (
        INSERT INTO usage_model_user_days AS t
        SELECT model_id, day, user_id, bit_or(1 << extract(hour FROM called_at AT TIME ZONE 'UTC')::integer)
          FROM batch GROUP BY 1, 2, 3
        ON CONFLICT (model_id, day, user_id) DO UPDATE SET hours = t.hours | excluded.hours
    )
    SELECT count(*) INTO folded FROM batch;
    RETURN folded;
END;
$$;
