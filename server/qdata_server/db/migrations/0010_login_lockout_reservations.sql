-- The lockout counts every password check before it runs, for Authenticate and ChangePassword
-- alike, and counts failures of unknown logins too.
--
-- 1. One mechanism for both RPCs: reserve_password_check (below) counts the attempt in the same
--    statement that refuses a locked account, and the server checks the password only when it
--    returns a reservation. However many guesses arrive at once, at most QDATA_LOCKOUT_THRESHOLD
--    passwords are checked: the reservation that reaches the threshold locks the account at once.
--    A right password then clears the count (finish_login, set_password, clear_failed_logins in
--    queries/users.sql); a wrong one stays counted. ChangePassword used to read the lock, check the
--    password and only then count, so parallel guesses were all checked.
-- 2. A login that names no live user is counted in unknown_login_failures under a keyed digest
--    (users/passwords.py, PasswordHasher.login_digest: HMAC-SHA-256 under QDATA_PASSWORD_PEPPER of
--    the normalized login; the login itself is never stored), by the same rule, so that it
--    answers exactly what a real login answers: INVALID_CREDENTIALS up to the threshold, then
--    LOCKED with the same locked_until. That table has no user_id, hence no row-level security.
-- 3. Failures are forgotten QDATA_LOCKOUT_SECONDS after the last one, for accounts
--    (users.failed_login_at) and unknown logins alike. This is what bounds unknown_login_failures:
--    an older row says nothing that a missing row does not, so each unknown-login attempt deletes
--    a few such rows, and the table holds at most the distinct unknown logins tried in the last
--    QDATA_LOCKOUT_SECONDS (plus the few not yet deleted). Forgetting the same way for accounts
--    keeps the two indistinguishable however long a caller waits between guesses.
--
-- Rolling update: the new column changes what `SELECT * FROM users` returns. A replica of an older
-- build that prepared such a statement fails it with "cached plan must not change result type"
-- until it reconnects; builds whose queries name their columns are not affected.

ALTER TABLE users ADD COLUMN failed_login_at timestamptz;
COMMENT ON COLUMN users.failed_login_at IS
    'When the last password check was counted against failed_login_count (see 0010).';
-- Counts standing now stay counted for one more lockout period instead of being forgotten at once.
UPDATE users SET failed_login_at = now() WHERE failed_login_count > 0;

CREATE TABLE unknown_login_failures (
    -- HMAC-SHA-256 (32 bytes) of the normalized login; see above.
    login_digest bytea       NOT NULL,
    failed_count integer     NOT NULL,
    -- When the last attempt was counted.
    failed_at    timestamptz NOT NULL,
    locked_until timestamptz,
    CONSTRAINT unknown_login_failures_pkey PRIMARY KEY (login_digest),
    CONSTRAINT unknown_login_failures_digest_length CHECK (length(login_digest) = 32),
    CONSTRAINT unknown_login_failures_failed_count_positive CHECK (failed_count > 0)
);
-- Finds the rows whose failures are forgotten, oldest first.
CREATE INDEX unknown_login_failures_failed_at_idx ON unknown_login_failures (failed_at);
GRANT SELECT, INSERT, UPDATE, DELETE ON unknown_login_failures TO qdata_service;

-- The lockout rule, the one place it is written, for accounts and unknown logins alike: the count,
-- time and lock after one more attempt is counted against a (count, failed_at, locked_until) that
-- is not locked now. The count restarts at 1 after an expired lock or once the last counted
-- attempt is p_lock_seconds old; reaching p_threshold locks for p_lock_seconds from now.
CREATE FUNCTION lockout_count_attempt(
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
CREATE FUNCTION reserve_password_check(
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
