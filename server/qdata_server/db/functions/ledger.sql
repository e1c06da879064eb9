-- Current source: the ledger's functions and triggers (tables: migrations 0003, 0009, 0012).
--
-- Money is bigint micro-units. A user's account caches posted_micros (sum of its postings) and
-- held_micros (sum of its holds in status 'active', swept or not); CHECKs on ledger_accounts make
-- "available = posted - held >= 0" a database invariant. System accounts (payments_received,
-- promotions, revenue, refunds) keep no cached balance: their balance is the sum of their postings,
-- so no single hot row serializes charges. Every multi-row change goes through one of the ledger_*
-- functions below, each a single transaction-bound call that locks the user accounts it touches in
-- user_id order.
--
-- A money-moving request takes effect at most once under its request_id, however late the retry:
-- the rows it creates carry its key (user, calling service = actor, request_id) with the RPC's
-- method and the request's fingerprint, under unique indexes, never purged. Every ledger function
-- first checks the key (ledger_check_request) and rejects with the pseudo-constraint
-- ledger_request_remembered before any other check or lock; the server then answers from those
-- rows. The key parameters default to NULL (no key). See 0009_ledger_request_keys.sql.

-- Transactions and postings are immutable: corrections are new transactions.
CREATE OR REPLACE FUNCTION ledger_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege', CONSTRAINT = 'ledger_append_only';
END;
$$;

CREATE OR REPLACE TRIGGER ledger_transactions_immutable BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE OR REPLACE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();
CREATE OR REPLACE TRIGGER ledger_postings_immutable BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE OR REPLACE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();

-- Raises a business rejection that the server maps by its constraint name (see db/constraints.py).
CREATE OR REPLACE FUNCTION ledger_reject(p_reason text, p_detail text DEFAULT '') RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger rejected the request: %', p_reason
        USING ERRCODE = 'check_violation', CONSTRAINT = p_reason, DETAIL = p_detail;
END;
$$;

-- Locks a user's account in a currency (creating it on first use) and sweeps its expired
-- holds, so that held_micros counts only holds that still reserve money. Requests need a live
-- user (p_live): checked fast before the account is created, then again under a share lock on
-- the user's row once the account row is locked, so that a movement and a DeleteUser of the same
-- user do not race: either the movement commits first, or it waits for the deletion and rejects
-- (USER_NOT_FOUND). The share lock comes after the account lock, which already serializes a
-- user's movements in one currency, so concurrent charges do not pile share locks (MultiXacts)
-- onto the user's row. The sweeper (p_live false) also tidies accounts of deleted users.
CREATE OR REPLACE FUNCTION ledger_lock_account(p_user uuid, p_currency text, p_live boolean DEFAULT true)
RETURNS ledger_accounts
LANGUAGE plpgsql AS $$
DECLARE
    account ledger_accounts;
    expired bigint;
BEGIN
    IF p_live THEN
        -- Fails fast, before an account is created for a user that does not exist.
        PERFORM 1 FROM users WHERE user_id = p_user AND status <> 'deleted';
        IF NOT FOUND THEN
            PERFORM ledger_reject('ledger_user_not_found', p_user::text);
        END IF;
    END IF;
    INSERT INTO ledger_accounts (user_id, currency_code) VALUES (p_user, p_currency)
        ON CONFLICT (user_id, currency_code) DO NOTHING;
    SELECT * INTO account FROM ledger_accounts
     WHERE user_id = p_user AND currency_code = p_currency FOR UPDATE;
    IF p_live THEN
        -- The check that holds until commit (see above).
        PERFORM 1 FROM users WHERE user_id = p_user AND status <> 'deleted' FOR SHARE;
        IF NOT FOUND THEN
            PERFORM ledger_reject('ledger_user_not_found', p_user::text);
        END IF;
    END IF;
    WITH swept AS (
        UPDATE ledger_holds SET status = 'expired', resolved_at = expire_at
         WHERE user_id = p_user AND currency_code = p_currency AND status = 'active' AND expire_at <= now()
        RETURNING amount_micros
    )
    SELECT coalesce(sum(amount_micros), 0) INTO expired FROM swept;
    IF expired > 0 THEN
        UPDATE ledger_accounts SET held_micros = held_micros - expired, updated_at = now()
         WHERE user_id = p_user AND currency_code = p_currency
        RETURNING * INTO account;
    END IF;
    RETURN account;
END;
$$;

-- Appends one transaction with its two legs (debit and credit, each a user or a system
-- account) and its request key; the callers move the user accounts' cached balances themselves.
-- p_model: the catalog model a usage charge paid for; p_caller: the calling service that moved
-- the money (default: the key's actor), the two scopes of a budget (0018_budgets.sql). The
-- insert fires the budgets' trigger (functions/budget_enforcement.sql), which may reject it.
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

CREATE OR REPLACE FUNCTION ledger_credit_account(p_user uuid, p_currency text, p_amount bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ledger_accounts SET posted_micros = posted_micros + p_amount, updated_at = now()
     WHERE user_id = p_user AND currency_code = p_currency AND posted_micros <= 1000000000000000000 - p_amount;
    IF NOT FOUND THEN
        PERFORM ledger_reject('ledger_balance_limit_exceeded', p_user::text);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_debit_available(p_account ledger_accounts, p_amount bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_account.posted_micros - p_account.held_micros < p_amount THEN
        PERFORM ledger_reject('ledger_insufficient_funds',
                              (p_account.posted_micros - p_account.held_micros)::text);
    END IF;
    UPDATE ledger_accounts SET posted_micros = posted_micros - p_amount, updated_at = now()
     WHERE user_id = p_account.user_id AND currency_code = p_account.currency_code;
END;
$$;

-- A payment provider's reference credits at most once, whoever the user: the deposit that finds
-- it taken names the transaction holding it, which may be another user's. This lookup, and only
-- it, reads across users with the owner's rights (search path fixed as for audit_events_chain).
CREATE OR REPLACE FUNCTION ledger_external_reference_holder(p_external_reference text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT transaction_id FROM ledger_transactions WHERE external_reference = p_external_reference
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION ledger_external_reference_holder(text) SET search_path = %I, pg_temp', current_schema());
END;
$$;
REVOKE EXECUTE ON FUNCTION ledger_external_reference_holder(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger_external_reference_holder(text) TO qdata_service;

-- The ledger rows that carry a request key: a transaction (with the hold it captured, if any), a
-- hold's creation or a hold's release. At most one row per table (unique indexes of 0009).
CREATE OR REPLACE FUNCTION ledger_request_holder(p_user uuid, p_actor text, p_request_id text)
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

-- Rejects a request whose key the ledger already carries (see the top of this file); a NULL
-- actor (a movement without a key of its own) checks nothing.
CREATE OR REPLACE FUNCTION ledger_check_request(p_user uuid, p_actor text, p_request_id text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_actor IS NOT NULL AND EXISTS (SELECT FROM ledger_request_holder(p_user, p_actor, p_request_id)) THEN
        PERFORM ledger_reject('ledger_request_remembered');
    END IF;
END;
$$;

-- Deposits of one external reference queue on an advisory lock, so a later one sees the earlier
-- one committed (and names it) instead of failing on the unique index with its raw message.
CREATE OR REPLACE FUNCTION ledger_deposit(
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

-- An opening balance: money a user already held in the old services, credited once from the
-- opening_balances system account (not a payment or a promotion, so revenue stays true). Written
-- by `qdata-server import` only.
CREATE OR REPLACE FUNCTION ledger_opening_balance(
    p_user uuid, p_amount bigint, p_currency text, p_description text, p_request_id text,
    p_actor text DEFAULT NULL, p_method text DEFAULT NULL, p_request_hash bytea DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_check_request(p_user, p_actor, p_request_id);
    PERFORM ledger_lock_account(p_user, p_currency);
    PERFORM ledger_credit_account(p_user, p_currency, p_amount);
    RETURN ledger_insert_transaction(
        p_user, 'opening_balance', p_amount, p_currency, NULL, 'opening_balances',
        p_user, NULL, NULL, p_description, '', '', '', NULL, NULL, p_request_id,
        p_actor, p_method, p_request_hash);
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

CREATE OR REPLACE FUNCTION ledger_transfer(
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

CREATE OR REPLACE FUNCTION ledger_refund(
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

CREATE OR REPLACE FUNCTION ledger_create_hold(
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

-- Locks an unresolved hold for capture or release (after its account), or rejects with the reason
-- that says why it cannot be resolved any more.
CREATE OR REPLACE FUNCTION ledger_lock_active_hold(p_user uuid, p_hold uuid) RETURNS ledger_holds
LANGUAGE plpgsql AS $$
DECLARE
    hold ledger_holds;
BEGIN
    SELECT * INTO hold FROM ledger_holds WHERE user_id = p_user AND hold_id = p_hold;
    IF NOT FOUND THEN
        PERFORM ledger_reject('ledger_hold_not_found', p_hold::text);
    END IF;
    -- Account first (the same order as every other writer), which also sweeps expired holds.
    PERFORM ledger_lock_account(p_user, hold.currency_code);
    SELECT * INTO hold FROM ledger_holds WHERE user_id = p_user AND hold_id = p_hold FOR UPDATE;
    IF hold.status = 'captured' THEN
        PERFORM ledger_reject('ledger_hold_already_captured', p_hold::text);
    ELSIF hold.status = 'released' THEN
        PERFORM ledger_reject('ledger_hold_already_released', p_hold::text);
    ELSIF hold.status = 'expired' THEN
        PERFORM ledger_reject('ledger_hold_expired', p_hold::text);
    END IF;
    RETURN hold;
END;
$$;

-- p_reference: the capture transaction's reference; empty keeps the hold's own. p_model, p_caller:
-- as for ledger_insert_transaction.
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

-- Without a key (p_actor NULL: an unbilled usage record releasing its hold) the release records
-- no request.
CREATE OR REPLACE FUNCTION ledger_release_hold(
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

-- Marks expired holds of up to p_limit accounts resolved (the background sweeper); accounts
-- locked by a running request are skipped and swept by that request itself.
CREATE OR REPLACE FUNCTION ledger_sweep_expired_holds(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    target record;
    swept integer := 0;
BEGIN
    FOR target IN
        SELECT a.user_id, a.currency_code
          FROM ledger_accounts a
         WHERE EXISTS (SELECT 1 FROM ledger_holds h
                        WHERE h.user_id = a.user_id AND h.currency_code = a.currency_code
                          AND h.status = 'active' AND h.expire_at <= now())
         ORDER BY a.user_id, a.currency_code
         LIMIT p_limit
           FOR UPDATE OF a SKIP LOCKED
    LOOP
        PERFORM ledger_lock_account(target.user_id, target.currency_code, false);
        swept := swept + 1;
    END LOOP;
    RETURN swept;
END;
$$;

-- The server's one-call forms of the movements above (the path every RPC takes; the functions
-- above keep their signatures for plpgsql callers and for the previous release during a rolling
-- update). Each one claims the request's idempotency key with idempotency_claim and, only if it
-- took the key, moves the money through its function above and appends the audit event with
-- audit_append, all in the calling transaction. When a committed request already holds the key,
-- nothing moves: the claim's stored method, fingerprint and response come back for the server to
-- compare (qdata_server.idempotency's check_same_request) and answer. The audit event's actor,
-- action, request id and summary come from the server, as for every other event; its target is
-- the new transaction or the hold. The statements that call these (queries/ledger.sql) read the
-- answer in the same statement (ledger_transaction_answer, ledger_hold_answer), so the claim, the
-- movement, the audit row and the answer cost one round trip.

-- A transaction as the request that created it answers it: the owner's view, nothing refunded
-- yet. VOLATILE so that it sees what the one-call function in the same statement has just written.
CREATE OR REPLACE FUNCTION ledger_transaction_answer(p_user uuid, p_transaction uuid)
RETURNS TABLE (
    user_id uuid, transaction_id uuid, kind text, counterparty_user_id uuid, amount_micros bigint,
    currency_code text, description text, reference text, external_reference text, deposit_source text,
    original_transaction_id uuid, hold_id uuid, request_id text, created_at timestamptz, postings json,
    refunded_micros bigint
)
LANGUAGE sql VOLATILE AS $$
    SELECT t.user_id, t.transaction_id, t.kind, t.counterparty_user_id, t.amount_micros, t.currency_code,
           t.description, t.reference, t.external_reference, t.deposit_source, t.original_transaction_id,
           t.hold_id, t.request_id, t.created_at,
           (SELECT json_agg(json_build_object(
                       'account', CASE WHEN p.account_user_id IS NOT NULL THEN 'users/' || p.account_user_id
                                       ELSE 'system/' || p.system_account END,
                       'amount_micros', p.amount_micros) ORDER BY p.leg)
              FROM ledger_postings p WHERE p.user_id = t.user_id AND p.transaction_id = t.transaction_id),
           0::bigint
      FROM ledger_transactions t
     WHERE t.user_id = p_user AND t.transaction_id = p_transaction
$$;

-- A hold as it reads now (read_at: the time its expiry is judged by). VOLATILE as above.
CREATE OR REPLACE FUNCTION ledger_hold_answer(p_user uuid, p_hold uuid)
RETURNS TABLE (
    user_id uuid, hold_id uuid, currency_code text, amount_micros bigint, status text, description text,
    reference text, captured_micros bigint, capture_transaction_id uuid, request_id text,
    created_at timestamptz, expire_at timestamptz, resolved_at timestamptz, read_at timestamptz
)
LANGUAGE sql VOLATILE AS $$
    SELECT h.user_id, h.hold_id, h.currency_code, h.amount_micros, h.status, h.description, h.reference,
           h.captured_micros, h.capture_transaction_id, h.request_id, h.created_at, h.expire_at, h.resolved_at,
           now()
      FROM ledger_holds h
     WHERE h.user_id = p_user AND h.hold_id = p_hold
$$;

CREATE OR REPLACE FUNCTION ledger_deposit_once(
    p_user uuid, p_amount bigint, p_currency text, p_source text, p_external_reference text,
    p_description text, p_request_id text, p_actor text, p_method text, p_request_hash bytea,
    p_audit_actor text, p_audit_action text, p_audit_request_id text, p_audit_summary jsonb,
    OUT claimed boolean, OUT stored_method text, OUT stored_hash bytea, OUT stored_response bytea,
    OUT transaction_id uuid
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.claimed, c.stored_method, c.stored_hash, c.stored_response
      INTO claimed, stored_method, stored_hash, stored_response
      FROM idempotency_claim(p_user, p_actor, p_request_id, p_method, p_request_hash) c;
    IF claimed THEN
        transaction_id := ledger_deposit(p_user, p_amount, p_currency, p_source, p_external_reference,
                                         p_description, p_request_id, p_actor, p_method, p_request_hash);
        PERFORM audit_append(p_audit_actor, p_user, p_audit_action, 'transaction', transaction_id::text,
                             p_audit_request_id, p_audit_summary);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_opening_balance_once(
    p_user uuid, p_amount bigint, p_currency text, p_description text, p_request_id text,
    p_actor text, p_method text, p_request_hash bytea,
    p_audit_actor text, p_audit_action text, p_audit_request_id text, p_audit_summary jsonb,
    OUT claimed boolean, OUT stored_method text, OUT stored_hash bytea, OUT stored_response bytea,
    OUT transaction_id uuid
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.claimed, c.stored_method, c.stored_hash, c.stored_response
      INTO claimed, stored_method, stored_hash, stored_response
      FROM idempotency_claim(p_user, p_actor, p_request_id, p_method, p_request_hash) c;
    IF claimed THEN
        transaction_id := ledger_opening_balance(p_user, p_amount, p_currency, p_description, p_request_id,
                                                 p_actor, p_method, p_request_hash);
        PERFORM audit_append(p_audit_actor, p_user, p_audit_action, 'transaction', transaction_id::text,
                             p_audit_request_id, p_audit_summary);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_charge_once(
    p_user uuid, p_amount bigint, p_currency text, p_description text, p_reference text,
    p_request_id text, p_actor text, p_method text, p_request_hash bytea,
    p_audit_actor text, p_audit_action text, p_audit_request_id text, p_audit_summary jsonb,
    OUT claimed boolean, OUT stored_method text, OUT stored_hash bytea, OUT stored_response bytea,
    OUT transaction_id uuid
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.claimed, c.stored_method, c.stored_hash, c.stored_response
      INTO claimed, stored_method, stored_hash, stored_response
      FROM idempotency_claim(p_user, p_actor, p_request_id, p_method, p_request_hash) c;
    IF claimed THEN
        transaction_id := ledger_charge(p_user, p_amount, p_currency, p_description, p_reference,
                                        p_request_id, p_actor, p_method, p_request_hash);
        PERFORM audit_append(p_audit_actor, p_user, p_audit_action, 'transaction', transaction_id::text,
                             p_audit_request_id, p_audit_summary);
    END IF;
END;
$$;

-- The key, the claim and the audit event belong to the sender, as does the transaction.
CREATE OR REPLACE FUNCTION ledger_transfer_once(
    p_from uuid, p_to uuid, p_amount bigint, p_currency text, p_description text, p_reference text,
    p_request_id text, p_actor text, p_method text, p_request_hash bytea,
    p_audit_actor text, p_audit_action text, p_audit_request_id text, p_audit_summary jsonb,
    OUT claimed boolean, OUT stored_method text, OUT stored_hash bytea, OUT stored_response bytea,
    OUT transaction_id uuid
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.claimed, c.stored_method, c.stored_hash, c.stored_response
      INTO claimed, stored_method, stored_hash, stored_response
      FROM idempotency_claim(p_from, p_actor, p_request_id, p_method, p_request_hash) c;
    IF claimed THEN
        transaction_id := ledger_transfer(p_from, p_to, p_amount, p_currency, p_description, p_reference,
                                          p_request_id, p_actor, p_method, p_request_hash);
        PERFORM audit_append(p_audit_actor, p_from, p_audit_action, 'transaction', transaction_id::text,
                             p_audit_request_id, p_audit_summary);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_refund_once(
    p_user uuid, p_original uuid, p_amount bigint, p_description text, p_request_id text,
    p_actor text, p_method text, p_request_hash bytea,
    p_audit_actor text, p_audit_action text, p_audit_request_id text, p_audit_summary jsonb,
    OUT claimed boolean, OUT stored_method text, OUT stored_hash bytea, OUT stored_response bytea,
    OUT transaction_id uuid
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.claimed, c.stored_method, c.stored_hash, c.stored_response
      INTO claimed, stored_method, stored_hash, stored_response
      FROM idempotency_claim(p_user, p_actor, p_request_id, p_method, p_request_hash) c;
    IF claimed THEN
        transaction_id := ledger_refund(p_user, p_original, p_amount, p_description, p_request_id,
                                        p_actor, p_method, p_request_hash);
        PERFORM audit_append(p_audit_actor, p_user, p_audit_action, 'transaction', transaction_id::text,
                             p_audit_request_id, p_audit_summary);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_create_hold_once(
    p_user uuid, p_amount bigint, p_currency text, p_ttl_seconds double precision, p_description text,
    p_reference text, p_request_id text, p_actor text, p_method text, p_request_hash bytea,
    p_audit_actor text, p_audit_action text, p_audit_request_id text, p_audit_summary jsonb,
    OUT claimed boolean, OUT stored_method text, OUT stored_hash bytea, OUT stored_response bytea,
    OUT hold_id uuid
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.claimed, c.stored_method, c.stored_hash, c.stored_response
      INTO claimed, stored_method, stored_hash, stored_response
      FROM idempotency_claim(p_user, p_actor, p_request_id, p_method, p_request_hash) c;
    IF claimed THEN
        hold_id := ledger_create_hold(p_user, p_amount, p_currency, p_ttl_seconds, p_description, p_reference,
                                      p_request_id, p_actor, p_method, p_request_hash);
        PERFORM audit_append(p_audit_actor, p_user, p_audit_action, 'hold', hold_id::text,
                             p_audit_request_id, p_audit_summary);
    END IF;
END;
$$;

-- The audit summary names the capture transaction, which only exists here: it is added to the
-- server's summary as transaction_id.
CREATE OR REPLACE FUNCTION ledger_capture_hold_once(
    p_user uuid, p_hold uuid, p_amount bigint, p_description text, p_request_id text,
    p_actor text, p_method text, p_request_hash bytea,
    p_audit_actor text, p_audit_action text, p_audit_request_id text, p_audit_summary jsonb,
    OUT claimed boolean, OUT stored_method text, OUT stored_hash bytea, OUT stored_response bytea,
    OUT transaction_id uuid
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.claimed, c.stored_method, c.stored_hash, c.stored_response
      INTO claimed, stored_method, stored_hash, stored_response
      FROM idempotency_claim(p_user, p_actor, p_request_id, p_method, p_request_hash) c;
    IF claimed THEN
        transaction_id := ledger_capture_hold(p_user, p_hold, p_amount, p_description, p_request_id,
                                              p_actor => p_actor, p_method => p_method,
                                              p_request_hash => p_request_hash);
        PERFORM audit_append(p_audit_actor, p_user, p_audit_action, 'hold', p_hold::text, p_audit_request_id,
                             p_audit_summary || jsonb_build_object('transaction_id', transaction_id::text));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_release_hold_once(
    p_user uuid, p_hold uuid, p_request_id text, p_actor text, p_method text, p_request_hash bytea,
    p_audit_actor text, p_audit_action text, p_audit_request_id text, p_audit_summary jsonb,
    OUT claimed boolean, OUT stored_method text, OUT stored_hash bytea, OUT stored_response bytea
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.claimed, c.stored_method, c.stored_hash, c.stored_response
      INTO claimed, stored_method, stored_hash, stored_response
      FROM idempotency_claim(p_user, p_actor, p_request_id, p_method, p_request_hash) c;
    IF claimed THEN
        PERFORM ledger_release_hold(p_user, p_hold, p_request_id, p_actor, p_method, p_request_hash);
        PERFORM audit_append(p_audit_actor, p_user, p_audit_action, 'hold', p_hold::text, p_audit_request_id,
                             p_audit_summary);
    END IF;
END;
$$;

-- Assigns the positions of a new transaction (why positions: 0012_listing_commit_order.sql). The
-- counters are taken in user_id order, the order in which the ledger locks accounts, so two
-- transactions never wait on each other's counters in a cycle. Runs as the owner: the serving
-- role has no right on ledger_positions.
CREATE OR REPLACE FUNCTION ledger_transactions_position() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    positioned uuid;
    taken bigint;
BEGIN
    FOR positioned IN
        SELECT u FROM unnest(ARRAY[NEW.user_id, NEW.counterparty_user_id]) AS u WHERE u IS NOT NULL ORDER BY u
    LOOP
        INSERT INTO ledger_positions AS p (user_id, last_position) VALUES (positioned, 1)
        ON CONFLICT ON CONSTRAINT ledger_positions_pkey DO UPDATE SET last_position = p.last_position + 1
        RETURNING p.last_position INTO taken;
        IF positioned = NEW.user_id THEN
            NEW.owner_position := taken;
        ELSE
            NEW.counterparty_position := taken;
        END IF;
    END LOOP;
    RETURN NEW;
END;
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION ledger_transactions_position() SET search_path = %I, pg_temp', current_schema());
END;
$$;
REVOKE EXECUTE ON FUNCTION ledger_transactions_position() FROM PUBLIC;
CREATE OR REPLACE TRIGGER ledger_transactions_position BEFORE INSERT ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_transactions_position();
