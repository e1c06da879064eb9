-- The prepaid-credit ledger: double-entry, immutable transactions and postings, holds.
--
-- Money is bigint micro-units. A user's account caches posted_micros (sum of its postings) and
-- held_micros (sum of its holds in status 'active', swept or not); the CHECKs below make
-- "available = posted - held >= 0" a database invariant. System accounts (payments_received,
-- promotions, revenue, refunds) keep no cached balance at all: their balance is the sum of their
-- postings, so no single hot row serializes charges. Every multi-row change goes through one of
-- the ledger_* functions below, each a single transaction-bound call that locks the user
-- accounts it touches in user_id order.

CREATE TABLE ledger_accounts (
    user_id       uuid        NOT NULL,
    currency_code text        NOT NULL,
    posted_micros bigint      NOT NULL DEFAULT 0,
    held_micros   bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_accounts_pkey PRIMARY KEY (user_id, currency_code),
    CONSTRAINT ledger_accounts_user_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT ledger_accounts_currency_format CHECK (currency_code ~ '^[A-Z]{3}$'),
    CONSTRAINT ledger_accounts_posted_nonnegative CHECK (posted_micros >= 0),
    CONSTRAINT ledger_accounts_posted_limit CHECK (posted_micros <= 1000000000000000000),
    CONSTRAINT ledger_accounts_held_nonnegative CHECK (held_micros >= 0),
    CONSTRAINT ledger_accounts_available_nonnegative CHECK (held_micros <= posted_micros)
);

-- One row per transaction, owned by the user it is about (the sender of a transfer).
CREATE TABLE ledger_transactions (
    user_id                 uuid        NOT NULL,
    transaction_id          uuid        NOT NULL DEFAULT gen_random_uuid(),
    kind                    text        NOT NULL,
    counterparty_user_id    uuid,
    amount_micros           bigint      NOT NULL,
    currency_code           text        NOT NULL,
    description             text        NOT NULL DEFAULT '',
    reference               text        NOT NULL DEFAULT '',
    external_reference      text        NOT NULL DEFAULT '',
    deposit_source          text        NOT NULL DEFAULT '',
    original_transaction_id uuid,
    hold_id                 uuid,
    request_id              text        NOT NULL DEFAULT '',
    created_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_transactions_pkey PRIMARY KEY (user_id, transaction_id),
    CONSTRAINT ledger_transactions_kind_valid CHECK (
        kind IN ('deposit', 'charge', 'refund', 'transfer', 'hold_capture')),
    CONSTRAINT ledger_transactions_amount_positive CHECK (amount_micros > 0),
    CONSTRAINT ledger_transactions_transfer_has_counterparty CHECK (
        (kind = 'transfer') = (counterparty_user_id IS NOT NULL)),
    CONSTRAINT ledger_transactions_refund_has_original CHECK (
        (kind = 'refund') = (original_transaction_id IS NOT NULL)),
    CONSTRAINT ledger_transactions_capture_has_hold CHECK ((kind = 'hold_capture') = (hold_id IS NOT NULL))
);
CREATE INDEX ledger_transactions_id_idx ON ledger_transactions (transaction_id);
CREATE INDEX ledger_transactions_user_time_idx ON ledger_transactions (user_id, created_at DESC, transaction_id DESC);
CREATE INDEX ledger_transactions_counterparty_time_idx
    ON ledger_transactions (counterparty_user_id, created_at DESC, transaction_id DESC)
    WHERE counterparty_user_id IS NOT NULL;
CREATE INDEX ledger_transactions_original_idx
    ON ledger_transactions (user_id, original_transaction_id) WHERE original_transaction_id IS NOT NULL;
-- A payment provider's reference credits at most once, whoever the user (global by nature).
CREATE UNIQUE INDEX ledger_transactions_external_reference_key
    ON ledger_transactions (external_reference) WHERE external_reference <> '';

-- The legs of each transaction; they sum to zero per transaction.
CREATE TABLE ledger_postings (
    user_id         uuid        NOT NULL,
    transaction_id  uuid        NOT NULL,
    leg             smallint    NOT NULL,
    account_user_id uuid,
    system_account  text,
    currency_code   text        NOT NULL,
    amount_micros   bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_postings_pkey PRIMARY KEY (user_id, transaction_id, leg),
    CONSTRAINT ledger_postings_transaction_fkey FOREIGN KEY (user_id, transaction_id)
        REFERENCES ledger_transactions (user_id, transaction_id),
    CONSTRAINT ledger_postings_one_account CHECK ((account_user_id IS NULL) <> (system_account IS NULL)),
    CONSTRAINT ledger_postings_system_account_valid CHECK (
        system_account IN ('payments_received', 'promotions', 'revenue', 'refunds')),
    CONSTRAINT ledger_postings_amount_nonzero CHECK (amount_micros <> 0)
);
CREATE INDEX ledger_postings_account_idx ON ledger_postings (account_user_id, currency_code)
    WHERE account_user_id IS NOT NULL;

CREATE TABLE ledger_holds (
    user_id                uuid        NOT NULL,
    hold_id                uuid        NOT NULL DEFAULT gen_random_uuid(),
    currency_code          text        NOT NULL,
    amount_micros          bigint      NOT NULL,
    status                 text        NOT NULL DEFAULT 'active',
    description            text        NOT NULL DEFAULT '',
    reference              text        NOT NULL DEFAULT '',
    captured_micros        bigint      NOT NULL DEFAULT 0,
    capture_transaction_id uuid,
    request_id             text        NOT NULL DEFAULT '',
    created_at             timestamptz NOT NULL DEFAULT now(),
    expire_at              timestamptz NOT NULL,
    resolved_at            timestamptz,
    CONSTRAINT ledger_holds_pkey PRIMARY KEY (user_id, hold_id),
    CONSTRAINT ledger_holds_account_fkey FOREIGN KEY (user_id, currency_code)
        REFERENCES ledger_accounts (user_id, currency_code),
    CONSTRAINT ledger_holds_amount_positive CHECK (amount_micros > 0),
    CONSTRAINT ledger_holds_status_valid CHECK (status IN ('active', 'captured', 'released', 'expired')),
    CONSTRAINT ledger_holds_captured_within_amount CHECK (captured_micros BETWEEN 0 AND amount_micros),
    CONSTRAINT ledger_holds_capture_consistent CHECK (
        (status = 'captured') = (capture_transaction_id IS NOT NULL)
        AND (status = 'captured' OR captured_micros = 0)),
    CONSTRAINT ledger_holds_resolved_consistent CHECK ((status = 'active') = (resolved_at IS NULL)),
    CONSTRAINT ledger_holds_expiry_after_creation CHECK (expire_at > created_at)
);
CREATE INDEX ledger_holds_active_idx ON ledger_holds (user_id, currency_code) WHERE status = 'active';
CREATE INDEX ledger_holds_expiry_idx ON ledger_holds (expire_at) WHERE status = 'active';

-- Transactions and postings are immutable: corrections are new transactions.
CREATE FUNCTION ledger_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege', CONSTRAINT = 'ledger_append_only';
END;
$$;
CREATE TRIGGER ledger_transactions_immutable BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_postings_immutable BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();

-- Raises a business rejection that the server maps by its constraint name (see db/constraints.py).
CREATE FUNCTION ledger_reject(p_reason text, p_detail text DEFAULT '') RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger rejected the request: %', p_reason
        USING ERRCODE = 'check_violation', CONSTRAINT = p_reason, DETAIL = p_detail;
END;
$$;

-- Locks a user's account in a currency (creating it on first use) and sweeps its expired
-- holds, so that held_micros counts only holds that still reserve money. Requests need a live
-- user (p_live); the sweeper also tidies accounts of deleted users.
CREATE FUNCTION ledger_lock_account(p_user uuid, p_currency text, p_live boolean DEFAULT true)
RETURNS ledger_accounts
LANGUAGE plpgsql AS $$
DECLARE
    account ledger_accounts;
    expired bigint;
BEGIN
    IF p_live THEN
        PERFORM 1 FROM users WHERE user_id = p_user AND status <> 'deleted';
        IF NOT FOUND THEN
            PERFORM ledger_reject('ledger_user_not_found', p_user::text);
        END IF;
    END IF;
    INSERT INTO ledger_accounts (user_id, currency_code) VALUES (p_user, p_currency)
        ON CONFLICT (user_id, currency_code) DO NOTHING;
    SELECT * INTO account FROM ledger_accounts
     WHERE user_id = p_user AND currency_code = p_currency FOR UPDATE;
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
-- account); the callers move the user accounts' cached balances themselves.
CREATE FUNCTION ledger_insert_transaction(
    p_owner uuid, p_kind text, p_amount bigint, p_currency text, p_debit_user uuid, p_debit_system text,
    p_credit_user uuid, p_credit_system text, p_counterparty uuid, p_description text, p_reference text,
    p_external_reference text, p_deposit_source text, p_original uuid, p_hold uuid, p_request_id text
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    new_id uuid;
BEGIN
    INSERT INTO ledger_transactions (user_id, kind, counterparty_user_id, amount_micros, currency_code,
                                     description, reference, external_reference, deposit_source,
                                     original_transaction_id, hold_id, request_id)
    VALUES (p_owner, p_kind, p_counterparty, p_amount, p_currency, p_description, p_reference,
            p_external_reference, p_deposit_source, p_original, p_hold, p_request_id)
    RETURNING transaction_id INTO new_id;
    INSERT INTO ledger_postings (user_id, transaction_id, leg, account_user_id, system_account, currency_code, amount_micros)
    VALUES (p_owner, new_id, 1, p_debit_user, p_debit_system, p_currency, -p_amount),
           (p_owner, new_id, 2, p_credit_user, p_credit_system, p_currency, p_amount);
    RETURN new_id;
END;
$$;

CREATE FUNCTION ledger_credit_account(p_user uuid, p_currency text, p_amount bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ledger_accounts SET posted_micros = posted_micros + p_amount, updated_at = now()
     WHERE user_id = p_user AND currency_code = p_currency AND posted_micros <= 1000000000000000000 - p_amount;
    IF NOT FOUND THEN
        PERFORM ledger_reject('ledger_balance_limit_exceeded', p_user::text);
    END IF;
END;
$$;

CREATE FUNCTION ledger_debit_available(p_account ledger_accounts, p_amount bigint) RETURNS void
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

CREATE FUNCTION ledger_deposit(
    p_user uuid, p_amount bigint, p_currency text, p_source text, p_external_reference text,
    p_description text, p_request_id text
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    earlier uuid;
BEGIN
    IF p_external_reference <> '' THEN
        -- Deposits of one reference queue here, so a later one sees the earlier one committed
        -- (and names it) instead of failing on the unique index with its raw message.
        PERFORM pg_advisory_xact_lock(hashtextextended('ledger_external_reference:' || p_external_reference, 0));
        SELECT transaction_id INTO earlier FROM ledger_transactions WHERE external_reference = p_external_reference;
        IF FOUND THEN
            PERFORM ledger_reject('ledger_transactions_external_reference_key', earlier::text);
        END IF;
    END IF;
    PERFORM ledger_lock_account(p_user, p_currency);
    PERFORM ledger_credit_account(p_user, p_currency, p_amount);
    RETURN ledger_insert_transaction(
        p_user, 'deposit', p_amount, p_currency,
        NULL, CASE p_source WHEN 'promotion' THEN 'promotions' ELSE 'payments_received' END,
        p_user, NULL, NULL, p_description, '', p_external_reference, p_source, NULL, NULL, p_request_id);
END;
$$;

CREATE FUNCTION ledger_charge(
    p_user uuid, p_amount bigint, p_currency text, p_description text, p_reference text, p_request_id text
) RETURNS uuid
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_debit_available(ledger_lock_account(p_user, p_currency), p_amount);
    RETURN ledger_insert_transaction(
        p_user, 'charge', p_amount, p_currency, p_user, NULL, NULL, 'revenue',
        NULL, p_description, p_reference, '', '', NULL, NULL, p_request_id);
END;
$$;

CREATE FUNCTION ledger_transfer(
    p_from uuid, p_to uuid, p_amount bigint, p_currency text, p_description text, p_reference text,
    p_request_id text
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    sender ledger_accounts;
BEGIN
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
        p_to, p_description, p_reference, '', '', NULL, NULL, p_request_id);
END;
$$;

CREATE FUNCTION ledger_refund(
    p_user uuid, p_original uuid, p_amount bigint, p_description text, p_request_id text
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    original ledger_transactions;
    refunded bigint;
BEGIN
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
        NULL, p_description, original.reference, '', '', p_original, NULL, p_request_id);
END;
$$;

CREATE FUNCTION ledger_create_hold(
    p_user uuid, p_amount bigint, p_currency text, p_ttl_seconds double precision, p_description text,
    p_reference text, p_request_id text
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    account ledger_accounts;
    new_id uuid;
BEGIN
    account := ledger_lock_account(p_user, p_currency);
    IF account.posted_micros - account.held_micros < p_amount THEN
        PERFORM ledger_reject('ledger_insufficient_funds', (account.posted_micros - account.held_micros)::text);
    END IF;
    INSERT INTO ledger_holds (user_id, currency_code, amount_micros, description, reference, request_id, expire_at)
    VALUES (p_user, p_currency, p_amount, p_description, p_reference, p_request_id,
            now() + make_interval(secs => p_ttl_seconds))
    RETURNING hold_id INTO new_id;
    UPDATE ledger_accounts SET held_micros = held_micros + p_amount, updated_at = now()
     WHERE user_id = p_user AND currency_code = p_currency;
    RETURN new_id;
END;
$$;

-- Locks an unresolved hold for capture or release (after its account), or rejects with the reason
-- that says why it cannot be resolved any more.
CREATE FUNCTION ledger_lock_active_hold(p_user uuid, p_hold uuid) RETURNS ledger_holds
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

-- p_reference: the capture transaction's reference; empty keeps the hold's own.
CREATE FUNCTION ledger_capture_hold(
    p_user uuid, p_hold uuid, p_amount bigint, p_description text, p_request_id text, p_reference text DEFAULT ''
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    hold ledger_holds;
    new_id uuid;
BEGIN
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
        '', '', NULL, p_hold, p_request_id);
    UPDATE ledger_holds
       SET status = 'captured', captured_micros = p_amount, capture_transaction_id = new_id, resolved_at = now()
     WHERE user_id = p_user AND hold_id = p_hold;
    RETURN new_id;
END;
$$;

CREATE FUNCTION ledger_release_hold(p_user uuid, p_hold uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    hold ledger_holds;
BEGIN
    hold := ledger_lock_active_hold(p_user, p_hold);
    UPDATE ledger_accounts SET held_micros = held_micros - hold.amount_micros, updated_at = now()
     WHERE user_id = p_user AND currency_code = hold.currency_code;
    UPDATE ledger_holds SET status = 'released', resolved_at = now() WHERE user_id = p_user AND hold_id = p_hold;
END;
$$;

-- Marks expired holds of up to p_limit accounts resolved (the background sweeper); accounts
-- locked by a running request are skipped and swept by that request itself.
CREATE FUNCTION ledger_sweep_expired_holds(p_limit integer) RETURNS integer
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
