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
            key_actor, p_method, p_request_hash, p_model, p_actor);
    ELSIF rec.billed THEN
        IF hold.currency_code <> price.currency_code THEN
            PERFORM usage_reject('usage_currency_mismatch', hold.currency_code);
        END IF;
        -- The capture releases the rest of the hold; a cost above it captures the whole hold and
        -- charges the overage from the available balance (the capture freed nothing for it). The
        -- capture carries the key; the overage is part of the same record.
        rec.ledger_transaction_id := ledger_capture_hold(
            p_user, p_hold, least(rec.cost_micros, hold.amount_micros), description, p_request_id,
            'usage/' || rec.usage_record_id, key_actor, p_method, p_request_hash, p_model, p_actor);
        IF rec.cost_micros > hold.amount_micros THEN
            rec.overage_transaction_id := ledger_charge(
                p_user, rec.cost_micros - hold.amount_micros, price.currency_code, description,
                'usage/' || rec.usage_record_id, p_request_id, p_model => p_model, p_caller => p_actor);
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

-- Records all the items of a RecordUsageBatch with a fixed number of statements, whatever their
-- count (RecordUsageBatch's path since issue 13; usage_record_batch above stays for servers of the
-- previous release during a rolling update, and is this function's fallback). The result is the
-- one usage_record_batch gives, item by item in order: each item is handled as usage_record would
-- handle it alone, in request order, and a rejected item leaves nothing behind (no record, no
-- movement, no audit event, no idempotency record), so its request_id stays free for a retry.
--
--   1. Claims every key in one INSERT (in (user_id, request_id) order, so concurrent batches
--      queue on a shared key instead of deadlocking); keys already taken report their stored
--      method, fingerprint and response for the server to compare and answer, as with
--      usage_record_batch. A claimed key the ledger already carries is a late replay
--      (ledger_request_remembered), answered by the server from the ledger rows.
--   2. Locks the accounts of every user left, in (user_id, currency_code) order (the ledger's lock
--      order), then the users' rows FOR SHARE (so a DeleteUser waits for the commit, as
--      ledger_lock_account makes it), and only then reads users, models, sessions, prices and
--      holds: what it decides on cannot change before the commit.
--   3. Decides each item in one pass over them, account by account and within an account in
--      request order: the same checks in the same order as usage_record (user, model, session,
--      price, hold, currency, hold status, funds), with the running balance and hold states of
--      the earlier items of the batch. No statement runs per item.
--   4. Writes what the accepted items do in one statement per table: their ledger transactions
--      (one charge or hold capture per billed record, carrying the record's key, plus an overage
--      charge where the cost exceeds the hold), their postings, each touched account's new
--      balance (with its expired holds swept, as ledger_lock_account would), the captured and
--      released holds, the records, their rollup queue rows and their audit events; and deletes
--      the claims of the rejected items.
--
-- A constraint violation on the way (a bug: the claims serialize every writer of a key, and the
-- decisions keep the tables' constraints) undoes all of it, and the batch goes through
-- usage_record_batch instead, item by item, with the per-item answers that gives; PostgreSQL's
-- log gets a WARNING naming the constraint. So does a HARD budget the batch's spend would exceed
-- (the budgets' trigger rejects the whole statement with 'budget_exceeded'), without the WARNING:
-- item by item, the items that fit are recorded in order and the others fail with BUDGET_EXCEEDED.
CREATE OR REPLACE FUNCTION usage_record_many(
    p_actor text, p_method text, p_request_ids text[], p_request_hashes bytea[], p_users uuid[],
    p_models text[], p_sessions uuid[], p_input bigint[], p_cached bigint[], p_output bigint[],
    p_reasoning bigint[], p_latency_ns bigint[], p_ttft_ns bigint[], p_outcomes text[], p_error_codes text[],
    p_own_keys boolean[], p_holds uuid[], p_called_at timestamptz[]
) RETURNS TABLE (
    o_item integer, o_status text, o_record usage_records, o_error_constraint text, o_error_detail text,
    o_error_sqlstate text, o_stored_method text, o_stored_hash bytea, o_stored_response bytea
)
LANGUAGE plpgsql
-- Every read of a table here looks up at most 1,000 items' rows, in tables that grow by that
-- much per call and whose statistics lag behind (a table that ANALYZE last saw small): by key
-- (each in a LATERAL subquery, so no join can scan a whole table instead), never by a scan of a
-- whole table that checks its row security on every row.
SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
DECLARE
    n integer := coalesce(array_length(p_request_ids, 1), 0);
    -- Per item (1-based, as the parameters): 'recorded', 'claimed' or 'rejected', and the rest.
    statuses text[] := array_fill(NULL::text, ARRAY[n]);
    reasons text[] := array_fill(NULL::text, ARRAY[n]);
    details text[] := array_fill(NULL::text, ARRAY[n]);
    stored_methods text[] := array_fill(NULL::text, ARRAY[n]);
    stored_hashes bytea[] := array_fill(NULL::bytea, ARRAY[n]);
    stored_responses bytea[] := array_fill(NULL::bytea, ARRAY[n]);
    pending integer[];
    took boolean[] := array_fill(false, ARRAY[n]);
    working integer[];
    work_users uuid[];
    -- The accepted items, in request order once sorted: what their rows get.
    a_item integer[] := '{}';
    a_record uuid[] := '{}';
    a_called timestamptz[] := '{}';
    a_price uuid[] := '{}';
    a_currency text[] := '{}';
    a_cost bigint[] := '{}';
    a_billed boolean[] := '{}';
    a_tx uuid[] := '{}';
    a_overage uuid[] := '{}';
    -- Ledger transactions to write (charges, captures, overages).
    t_user uuid[] := '{}';
    t_id uuid[] := '{}';
    t_kind text[] := '{}';
    t_amount bigint[] := '{}';
    t_currency text[] := '{}';
    t_item integer[] := '{}';
    t_record uuid[] := '{}';
    t_hold uuid[] := '{}';
    t_keyed boolean[] := '{}';
    -- Touched accounts and their new balances; resolved holds.
    c_user uuid[] := '{}';
    c_currency text[] := '{}';
    c_posted bigint[] := '{}';
    c_held bigint[] := '{}';
    h_user uuid[] := '{}';
    h_id uuid[] := '{}';
    h_status text[] := '{}';
    h_captured bigint[] := '{}';
    h_tx uuid[] := '{}';
    -- The account being walked, and the holds its earlier items resolved.
    cur_user uuid;
    cur_currency text;
    cur_posted bigint;
    cur_held bigint;
    cur_touched boolean := false;
    seen_holds uuid[];
    seen_status text[];
    r record;
    seen integer;
    hold_state text;
    capture bigint;
    overage bigint;
    record_id uuid;
    records usage_records[];
    fallback boolean := false;
    fallback_reason text;
    month timestamptz;
BEGIN
    BEGIN
        -- 1. The claims (a key whose record is purged between the INSERT and the SELECT is claimed again).
        pending := ARRAY(SELECT generate_series(1, n));
        WHILE cardinality(pending) > 0 LOOP
            FOR r IN
                WITH claimed AS (
                    INSERT INTO idempotency_keys (user_id, actor, request_id, method, request_hash, response)
                    SELECT p_users[i], p_actor, p_request_ids[i], p_method, p_request_hashes[i], ''::bytea
                      FROM unnest(pending) AS i
                     ORDER BY p_users[i], p_request_ids[i]
                    ON CONFLICT (user_id, actor, request_id) DO NOTHING
                    RETURNING user_id, request_id
                ), items AS (
                    SELECT i, p_users[i] AS user_id, p_request_ids[i] AS request_id FROM unnest(pending) AS i
                )
                SELECT t.i FROM items t JOIN claimed c ON c.user_id = t.user_id AND c.request_id = t.request_id
            LOOP
                took[r.i] := true;
            END LOOP;
            FOR r IN
                SELECT i, k.method, k.request_hash, k.response
                  FROM unnest(pending) AS i
                 CROSS JOIN LATERAL (
                     SELECT x.method, x.request_hash, x.response FROM idempotency_keys x
                      WHERE x.user_id = p_users[i] AND x.actor = p_actor AND x.request_id = p_request_ids[i] LIMIT 1
                 ) k
                 WHERE NOT took[i]
            LOOP
                statuses[r.i] := 'claimed';
                stored_methods[r.i] := r.method;
                stored_hashes[r.i] := r.request_hash;
                stored_responses[r.i] := r.response;
            END LOOP;
            pending := ARRAY(SELECT i FROM unnest(pending) AS i WHERE NOT took[i] AND statuses[i] IS NULL);
        END LOOP;
        working := ARRAY(SELECT i FROM generate_series(1, n) AS i WHERE took[i]);
        -- Late replays: the ledger carries the key (ledger_check_request, for all of them at once).
        FOR r IN
            SELECT i FROM unnest(working) AS i
             CROSS JOIN LATERAL (SELECT 1 FROM ledger_request_holder(p_users[i], p_actor, p_request_ids[i]) LIMIT 1) h
        LOOP
            statuses[r.i] := 'rejected';
            reasons[r.i] := 'ledger_request_remembered';
            details[r.i] := '';
        END LOOP;
        working := ARRAY(SELECT i FROM unnest(working) AS i WHERE statuses[i] IS NULL ORDER BY i);

        -- 2. The locks, before anything they protect is read.
        work_users := ARRAY(SELECT DISTINCT p_users[i] FROM unnest(working) AS i);
        PERFORM 1 FROM ledger_accounts WHERE user_id = ANY (work_users) ORDER BY user_id, currency_code FOR UPDATE;
        PERFORM 1 FROM users WHERE user_id = ANY (work_users) AND status <> 'deleted' ORDER BY user_id FOR SHARE;

        -- 3. One pass, account by account (the account an item would lock: its hold's, else its price's).
        FOR r IN
            WITH items AS (
                SELECT i, p_users[i] AS user_id, p_models[i] AS model_id, p_sessions[i] AS session_id,
                       p_holds[i] AS hold_id, coalesce(p_called_at[i], now()) AS called_at
                  FROM unnest(working) AS i
            ), checked AS (
                SELECT t.i, t.user_id, t.model_id, t.session_id, t.hold_id, t.called_at,
                       CASE WHEN u.status IS NULL OR u.status = 'deleted' THEN 'usage_user_not_found'
                            WHEN m.model_id IS NULL THEN 'usage_model_not_found'
                            WHEN t.session_id IS NOT NULL AND s.session_id IS NULL THEN 'usage_session_not_found'
                            WHEN pr.price_id IS NULL THEN 'usage_model_not_priced'
                            WHEN t.hold_id IS NOT NULL AND h.hold_id IS NULL THEN 'ledger_hold_not_found'
                       END AS reason,
                       pr.price_id, pr.currency_code AS price_currency,
                       div(p_input[t.i]::numeric * pr.input_micros_per_million
                           + p_cached[t.i]::numeric * pr.cached_input_micros_per_million
                           + p_output[t.i]::numeric * pr.output_micros_per_million
                           + p_reasoning[t.i]::numeric * pr.reasoning_micros_per_million
                           + 999999, 1000000)::bigint AS cost,
                       h.currency_code AS hold_currency, h.amount_micros AS hold_amount,
                       CASE WHEN h.status = 'active' AND h.expire_at <= now() THEN 'expired' ELSE h.status END
                           AS hold_status
                  FROM items t
                  LEFT JOIN LATERAL (SELECT x.status FROM users x WHERE x.user_id = t.user_id LIMIT 1) u ON true
                  LEFT JOIN LATERAL (SELECT x.model_id FROM models x WHERE x.model_id = t.model_id LIMIT 1) m ON true
                  LEFT JOIN LATERAL (
                      SELECT x.session_id FROM chat_sessions x
                       WHERE t.session_id IS NOT NULL AND x.user_id = t.user_id AND x.session_id = t.session_id LIMIT 1
                  ) s ON true
                  LEFT JOIN LATERAL (
                      SELECT x.hold_id, x.currency_code, x.amount_micros, x.status, x.expire_at FROM ledger_holds x
                       WHERE t.hold_id IS NOT NULL AND x.user_id = t.user_id AND x.hold_id = t.hold_id LIMIT 1
                  ) h ON true
                  LEFT JOIN LATERAL (
                      SELECT p.price_id, p.currency_code, p.input_micros_per_million,
                             p.cached_input_micros_per_million, p.output_micros_per_million,
                             p.reasoning_micros_per_million
                        FROM model_prices p
                       WHERE p.model_id = t.model_id AND p.effective_at <= t.called_at
                       ORDER BY p.effective_at DESC LIMIT 1
                  ) pr ON true
            )
            -- The account's balance as of the first of its items (the loop reads it only then).
            SELECT c.*, coalesce(c.hold_currency, c.price_currency) AS account_currency,
                   c.reason IS NULL AND p_outcomes[c.i] = 'success' AND NOT p_own_keys[c.i] AND c.cost > 0 AS billed,
                   coalesce(a.posted_micros, 0) AS posted, coalesce(a.held, 0) AS held
              FROM checked c
              LEFT JOIN LATERAL (
                  SELECT x.posted_micros,
                         x.held_micros - coalesce((SELECT sum(e.amount_micros) FROM ledger_holds e
                                                    WHERE e.user_id = x.user_id AND e.currency_code = x.currency_code
                                                      AND e.status = 'active' AND e.expire_at <= now()), 0) AS held
                    FROM ledger_accounts x
                   WHERE c.reason IS NULL AND x.user_id = c.user_id
                     AND x.currency_code = coalesce(c.hold_currency, c.price_currency)
                   LIMIT 1
              ) a ON true
             ORDER BY c.user_id, coalesce(c.hold_currency, c.price_currency), c.i
        LOOP
            IF r.reason IS NOT NULL THEN
                statuses[r.i] := 'rejected';
                reasons[r.i] := r.reason;
                details[r.i] := CASE r.reason WHEN 'usage_model_not_found' THEN r.model_id
                                              WHEN 'usage_model_not_priced' THEN r.model_id
                                              WHEN 'usage_session_not_found' THEN r.session_id::text
                                              WHEN 'ledger_hold_not_found' THEN r.hold_id::text
                                              ELSE r.user_id::text END;
                CONTINUE;
            END IF;
            IF cur_user IS DISTINCT FROM r.user_id OR cur_currency IS DISTINCT FROM r.account_currency THEN
                IF cur_touched THEN
                    c_user := c_user || cur_user;
                    c_currency := c_currency || cur_currency;
                    c_posted := c_posted || cur_posted;
                    c_held := c_held || cur_held;
                END IF;
                cur_user := r.user_id;
                cur_currency := r.account_currency;
                cur_posted := r.posted;
                cur_held := r.held;
                cur_touched := false;
                seen_holds := '{}';
                seen_status := '{}';
            END IF;
            record_id := gen_random_uuid();
            hold_state := NULL;
            IF r.hold_id IS NOT NULL THEN
                seen := array_position(seen_holds, r.hold_id);
                hold_state := CASE WHEN seen IS NULL THEN r.hold_status ELSE seen_status[seen] END;
            END IF;
            IF r.billed AND r.hold_id IS NULL THEN
                IF cur_posted - cur_held < r.cost THEN
                    statuses[r.i] := 'rejected';
                    reasons[r.i] := 'ledger_insufficient_funds';
                    details[r.i] := (cur_posted - cur_held)::text;
                    CONTINUE;
                END IF;
                cur_posted := cur_posted - r.cost;
                t_user := t_user || r.user_id; t_id := t_id || gen_random_uuid(); t_kind := t_kind || 'charge'::text;
                t_amount := t_amount || r.cost; t_currency := t_currency || r.price_currency; t_item := t_item || r.i;
                t_record := t_record || record_id; t_hold := t_hold || NULL::uuid; t_keyed := t_keyed || true;
                a_tx := a_tx || t_id[cardinality(t_id)];
                a_overage := a_overage || NULL::uuid;
            ELSIF r.billed THEN
                IF r.hold_currency <> r.price_currency THEN
                    statuses[r.i] := 'rejected';
                    reasons[r.i] := 'usage_currency_mismatch';
                    details[r.i] := r.hold_currency;
                    CONTINUE;
                ELSIF hold_state <> 'active' THEN
                    statuses[r.i] := 'rejected';
                    reasons[r.i] := CASE hold_state WHEN 'captured' THEN 'ledger_hold_already_captured'
                                                    WHEN 'released' THEN 'ledger_hold_already_released'
                                                    ELSE 'ledger_hold_expired' END;
                    details[r.i] := r.hold_id::text;
                    CONTINUE;
                END IF;
                -- The capture takes up to the hold and frees it whole; the overage is charged from
                -- what is available after it.
                capture := least(r.cost, r.hold_amount);
                overage := r.cost - capture;
                IF overage > 0 AND (cur_posted - capture) - (cur_held - r.hold_amount) < overage THEN
                    statuses[r.i] := 'rejected';
                    reasons[r.i] := 'ledger_insufficient_funds';
                    details[r.i] := ((cur_posted - capture) - (cur_held - r.hold_amount))::text;
                    CONTINUE;
                END IF;
                cur_posted := cur_posted - r.cost;
                cur_held := cur_held - r.hold_amount;
                seen_holds := seen_holds || r.hold_id;
                seen_status := seen_status || 'captured'::text;
                t_user := t_user || r.user_id; t_id := t_id || gen_random_uuid(); t_kind := t_kind || 'hold_capture'::text;
                t_amount := t_amount || capture; t_currency := t_currency || r.price_currency; t_item := t_item || r.i;
                t_record := t_record || record_id; t_hold := t_hold || r.hold_id; t_keyed := t_keyed || true;
                a_tx := a_tx || t_id[cardinality(t_id)];
                h_user := h_user || r.user_id; h_id := h_id || r.hold_id; h_status := h_status || 'captured'::text;
                h_captured := h_captured || capture; h_tx := h_tx || t_id[cardinality(t_id)];
                IF overage > 0 THEN
                    t_user := t_user || r.user_id; t_id := t_id || gen_random_uuid(); t_kind := t_kind || 'charge'::text;
                    t_amount := t_amount || overage; t_currency := t_currency || r.price_currency;
                    t_item := t_item || r.i; t_record := t_record || record_id; t_hold := t_hold || NULL::uuid;
                    t_keyed := t_keyed || false;
                    a_overage := a_overage || t_id[cardinality(t_id)];
                ELSE
                    a_overage := a_overage || NULL::uuid;
                END IF;
            ELSE
                -- Unbilled: releases its hold if it still reserves money.
                IF hold_state = 'active' THEN
                    cur_held := cur_held - r.hold_amount;
                    seen_holds := seen_holds || r.hold_id;
                    seen_status := seen_status || 'released'::text;
                    h_user := h_user || r.user_id; h_id := h_id || r.hold_id; h_status := h_status || 'released'::text;
                    h_captured := h_captured || 0::bigint; h_tx := h_tx || NULL::uuid;
                END IF;
                a_tx := a_tx || NULL::uuid;
                a_overage := a_overage || NULL::uuid;
            END IF;
            IF r.billed OR hold_state = 'active' THEN
                cur_touched := true;
            END IF;
            statuses[r.i] := 'recorded';
            a_item := a_item || r.i;
            a_record := a_record || record_id;
            a_called := a_called || r.called_at;
            a_price := a_price || r.price_id;
            a_currency := a_currency || r.price_currency;
            a_cost := a_cost || r.cost;
            a_billed := a_billed || r.billed;
        END LOOP;
        IF cur_touched THEN
            c_user := c_user || cur_user;
            c_currency := c_currency || cur_currency;
            c_posted := c_posted || cur_posted;
            c_held := c_held || cur_held;
        END IF;

        -- 4. The writes, one statement per table. The holds first, so that the budgets' trigger on
        -- the transactions (functions/budget_enforcement.sql) sees the batch's holds resolved.
        -- The touched accounts' expired holds are swept (their amounts are out of c_held already).
        -- (Each target restricted by its keys too, so that its scan is an index scan, not a join's.)
        UPDATE ledger_holds h SET status = 'expired', resolved_at = h.expire_at
          FROM unnest(c_user, c_currency) AS c(user_id, currency_code)
         WHERE h.user_id = ANY (c_user) AND h.user_id = c.user_id AND h.currency_code = c.currency_code
           AND h.status = 'active' AND h.expire_at <= now();
        UPDATE ledger_accounts a SET posted_micros = c.posted, held_micros = c.held, updated_at = now()
          FROM unnest(c_user, c_currency, c_posted, c_held) AS c(user_id, currency_code, posted, held)
         WHERE a.user_id = ANY (c_user) AND a.user_id = c.user_id AND a.currency_code = c.currency_code;
        IF cardinality(h_id) > 0 THEN
            UPDATE ledger_holds h
               SET status = v.status, captured_micros = v.captured, capture_transaction_id = v.tx, resolved_at = now()
              FROM unnest(h_user, h_id, h_status, h_captured, h_tx) AS v(user_id, hold_id, status, captured, tx)
             WHERE h.user_id = ANY (h_user) AND h.hold_id = ANY (h_id) AND h.user_id = v.user_id
               AND h.hold_id = v.hold_id;
        END IF;

        -- Transactions in user_id order: their position counters are taken in the ledger's lock order.
        INSERT INTO ledger_transactions (user_id, transaction_id, kind, amount_micros, currency_code, description,
                                         reference, hold_id, request_id, request_actor, request_method, request_hash,
                                         model_id, caller)
        SELECT t_user[j], t_id[j], t_kind[j], t_amount[j], t_currency[j],
               'Usage of ' || p_models[t_item[j]] || ' (usage/' || t_record[j] || ')', 'usage/' || t_record[j],
               t_hold[j], p_request_ids[t_item[j]], CASE WHEN t_keyed[j] THEN p_actor END,
               CASE WHEN t_keyed[j] THEN p_method END, CASE WHEN t_keyed[j] THEN p_request_hashes[t_item[j]] END,
               p_models[t_item[j]], p_actor
          FROM generate_subscripts(t_id, 1) AS j
         ORDER BY t_user[j], t_item[j], j;
        INSERT INTO ledger_postings (user_id, transaction_id, leg, account_user_id, system_account, currency_code,
                                     amount_micros)
        SELECT t_user[j], t_id[j], leg, CASE WHEN leg = 1 THEN t_user[j] END, CASE WHEN leg = 2 THEN 'revenue' END,
               t_currency[j], CASE WHEN leg = 1 THEN -t_amount[j] ELSE t_amount[j] END
          FROM generate_subscripts(t_id, 1) AS j, (VALUES (1::smallint), (2::smallint)) AS legs(leg);

        -- A month without partition (the server creates them ahead; this is the fallback).
        FOR month IN SELECT DISTINCT date_trunc('month', c AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' FROM unnest(a_called) AS c LOOP
            IF to_regclass(usage_partition_name(month)) IS NULL THEN
                PERFORM usage_create_partition(month);
            END IF;
        END LOOP;
        WITH written AS (
            INSERT INTO usage_records (
                user_id, called_at, usage_record_id, request_id, model_id, price_id, session_id, input_tokens,
                cached_input_tokens, output_tokens, reasoning_tokens, latency_ns, time_to_first_token_ns, outcome,
                error_code, used_own_provider_key, hold_id, cost_micros, billed, ledger_transaction_id,
                overage_transaction_id)
            SELECT p_users[i], a_called[j], a_record[j], p_request_ids[i], p_models[i], a_price[j], p_sessions[i],
                   p_input[i], p_cached[i], p_output[i], p_reasoning[i], p_latency_ns[i], p_ttft_ns[i], p_outcomes[i],
                   p_error_codes[i], p_own_keys[i], p_holds[i], a_cost[j], a_billed[j], a_tx[j], a_overage[j]
              FROM generate_subscripts(a_item, 1) AS j, LATERAL (SELECT a_item[j] AS i) x
             ORDER BY i
            RETURNING usage_records.user_id, usage_records.called_at, usage_records.usage_record_id,
                      usage_records.request_id, usage_records.model_id, usage_records.price_id,
                      usage_records.session_id, usage_records.input_tokens, usage_records.cached_input_tokens,
                      usage_records.output_tokens, usage_records.reasoning_tokens, usage_records.latency_ns,
                      usage_records.time_to_first_token_ns, usage_records.outcome, usage_records.error_code,
                      usage_records.used_own_provider_key, usage_records.hold_id, usage_records.cost_micros,
                      usage_records.billed, usage_records.ledger_transaction_id,
                      usage_records.overage_transaction_id, usage_records.created_at
        )
        SELECT array_agg(ROW(w.*)::usage_records) INTO records FROM written w;
        INSERT INTO usage_rollup_queue (
            model_id, user_id, called_at, is_error, input_tokens, cached_input_tokens, output_tokens,
            reasoning_tokens, cost_micros, billed_micros, latency_bucket)
        SELECT p_models[i], p_users[i], a_called[j], p_outcomes[i] = 'error', p_input[i], p_cached[i], p_output[i],
               p_reasoning[i], a_cost[j], CASE WHEN a_billed[j] THEN a_cost[j] ELSE 0 END,
               CASE WHEN p_outcomes[i] = 'success' THEN usage_latency_bucket(p_latency_ns[i]) END
          FROM generate_subscripts(a_item, 1) AS j, LATERAL (SELECT a_item[j] AS i) x;
        PERFORM audit_append_many(
            p_actor, ARRAY(SELECT p_users[a_item[j]] FROM generate_subscripts(a_item, 1) AS j ORDER BY a_item[j]),
            'usage.RecordUsage', 'usage_record',
            ARRAY(SELECT a_record[j]::text FROM generate_subscripts(a_item, 1) AS j ORDER BY a_item[j]),
            ARRAY(SELECT p_request_ids[a_item[j]] FROM generate_subscripts(a_item, 1) AS j ORDER BY a_item[j]),
            ARRAY(SELECT jsonb_build_object('model_id', p_models[a_item[j]], 'price_id', a_price[j],
                                            'cost_micros', a_cost[j], 'currency_code', a_currency[j],
                                            'billed', a_billed[j], 'outcome', p_outcomes[a_item[j]],
                                            'hold_id', p_holds[a_item[j]])
                    FROM generate_subscripts(a_item, 1) AS j ORDER BY a_item[j]));
        -- The rejected items (late replays included) leave no claim behind.
        FOR r IN SELECT i FROM generate_subscripts(p_request_ids, 1) AS i WHERE statuses[i] = 'rejected' LOOP
            DELETE FROM idempotency_keys
             WHERE user_id = p_users[r.i] AND actor = p_actor AND request_id = p_request_ids[r.i];
        END LOOP;
    EXCEPTION WHEN integrity_constraint_violation THEN
        fallback := true;
        GET STACKED DIAGNOSTICS fallback_reason = CONSTRAINT_NAME;
    END;
    IF fallback THEN
        -- A budget the batch as a whole would exceed is no bug: item by item, the items that fit
        -- are recorded in order and the rest fail with BUDGET_EXCEEDED.
        IF fallback_reason IS DISTINCT FROM 'budget_exceeded' THEN
            RAISE WARNING 'usage_record_many fell back to usage_record_batch: %', fallback_reason;
        END IF;
        RETURN QUERY SELECT * FROM usage_record_batch(
            p_actor, p_method, p_request_ids, p_request_hashes, p_users, p_models, p_sessions, p_input, p_cached,
            p_output, p_reasoning, p_latency_ns, p_ttft_ns, p_outcomes, p_error_codes, p_own_keys, p_holds,
            p_called_at);
        RETURN;
    END IF;

    RETURN QUERY
        SELECT i - 1, statuses[i], rec, reasons[i], details[i],
               CASE WHEN statuses[i] = 'rejected' THEN '23514' END, stored_methods[i], stored_hashes[i],
               stored_responses[i]
          FROM generate_series(1, n) AS i
          LEFT JOIN unnest(a_item, a_record) AS a(item, written_id) ON a.item = i
          LEFT JOIN unnest(records) AS rec ON rec.usage_record_id = a.written_id
         ORDER BY i;
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
