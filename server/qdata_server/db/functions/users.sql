-- Current source: UserService's functions (tables: migrations 0001, 0005, 0010).
--
-- The login lockout (why it is built this way: 0010_login_lockout_reservations.sql): every
-- password check, for Authenticate and ChangePassword alike, is counted before it runs, in the
-- statement that refuses a locked account, and failures of logins that name no live user are
-- counted too, in unknown_login_failures under a keyed digest, by the same rule.

-- The lockout rule, the one place it is written, for accounts and unknown logins alike: the count,
-- time and lock after one more attempt is counted against a (count, failed_at, locked_until) that
-- is not locked now. The count restarts at 1 after an expired lock or once the last counted
-- attempt is p_lock_seconds old; reaching p_threshold locks for p_lock_seconds from now.
CREATE OR REPLACE FUNCTION lockout_count_attempt(
    p_count integer, p_failed_at timestamptz, p_locked_until timestamptz, p_threshold integer,
    p_lock_seconds integer, OUT failed_count integer, OUT failed_at timestamptz, OUT locked_until timestamptz
)
LANGUAGE sql STABLE AS $$
    SELECT c.n, now(), CASE WHEN c.n >= p_threshold THEN now() + make_interval(secs => p_lock_seconds) END
      FROM (SELECT CASE WHEN p_locked_until IS NOT NULL
                          OR p_failed_at IS NULL
                          OR p_failed_at <= now() - make_interval(secs => p_lock_seconds)
                        THEN 1 ELSE p_count + 1 END AS n) AS c
$$;

-- Counts one password check before it runs: against the live user p_user, or the live user whose
-- email or username is p_login, or, when no live user has that login and p_login_digest is given,
-- against that unknown login. Returns one row: checked true with the user's id, status and
-- password hash (all NULL for an unknown login) when the check may run; checked false with
-- locked_until when the account or login is locked; no row for a user id that names no live user.
-- Each statement below sees the latest committed rows (READ COMMITTED), and the counting UPDATEs
-- wait for a concurrent attempt on the same row and then re-check its lock, so parallel attempts
-- are counted one after the other.
CREATE OR REPLACE FUNCTION reserve_password_check(
    p_user uuid, p_login text, p_login_digest bytea, p_threshold integer, p_lock_seconds integer
)
RETURNS TABLE (
    user_id uuid, status text, password_hash text, failed_count integer, locked_until timestamptz, checked boolean
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    -- A lock that ends between two of these statements makes them disagree; count again then.
    FOR turn IN 1..3 LOOP
        UPDATE users u
           SET (failed_login_count, failed_login_at, locked_until) = (
                   SELECT n.failed_count, n.failed_at, n.locked_until
                     FROM lockout_count_attempt(u.failed_login_count, u.failed_login_at, u.locked_until,
                                                p_threshold, p_lock_seconds) AS n)
         WHERE (u.user_id = p_user OR u.email = p_login OR u.username = p_login)
           AND u.status <> 'deleted'
           AND (u.locked_until IS NULL OR u.locked_until <= now())
        RETURNING u.user_id, u.status, u.password_hash, u.failed_login_count, u.locked_until
             INTO user_id, status, password_hash, failed_count, locked_until;
        IF FOUND THEN
            checked := true;
            RETURN NEXT;
            RETURN;
        END IF;
        SELECT u.user_id, u.status, u.failed_login_count, u.locked_until
          INTO user_id, status, failed_count, locked_until
          FROM users u
         WHERE (u.user_id = p_user OR u.email = p_login OR u.username = p_login) AND u.status <> 'deleted';
        IF FOUND THEN
            IF locked_until > now() THEN
                checked := false;
                RETURN NEXT;
                RETURN;
            END IF;
            CONTINUE;
        END IF;
        IF p_login_digest IS NULL THEN
            RETURN;
        END IF;

        -- Forgotten failures (see the header): a few go with every unknown-login attempt.
        DELETE FROM unknown_login_failures f
         WHERE f.login_digest IN (
                SELECT d.login_digest
                  FROM unknown_login_failures d
                 WHERE d.failed_at <= now() - make_interval(secs => p_lock_seconds)
                   AND (d.locked_until IS NULL OR d.locked_until <= now())
                 ORDER BY d.failed_at
                 LIMIT 8
                   FOR UPDATE SKIP LOCKED);
        INSERT INTO unknown_login_failures AS f (login_digest, failed_count, failed_at, locked_until)
        SELECT p_login_digest, n.failed_count, n.failed_at, n.locked_until
          FROM lockout_count_attempt(0, NULL, NULL, p_threshold, p_lock_seconds) AS n
            ON CONFLICT ON CONSTRAINT unknown_login_failures_pkey DO UPDATE
           SET (failed_count, failed_at, locked_until) = (
                   SELECT n.failed_count, n.failed_at, n.locked_until
                     FROM lockout_count_attempt(f.failed_count, f.failed_at, f.locked_until,
                                                p_threshold, p_lock_seconds) AS n)
         WHERE f.locked_until IS NULL OR f.locked_until <= now()
        RETURNING f.failed_count, f.locked_until INTO failed_count, locked_until;
        IF FOUND THEN
            checked := true;
            RETURN NEXT;
            RETURN;
        END IF;
        SELECT f.failed_count, f.locked_until INTO failed_count, locked_until
          FROM unknown_login_failures f
         WHERE f.login_digest = p_login_digest AND f.locked_until > now();
        IF FOUND THEN
            checked := false;
            RETURN NEXT;
            RETURN;
        END IF;
    END LOOP;
    -- Still disagreeing: let the transaction be retried as a whole (db/transactions.py).
    RAISE EXCEPTION 'the lockout state kept changing under this attempt' USING ERRCODE = 'serialization_failure';
END;
$$;
