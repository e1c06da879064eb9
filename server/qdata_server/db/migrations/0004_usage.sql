-- UsageService: the model catalog with immutable price versions, usage records partitioned by
-- month, their rollups, and ratings.
--
-- Recording (usage_record) writes the record, bills it through the ledger functions of
-- 0003_ledger.sql and appends one narrow row to usage_rollup_queue, all in the caller's
-- transaction. A single folder (usage_fold, run by the server in the background) moves queued
-- rows into the rollup tables. Reads add the rollups, the queued rows and, for the parts of a
-- window that do not start and end on whole hours, the raw records, all in one snapshot: so
-- statistics are exact, include every committed record whatever the folder's progress, and no
-- recording ever locks a rollup row (there is no hot row to wait for).
--
-- Usage records carry no foreign keys on the hot path: users, models and price versions are
-- never deleted (prices are immutable, models only change status, deleted users keep their row),
-- and usage_record checks each of them before writing. A foreign key would make every recording
-- take a KEY SHARE lock on the same model and price rows, which turns them into MultiXact hot
-- spots under concurrent load. Chat sessions are deleted for real, and a usage record outlives
-- its session, so session_id is checked when recorded and then kept as a plain value.

-- Monthly partitions of usage_records live in their own schema: they come and go at run time
-- (usage_ensure_partitions creates them ahead, operators detach old ones), and `migrate verify`
-- compares only the main schema with what the migrations produced.
CREATE SCHEMA usage_partitions;

CREATE TABLE models (
    model_id              text        NOT NULL,
    provider              text        NOT NULL,
    display_name          text        NOT NULL DEFAULT '',
    context_window_tokens bigint      NOT NULL DEFAULT 0,
    status                text        NOT NULL DEFAULT 'active',
    -- The currency every price version of the model uses; NULL until the first version.
    currency_code         text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT models_pkey PRIMARY KEY (model_id),
    CONSTRAINT models_id_format CHECK (model_id ~ '^[A-Za-z0-9._:/-]{1,200}$'),
    CONSTRAINT models_provider_format CHECK (provider ~ '^[a-z0-9_-]{1,64}$'),
    CONSTRAINT models_display_name_length CHECK (char_length(display_name) <= 200),
    CONSTRAINT models_context_window_range CHECK (context_window_tokens BETWEEN 0 AND 100000000),
    CONSTRAINT models_status_valid CHECK (status IN ('active', 'deprecated')),
    CONSTRAINT models_currency_format CHECK (currency_code ~ '^[A-Z]{3}$')
);
CREATE INDEX models_provider_idx ON models (provider, model_id);

-- Immutable price versions; the one in force at time t is the latest with effective_at <= t.
CREATE TABLE model_prices (
    price_id                          uuid        NOT NULL DEFAULT gen_random_uuid(),
    model_id                          text        NOT NULL,
    currency_code                     text        NOT NULL,
    -- Micro-units (1 USD = 1,000,000) per million tokens of each kind.
    input_micros_per_million          bigint      NOT NULL,
    output_micros_per_million         bigint      NOT NULL,
    cached_input_micros_per_million   bigint      NOT NULL,
    reasoning_micros_per_million      bigint      NOT NULL,
    effective_at                      timestamptz NOT NULL,
    created_at                        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT model_prices_pkey PRIMARY KEY (price_id),
    CONSTRAINT model_prices_model_fkey FOREIGN KEY (model_id) REFERENCES models (model_id),
    CONSTRAINT model_prices_model_effective_key UNIQUE (model_id, effective_at),
    CONSTRAINT model_prices_currency_format CHECK (currency_code ~ '^[A-Z]{3}$'),
    CONSTRAINT model_prices_range CHECK (
        input_micros_per_million BETWEEN 0 AND 1000000000000
        AND output_micros_per_million BETWEEN 0 AND 1000000000000
        AND cached_input_micros_per_million BETWEEN 0 AND 1000000000000
        AND reasoning_micros_per_million BETWEEN 0 AND 1000000000000)
);

CREATE FUNCTION usage_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege', CONSTRAINT = 'usage_append_only';
END;
$$;
CREATE TRIGGER model_prices_immutable BEFORE UPDATE OR DELETE ON model_prices
    FOR EACH ROW EXECUTE FUNCTION usage_forbid_change();
CREATE TRIGGER model_prices_no_truncate BEFORE TRUNCATE ON model_prices
    FOR EACH STATEMENT EXECUTE FUNCTION usage_forbid_change();

-- One row per metered model call, owned by the user who made it.
CREATE TABLE usage_records (
    user_id                uuid        NOT NULL,
    called_at              timestamptz NOT NULL,
    usage_record_id        uuid        NOT NULL DEFAULT gen_random_uuid(),
    request_id             text        NOT NULL,
    model_id               text        NOT NULL,
    -- The price version in force at called_at (its currency is the record's currency).
    price_id               uuid        NOT NULL,
    session_id             uuid,
    input_tokens           bigint      NOT NULL,
    cached_input_tokens    bigint      NOT NULL,
    output_tokens          bigint      NOT NULL,
    reasoning_tokens       bigint      NOT NULL,
    latency_ns             bigint,
    time_to_first_token_ns bigint,
    outcome                text        NOT NULL,
    error_code             text        NOT NULL DEFAULT '',
    used_own_provider_key  boolean     NOT NULL,
    hold_id                uuid,
    cost_micros            bigint      NOT NULL,
    billed                 boolean     NOT NULL,
    ledger_transaction_id  uuid,
    overage_transaction_id uuid,
    created_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT usage_records_pkey PRIMARY KEY (user_id, called_at, usage_record_id),
    CONSTRAINT usage_records_tokens_range CHECK (
        input_tokens BETWEEN 0 AND 1000000000 AND cached_input_tokens BETWEEN 0 AND 1000000000
        AND output_tokens BETWEEN 0 AND 1000000000 AND reasoning_tokens BETWEEN 0 AND 1000000000),
    CONSTRAINT usage_records_latency_range CHECK (latency_ns BETWEEN 0 AND 86400000000000),
    CONSTRAINT usage_records_ttft_range CHECK (
        time_to_first_token_ns BETWEEN 0 AND 86400000000000 AND time_to_first_token_ns <= latency_ns),
    CONSTRAINT usage_records_outcome_valid CHECK (outcome IN ('success', 'error')),
    CONSTRAINT usage_records_error_code_consistent CHECK (
        (outcome = 'error') = (error_code <> '') AND char_length(error_code) <= 100),
    CONSTRAINT usage_records_cost_nonnegative CHECK (cost_micros >= 0),
    -- The billing rule, stated once more where no code path can bypass it.
    CONSTRAINT usage_records_billed_rule CHECK (
        billed = (outcome = 'success' AND NOT used_own_provider_key AND cost_micros > 0)),
    CONSTRAINT usage_records_billed_has_transaction CHECK (billed = (ledger_transaction_id IS NOT NULL)),
    CONSTRAINT usage_records_overage_needs_hold CHECK (
        overage_transaction_id IS NULL OR (billed AND hold_id IS NOT NULL))
) PARTITION BY RANGE (called_at);
-- Model statistics read the raw records only at window edges that are not whole hours.
CREATE INDEX usage_records_model_time_idx ON usage_records (model_id, called_at) INCLUDE (user_id);

-- Recorded but not yet folded into the rollups: one narrow row per record, inserted in the
-- recording transaction and deleted by usage_fold in the transaction that adds it to the
-- rollups. No index: the folder keeps it small (a few seconds of traffic) and takes rows by ctid.
CREATE TABLE usage_rollup_queue (
    model_id            text        NOT NULL,
    user_id             uuid        NOT NULL,
    called_at           timestamptz NOT NULL,
    is_error            boolean     NOT NULL,
    input_tokens        bigint      NOT NULL,
    cached_input_tokens bigint      NOT NULL,
    output_tokens       bigint      NOT NULL,
    reasoning_tokens    bigint      NOT NULL,
    cost_micros         bigint      NOT NULL,
    billed_micros       bigint      NOT NULL,
    -- usage_latency_bucket(latency_ns) of a SUCCESS call that reported its latency, else NULL.
    latency_bucket      integer
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);

-- Folded per model and UTC hour, and per model and UTC day (hours and days start at UTC
-- boundaries). Only the folder writes them, so they are not sharded.
CREATE TABLE usage_model_hours (
    model_id            text        NOT NULL,
    hour                timestamptz NOT NULL,
    request_count       bigint      NOT NULL,
    error_count         bigint      NOT NULL,
    input_tokens        bigint      NOT NULL,
    cached_input_tokens bigint      NOT NULL,
    output_tokens       bigint      NOT NULL,
    reasoning_tokens    bigint      NOT NULL,
    cost_micros         bigint      NOT NULL,
    billed_micros       bigint      NOT NULL,
    CONSTRAINT usage_model_hours_pkey PRIMARY KEY (model_id, hour)
);
CREATE TABLE usage_model_days (
    model_id            text        NOT NULL,
    day                 timestamptz NOT NULL,
    request_count       bigint      NOT NULL,
    error_count         bigint      NOT NULL,
    input_tokens        bigint      NOT NULL,
    cached_input_tokens bigint      NOT NULL,
    output_tokens       bigint      NOT NULL,
    reasoning_tokens    bigint      NOT NULL,
    cost_micros         bigint      NOT NULL,
    billed_micros       bigint      NOT NULL,
    CONSTRAINT usage_model_days_pkey PRIMARY KEY (model_id, day)
);

-- Latency histograms of SUCCESS calls: one row per non-empty bucket (see usage_latency_bucket).
CREATE TABLE usage_latency_hours (
    model_id   text        NOT NULL,
    hour       timestamptz NOT NULL,
    bucket     integer     NOT NULL,
    call_count bigint      NOT NULL,
    CONSTRAINT usage_latency_hours_pkey PRIMARY KEY (model_id, hour, bucket)
);
CREATE TABLE usage_latency_days (
    model_id   text        NOT NULL,
    day        timestamptz NOT NULL,
    bucket     integer     NOT NULL,
    call_count bigint      NOT NULL,
    CONSTRAINT usage_latency_days_pkey PRIMARY KEY (model_id, day, bucket)
);

-- Which users called a model when, for exact unique-user counts over any window: per UTC month
-- a bitmap of the days (bit d-1 for day d), per UTC day a bitmap of the hours (bit h for hour
-- h). Whole days of a window read one row per user and month, its partial days one row per user
-- and day; only the partial hours at its edges need the raw records.
CREATE TABLE usage_model_user_months (
    model_id text        NOT NULL,
    month    timestamptz NOT NULL,
    user_id  uuid        NOT NULL,
    days     integer     NOT NULL,
    CONSTRAINT usage_model_user_months_pkey PRIMARY KEY (model_id, month, user_id)
);
CREATE TABLE usage_model_user_days (
    model_id text        NOT NULL,
    day      timestamptz NOT NULL,
    user_id  uuid        NOT NULL,
    hours    integer     NOT NULL,
    CONSTRAINT usage_model_user_days_pkey PRIMARY KEY (model_id, day, user_id)
);

-- A user's usage per UTC day and model (GetUserUsage).
CREATE TABLE usage_user_days (
    user_id             uuid        NOT NULL,
    day                 timestamptz NOT NULL,
    model_id            text        NOT NULL,
    request_count       bigint      NOT NULL,
    error_count         bigint      NOT NULL,
    input_tokens        bigint      NOT NULL,
    cached_input_tokens bigint      NOT NULL,
    output_tokens       bigint      NOT NULL,
    reasoning_tokens    bigint      NOT NULL,
    cost_micros         bigint      NOT NULL,
    billed_micros       bigint      NOT NULL,
    CONSTRAINT usage_user_days_pkey PRIMARY KEY (user_id, day, model_id)
);

-- One rating per user and model; rating again replaces it.
CREATE TABLE model_ratings (
    user_id    uuid        NOT NULL,
    model_id   text        NOT NULL,
    stars      smallint    NOT NULL,
    review     text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT model_ratings_pkey PRIMARY KEY (user_id, model_id),
    CONSTRAINT model_ratings_user_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT model_ratings_model_fkey FOREIGN KEY (model_id) REFERENCES models (model_id),
    CONSTRAINT model_ratings_stars_range CHECK (stars BETWEEN 1 AND 5),
    CONSTRAINT model_ratings_review_length CHECK (char_length(review) <= 2000)
);
-- ListModelRatings: a model's ratings, most recently changed first.
CREATE INDEX model_ratings_model_idx ON model_ratings (model_id, updated_at DESC, user_id DESC);

-- Each model's rating count and star sum, kept by RateModel in its transaction (ratings are
-- rare next to recordings, so one row per model is no hot spot).
CREATE TABLE model_rating_totals (
    model_id     text   NOT NULL,
    rating_count bigint NOT NULL,
    stars_sum    bigint NOT NULL,
    CONSTRAINT model_rating_totals_pkey PRIMARY KEY (model_id),
    CONSTRAINT model_rating_totals_consistent CHECK (
        rating_count >= 0 AND stars_sum BETWEEN rating_count AND 5 * rating_count)
);

-- Raises a business rejection that the server maps by its constraint name (db/constraints.py).
CREATE FUNCTION usage_reject(p_reason text, p_detail text DEFAULT '') RETURNS void
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
CREATE FUNCTION usage_latency_bucket(p_ns bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_ns IS NULL THEN NULL
                WHEN p_ns < 1000 THEN 0
                ELSE 1 + floor(ln(p_ns / 1000.0::double precision) / ln(1.05::double precision))::integer END
$$;

-- The partition of usage_records that holds time p_at (schema-qualified name).
CREATE FUNCTION usage_partition_name(p_at timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT 'usage_partitions.usage_records_' || to_char(p_at AT TIME ZONE 'UTC', 'YYYY_MM')
$$;

-- Creates the monthly (UTC) partition that holds p_at unless it exists; true if it created it.
-- Creating a partition briefly locks usage_records exclusively, so the server does it ahead of
-- time (usage_ensure_partitions); recording creates a missing one itself only as a fallback.
CREATE FUNCTION usage_create_partition(p_at timestamptz) RETURNS boolean
LANGUAGE plpgsql AS $$
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

-- Makes sure partitions exist from the month of 7 days ago (the oldest call_time accepted) to
-- p_months_ahead months after the current one; returns how many it created.
CREATE FUNCTION usage_ensure_partitions(p_months_ahead integer) RETURNS integer
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

-- Records one model call and bills it (see usage.proto): checks the user, model, session, price
-- and hold, computes the cost exactly (ceil of the integer sum / 10^6), charges it, captures the
-- hold (and charges any overage) or releases it, writes the record, its queue row and its audit
-- event. Any rejection raises and so rolls back everything the caller's transaction did.
CREATE FUNCTION usage_record(
    p_user uuid, p_model text, p_session uuid, p_input bigint, p_cached bigint, p_output bigint,
    p_reasoning bigint, p_latency_ns bigint, p_ttft_ns bigint, p_outcome text, p_error_code text,
    p_own_key boolean, p_hold uuid, p_called_at timestamptz, p_request_id text, p_actor text
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
BEGIN
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
            p_user, rec.cost_micros, price.currency_code, description, 'usage/' || rec.usage_record_id, p_request_id);
    ELSIF rec.billed THEN
        IF hold.currency_code <> price.currency_code THEN
            PERFORM usage_reject('usage_currency_mismatch', hold.currency_code);
        END IF;
        -- The capture releases the rest of the hold; a cost above it captures the whole hold and
        -- charges the overage from the available balance (the capture freed nothing for it).
        rec.ledger_transaction_id := ledger_capture_hold(
            p_user, p_hold, least(rec.cost_micros, hold.amount_micros), description, p_request_id,
            'usage/' || rec.usage_record_id);
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
    INSERT INTO audit_events (actor, user_id, action, target_type, target_id, request_id, summary)
    VALUES (p_actor, p_user, 'usage.RecordUsage', 'usage_record', rec.usage_record_id::text, p_request_id,
            jsonb_build_object('model_id', p_model, 'price_id', price.price_id, 'cost_micros', rec.cost_micros,
                               'currency_code', price.currency_code, 'billed', rec.billed,
                               'outcome', p_outcome, 'hold_id', p_hold));
    RETURN rec;
END;
$$;

-- Records the items of a RecordUsageBatch chunk in order, each atomically on its own (a
-- subtransaction): claims its request_id as qdata_server.idempotency does (a claimed key reports
-- the stored method, fingerprint and response instead), then calls usage_record. A business
-- rejection or constraint violation is returned as the item's result, and only that item is
-- rolled back. The caller stores the responses of the recorded items before it commits. Keep a
-- chunk under 64 items: more subtransactions than that in one transaction overflow PostgreSQL's
-- per-backend subtransaction cache and slow down every other session's snapshots.
CREATE FUNCTION usage_record_batch(
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
            claimed := NULL;
            INSERT INTO idempotency_keys (user_id, actor, request_id, method, request_hash, response)
            VALUES (p_users[i], p_actor, p_request_ids[i], p_method, p_request_hashes[i], ''::bytea)
            ON CONFLICT (user_id, actor, request_id) DO NOTHING
            RETURNING true INTO claimed;
            IF claimed IS NULL THEN
                o_status := 'claimed';
                SELECT k.method, k.request_hash, k.response INTO o_stored_method, o_stored_hash, o_stored_response
                  FROM idempotency_keys k
                 WHERE k.user_id = p_users[i] AND k.actor = p_actor AND k.request_id = p_request_ids[i];
            ELSE
                o_status := 'recorded';
                o_record := usage_record(
                    p_users[i], p_models[i], p_sessions[i], p_input[i], p_cached[i], p_output[i], p_reasoning[i],
                    p_latency_ns[i], p_ttft_ns[i], p_outcomes[i], p_error_codes[i], p_own_keys[i], p_holds[i],
                    p_called_at[i], p_request_ids[i], p_actor);
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
CREATE FUNCTION usage_fold(p_limit integer) RETURNS integer
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

-- The current month and the months around it exist from the start.
SELECT usage_ensure_partitions(3);
