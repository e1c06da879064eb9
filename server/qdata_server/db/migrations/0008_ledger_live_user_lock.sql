-- A money movement and a DeleteUser of the same user no longer race.
--
-- ledger_lock_account (0003_ledger.sql) checked that the user is live with a plain read: a
-- deposit that read the user just before a concurrent DeleteUser committed went on to credit the
-- deleted user. Now, once the account row is locked, it also takes a share lock on the user's
-- row and checks its status there. DeleteUser's UPDATE conflicts with that lock, so either the
-- movement commits first (and the user is deleted after it) or it waits for the deletion and
-- then, re-reading the row, rejects the request as USER_NOT_FOUND. The share lock comes after
-- the account lock, which already serializes a user's movements in one currency, so concurrent
-- charges of one user do not pile share locks (MultiXacts) onto the user's row.

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
