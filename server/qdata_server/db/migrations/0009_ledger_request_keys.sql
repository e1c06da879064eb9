-- A money-moving request takes effect at most once under its request_id, however late the retry.
--
-- Idempotency records (idempotency_keys) are purged after QDATA_IDEMPOTENCY_RETENTION_HOURS, and a
-- replay after the purge used to be a new request: Charge R, a week later Charge R again, and the
-- user paid twice. Now the ledger rows a money-moving request creates carry its idempotency key
-- (user, calling service = actor, request_id) together with the RPC's method and the request's
-- fingerprint, under a unique index, and are never purged:
--   ledger_transactions  Deposit, Charge, Refund, Transfer, CaptureHold, a billed RecordUsage (its
--                        charge or hold capture; an overage charge rides on the same record and
--                        carries no key of its own);
--   ledger_holds         CreateHold (request_*) and ReleaseHold (release_request_*).
-- Every ledger function first checks whether the ledger already carries the key
-- (ledger_check_request) and, if so, rejects with the pseudo-constraint ledger_request_remembered
-- before any other check or lock: the server then answers from those rows (the first answer
-- again, or REQUEST_ID_REUSED if the method or fingerprint differ) and nothing moves. Two late
-- replays that pass the check at once meet on the unique index: the loser fails on it, and the
-- server maps that to the same answer. The key carries the actor because request_ids are scoped
-- per calling service (two services may use the same id for the same user).
--
-- Rows written before this migration carry no actor, hence no key: their requests stay
-- protected by their idempotency records, which are now kept forever (kept_forever below)
-- instead of being purged. A replica still running the previous release during a rolling update
-- calls the functions with their old arguments (the key parameters default to NULL) and writes
-- rows without a key: finish a rolling update well within the retention.

ALTER TABLE ledger_transactions
    ADD COLUMN request_actor  text,
    ADD COLUMN request_method text,
    ADD COLUMN request_hash   bytea,
    ADD CONSTRAINT ledger_transactions_request_key_complete CHECK (
        (request_actor IS NULL) = (request_method IS NULL)
        AND (request_actor IS NULL) = (request_hash IS NULL)
        AND (request_actor IS NULL OR request_id <> ''));
CREATE UNIQUE INDEX ledger_transactions_request_key
    ON ledger_transactions (user_id, request_actor, request_id) WHERE request_actor IS NOT NULL;

ALTER TABLE ledger_holds
    ADD COLUMN request_actor          text,
    ADD COLUMN request_method         text,
    ADD COLUMN request_hash           bytea,
    ADD COLUMN release_request_id     text,
    ADD COLUMN release_request_actor  text,
    ADD COLUMN release_request_method text,
    ADD COLUMN release_request_hash   bytea,
    ADD CONSTRAINT ledger_holds_request_key_complete CHECK (
        (request_actor IS NULL) = (request_method IS NULL)
        AND (request_actor IS NULL) = (request_hash IS NULL)
        AND (request_actor IS NULL OR request_id <> '')),
    ADD CONSTRAINT ledger_holds_release_request_key_complete CHECK (
        (release_request_actor IS NULL) = (release_request_id IS NULL)
        AND (release_request_actor IS NULL) = (release_request_method IS NULL)
        AND (release_request_actor IS NULL) = (release_request_hash IS NULL)
        AND (release_request_actor IS NULL OR status = 'released'));
CREATE UNIQUE INDEX ledger_holds_request_key
    ON ledger_holds (user_id, request_actor, request_id) WHERE request_actor IS NOT NULL;
CREATE UNIQUE INDEX ledger_holds_release_request_key
    ON ledger_holds (user_id, release_request_actor, release_request_id) WHERE release_request_actor IS NOT NULL;

-- Idempotency records the purge leaves alone: those of money-moving requests accepted before
-- this migration, whose ledger rows carry no key (see above).
ALTER TABLE idempotency_keys ADD COLUMN kept_forever boolean NOT NULL DEFAULT false;
UPDATE idempotency_keys k SET kept_forever = true
 WHERE k.method IN ('/qdata.v1.LedgerService/Deposit', '/qdata.v1.LedgerService/Charge',
                    '/qdata.v1.LedgerService/Refund', '/qdata.v1.LedgerService/Transfer',
                    '/qdata.v1.LedgerService/CreateHold', '/qdata.v1.LedgerService/CaptureHold',
                    '/qdata.v1.LedgerService/ReleaseHold')
    OR (k.method = '/qdata.v1.UsageService/RecordUsage'
        AND EXISTS (SELECT FROM ledger_transactions t WHERE t.user_id = k.user_id AND t.request_id = k.request_id));

-- The ledger rows that carry a request key: a transaction (with the hold it captured, if any), a
-- hold's creation or a hold's release. At most one row per table (the unique indexes above).
CREATE FUNCTION ledger_request_holder(p_user uuid, p_actor text, p_request_id text)
RETURNS TABLE (method text, request_hash bytea, transaction_id uuid, hold_id uuid, created_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT t.request_method, t.request_hash, t.transaction_id, t.hold_id, t.created_at
      FROM ledger_transactions t
     WHERE t.user_id = p_user AND t.request_actor = p_actor AND t.request_id = p_request_id
    UNION ALL
    SELECT h.request_method, h.request_hash, NULL, h.hold_id, h.created_at
      FROM ledger_holds h
     WHERE h.user_id = p_user AND h.request_actor = p_actor AND h.request_id = p_request_id
    UNION ALL
    SELECT h.release_request_method, h.release_request_hash, NULL, h.hold_id, h.resolved_at
      FROM ledger_holds h
     WHERE h.user_id = p_user AND h.release_request_actor = p_actor AND h.release_request_id = p_request_id
$$;

-- Rejects a request whose key the ledger already carries (see above); a NULL actor (a movement
-- without a key of its own) checks nothing.
CREATE FUNCTION ledger_check_request(p_user uuid, p_actor text, p_request_id text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_actor IS NOT NULL AND EXISTS (SELECT FROM ledger_request_holder(p_user, p_actor, p_request_id)) THEN
        PERFORM ledger_reject('ledger_request_remembered');
    END IF;
END;
$$;

-- The functions below are those of 0003_ledger.sql (ledger_deposit as of 0007), each taking the
-- key's actor, method and fingerprint after its request_id, checking the key first and storing
-- it on the row it creates. The new parameters default to NULL (no key), so a call with the old
-- arguments still runs; the old signatures are dropped so that no call is ambiguous.
DROP FUNCTION ledger_insert_transaction(uuid, text, bigint, text, uuid, text, uuid, text, uuid, text, text, text,
                                        text, uuid, uuid, text);
DROP FUNCTION ledger_deposit(uuid, bigint, text, text, text, text, text);
DROP FUNCTION ledger_charge(uuid, bigint, text, text, text, text);
DROP FUNCTION ledger_transfer(uuid, uuid, bigint, text, text, text, text);
DROP FUNCTION ledger_refund(uuid, uuid, bigint, text, text);
DROP FUNCTION ledger_create_hold(uuid, bigint, text, double precision, text, text, text);
DROP FUNCTION ledger_capture_hold(uuid, uuid, bigint, text, text, text);
DROP FUNCTION ledger_release_hold(uuid, uuid);

CREATE FUNCTION ledger_insert_transaction(
    p_owner uuid, p_kind text, p_amount bigint, p_currency text, p_debit_user uuid, p_debit_system text,
    p_credit_user uuid, p_credit_system text, p_counterparty uuid, p_description text, p_reference text,
    p_external_reference text, p_deposit_source text, p_original uuid, p_hold uuid, p_request_id text,
    p_actor text, p_method text, p_request_hash bytea
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    new_id uuid;
BEGIN
    INSERT INTO ledger_transactions (user_id, kind, counterparty_user_id, amount_micros, currency_code,
                                     description, reference, external_reference, deposit_source,
                                     original_transaction_id, hold_id, request_id, request_actor,
                                     request_method, request_hash)
    VALUES (p_owner, p_kind, p_counterparty, p_amount, p_currency, p_description, p_reference,
            p_external_reference, p_deposit_source, p_original, p_hold, p_request_id, p_actor,
            p_method, p_request_hash)
    RETURNING transaction_id INTO new_id;
    INSERT INTO ledger_postings (user_id, transaction_id, leg, account_user_id, system_account, currency_code, amount_micros)
    VALUES (p_owner, new_id, 1, p_debit_user, p_debit_system, p_currency, -p_amount),
           (p_owner, new_id, 2, p_credit_user, p_credit_system, p_currency, p_amount);
    RETURN new_id;
END;
$$;

CREATE FUNCTION ledger_deposit(
    p_user uuid, p_amount bigint, p_currency text, p_source text, p_external_reference text,
    p_description text, p_request_id text, p_actor text DEFAULT NULL, p_method text DEFAULT NULL,
    p_request_hash bytea DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    earlier uuid;
BEGIN
    PERFORM ledger_check_request(p_user, p_actor, p_request_id);
    IF p_external_reference <> '' THEN
        -- Deposits of one reference queue here, so a later one sees the earlier one committed
        -- (and names it) instead of failing on the unique index with its raw message.
        PERFORM pg_advisory_xact_lock(hashtextextended('ledger_external_reference:' || p_external_reference, 0));
        earlier := ledger_external_reference_holder(p_external_reference);
        IF earlier IS NOT NULL THEN
            PERFORM ledger_reject('ledger_transactions_external_reference_key', earlier::text);
        END IF;
    END IF;
    PERFORM ledger_lock_account(p_user, p_currency);
    PERFORM ledger_credit_account(p_user, p_currency, p_amount);
    RETURN ledger_insert_transaction(
        p_user, 'deposit', p_amount, p_currency,
        NULL, CASE p_source WHEN 'promotion' THEN 'promotions' ELSE 'payments_received' END,
        p_user, NULL, NULL, p_description, '', p_external_reference, p_source, NULL, NULL, p_request_id,
        p_actor, p_method, p_request_hash);
END;
$$;

CREATE FUNCTION ledger_charge(
    p_user uuid, p_amount bigint, p_currency text, p_description text, p_reference text, p_request_id text,
    p_actor text DEFAULT NULL, p_method text DEFAULT NULL, p_request_hash bytea DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_check_request(p_user, p_actor, p_request_id);
    PERFORM ledger_debit_available(ledger_lock_account(p_user, p_currency), p_amount);
    RETURN ledger_insert_transaction(
        p_user, 'charge', p_amount, p_currency, p_user, NULL, NULL, 'revenue',
        NULL, p_description, p_reference, '', '', NULL, NULL, p_request_id, p_actor, p_method, p_request_hash);
END;
$$;

CREATE FUNCTION ledger_transfer(
    p_from uuid, p_to uuid, p_amount bigint, p_currency text, p_description text, p_reference text,
    p_request_id text, p_actor text DEFAULT NULL, p_method text DEFAULT NULL, p_request_hash bytea DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    sender ledger_accounts;
BEGIN
    -- The key belongs to the sender, as does the transaction.
    PERFORM ledger_check_request(p_from, p_actor, p_request_id);
    -- Both accounts, always in user_id order, so crossing transfers cannot deadlock.
    IF p_from < p_to THEN
        sender := ledger_lock_account(p_from, p_currency);
        PERFORM ledger_lock_account(p_to, p_currency);
    ELSE
        PERFORM ledger_lock_account(p_to, p_currency);
        sender := ledger_lock_account(p_from, p_currency);
    END IF;
    PERFORM ledger_debit_available(sender, p_amount);
    PERFORM ledger_credit_account(p_to, p_currency, p_amount);
    RETURN ledger_insert_transaction(
        p_from, 'transfer', p_amount, p_currency, p_from, NULL, p_to, NULL,
        p_to, p_description, p_reference, '', '', NULL, NULL, p_request_id, p_actor, p_method, p_request_hash);
END;
$$;

CREATE FUNCTION ledger_refund(
    p_user uuid, p_original uuid, p_amount bigint, p_description text, p_request_id text,
    p_actor text DEFAULT NULL, p_method text DEFAULT NULL, p_request_hash bytea DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    original ledger_transactions;
    refunded bigint;
BEGIN
    PERFORM ledger_check_request(p_user, p_actor, p_request_id);
    SELECT * INTO original FROM ledger_transactions WHERE user_id = p_user AND transaction_id = p_original;
    IF NOT FOUND THEN
        PERFORM ledger_reject('ledger_transaction_not_found', p_original::text);
    END IF;
    IF original.kind NOT IN ('charge', 'hold_capture') THEN
        PERFORM ledger_reject('ledger_transaction_not_refundable', original.kind);
    END IF;
    -- The account lock serializes refunds of the same original (same user, same currency).
    PERFORM ledger_lock_account(p_user, original.currency_code);
    SELECT coalesce(sum(amount_micros), 0) INTO refunded FROM ledger_transactions
     WHERE user_id = p_user AND original_transaction_id = p_original;
    IF refunded + p_amount > original.amount_micros THEN
        PERFORM ledger_reject('ledger_refund_exceeds_original', (original.amount_micros - refunded)::text);
    END IF;
    PERFORM ledger_credit_account(p_user, original.currency_code, p_amount);
    RETURN ledger_insert_transaction(
        p_user, 'refund', p_amount, original.currency_code, NULL, 'refunds', p_user, NULL,
        NULL, p_description, original.reference, '', '', p_original, NULL, p_request_id,
        p_actor, p_method, p_request_hash);
END;
$$;

CREATE FUNCTION ledger_create_hold(
    p_user uuid, p_amount bigint, p_currency text, p_ttl_seconds double precision, p_description text,
    p_reference text, p_request_id text, p_actor text DEFAULT NULL, p_method text DEFAULT NULL,
    p_request_hash bytea DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    account ledger_accounts;
    new_id uuid;
BEGIN
    PERFORM ledger_check_request(p_user, p_actor, p_request_id);
    account := ledger_lock_account(p_user, p_currency);
    IF account.posted_micros - account.held_micros < p_amount THEN
        PERFORM ledger_reject('ledger_insufficient_funds', (account.posted_micros - account.held_micros)::text);
    END IF;
    INSERT INTO ledger_holds (user_id, currency_code, amount_micros, description, reference, request_id,
                              request_actor, request_method, request_hash, expire_at)
    VALUES (p_user, p_currency, p_amount, p_description, p_reference, p_request_id,
            p_actor, p_method, p_request_hash, now() + make_interval(secs => p_ttl_seconds))
    RETURNING hold_id INTO new_id;
    UPDATE ledger_accounts SET held_micros = held_micros + p_amount, updated_at = now()
     WHERE user_id = p_user AND currency_code = p_currency;
    RETURN new_id;
END;
$$;

-- p_reference: the capture transaction's reference; empty keeps the hold's own.
CREATE FUNCTION ledger_capture_hold(
    p_user uuid, p_hold uuid, p_amount bigint, p_description text, p_request_id text, p_reference text DEFAULT '',
    p_actor text DEFAULT NULL, p_method text DEFAULT NULL, p_request_hash bytea DEFAULT NULL
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
        '', '', NULL, p_hold, p_request_id, p_actor, p_method, p_request_hash);
    UPDATE ledger_holds
       SET status = 'captured', captured_micros = p_amount, capture_transaction_id = new_id, resolved_at = now()
     WHERE user_id = p_user AND hold_id = p_hold;
    RETURN new_id;
END;
$$;

-- Without a key (p_actor NULL: an unbilled usage record releasing its hold) the release records
-- no request.
CREATE FUNCTION ledger_release_hold(
    p_user uuid, p_hold uuid, p_request_id text DEFAULT NULL, p_actor text DEFAULT NULL,
    p_method text DEFAULT NULL, p_request_hash bytea DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    hold ledger_holds;
BEGIN
    PERFORM ledger_check_request(p_user, p_actor, p_request_id);
    hold := ledger_lock_active_hold(p_user, p_hold);
    UPDATE ledger_accounts SET held_micros = held_micros - hold.amount_micros, updated_at = now()
     WHERE user_id = p_user AND currency_code = hold.currency_code;
    UPDATE ledger_holds
       SET status = 'released', resolved_at = now(),
           release_request_id = CASE WHEN p_actor IS NOT NULL THEN p_request_id END,
           release_request_actor = p_actor, release_request_method = p_method, release_request_hash = p_request_hash
     WHERE user_id = p_user AND hold_id = p_hold;
END;
$$;

-- usage_record of 0004_usage.sql, taking the key's method and fingerprint (its actor is p_actor):
-- it checks the key first, before the user, session or hold checks a late replay might no longer
-- pass, and the charge or hold capture of a billed record carries it.
DROP FUNCTION usage_record(uuid, text, uuid, bigint, bigint, bigint, bigint, bigint, bigint, text, text, boolean,
                           uuid, timestamptz, text, text);
CREATE FUNCTION usage_record(
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
    INSERT INTO audit_events (actor, user_id, action, target_type, target_id, request_id, summary)
    VALUES (p_actor, p_user, 'usage.RecordUsage', 'usage_record', rec.usage_record_id::text, p_request_id,
            jsonb_build_object('model_id', p_model, 'price_id', price.price_id, 'cost_micros', rec.cost_micros,
                               'currency_code', price.currency_code, 'billed', rec.billed,
                               'outcome', p_outcome, 'hold_id', p_hold));
    RETURN rec;
END;
$$;

-- usage_record_batch of 0004_usage.sql, passing each item's key on to usage_record. A late replay
-- (ledger_request_remembered) or a lost race on a key's unique index comes back as the item's
-- rejection, named by its constraint, and the server answers it from the ledger rows.
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
