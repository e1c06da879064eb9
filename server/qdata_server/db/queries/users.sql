-- name: insert_user
-- Creates a user; a taken email or username fails on users_email_key / users_username_key.
INSERT INTO users (user_id, email, username, display_name, status, password_hash)
VALUES (%(user_id)s, %(email)s, %(username)s, %(display_name)s, %(status)s, %(password_hash)s)
RETURNING user_id, email, username, display_name, status, password_hash, failed_login_count, locked_until,
          last_login_at, created_at, updated_at, deleted_at;

-- name: insert_user_if_free
-- Creates a user unless the email or username is taken; returns no row when taken.
-- A NULL user_id draws a new id; the importer passes the id it derived from the old key.
INSERT INTO users (user_id, email, username, display_name, status, password_hash)
VALUES (coalesce(%(user_id)s::uuid, gen_random_uuid()), %(email)s, %(username)s, %(display_name)s, %(status)s,
        %(password_hash)s)
ON CONFLICT DO NOTHING
RETURNING user_id, email, username, display_name, status, password_hash, failed_login_count, locked_until,
          last_login_at, created_at, updated_at, deleted_at;

-- name: find_taken_identity
-- Tells which of an email and a username belong to a live user (for a precise error).
SELECT bool_or(email = %(email)s) AS email_taken, bool_or(username = %(username)s) AS username_taken
  FROM users
 WHERE email = %(email)s OR username = %(username)s;

-- name: get_user_by_id
-- Reads a live user by id.
SELECT user_id, email, username, display_name, status, password_hash, failed_login_count, locked_until,
       last_login_at, created_at, updated_at, deleted_at
  FROM users WHERE user_id = %(user_id)s AND status <> 'deleted';

-- name: get_user_by_id_for_update
-- Reads and locks a live user by id.
SELECT user_id, email, username, display_name, status, password_hash, failed_login_count, locked_until,
       last_login_at, created_at, updated_at, deleted_at
  FROM users WHERE user_id = %(user_id)s AND status <> 'deleted' FOR UPDATE;

-- name: get_user_by_email
-- Reads a live user by normalized email.
SELECT user_id, email, username, display_name, status, password_hash, failed_login_count, locked_until,
       last_login_at, created_at, updated_at, deleted_at
  FROM users WHERE email = %(email)s;

-- name: get_user_by_username
-- Reads a live user by lower-case username.
SELECT user_id, email, username, display_name, status, password_hash, failed_login_count, locked_until,
       last_login_at, created_at, updated_at, deleted_at
  FROM users WHERE username = %(username)s;

-- name: list_users
-- One page of users in (created_at, user_id) order after an optional keyset cursor; status NULL
-- lists the live statuses.
SELECT user_id, email, username, display_name, status, password_hash, failed_login_count, locked_until,
       last_login_at, created_at, updated_at, deleted_at
  FROM users
 WHERE (CASE WHEN %(status)s::text IS NULL THEN status <> 'deleted' ELSE status = %(status)s::text END)
   AND (%(after_created_at)s::timestamptz IS NULL
        OR (created_at, user_id) > (%(after_created_at)s::timestamptz, %(after_user_id)s::uuid))
 ORDER BY created_at, user_id
 LIMIT %(limit)s;

-- name: update_user
-- Sets the fields whose set_* flag is true (the field-mask whitelist) on a live user.
UPDATE users
   SET display_name = CASE WHEN %(set_display_name)s THEN %(display_name)s ELSE display_name END,
       email        = CASE WHEN %(set_email)s THEN %(email)s ELSE email END,
       username     = CASE WHEN %(set_username)s THEN %(username)s ELSE username END,
       status       = CASE WHEN %(set_status)s THEN %(status)s ELSE status END,
       updated_at   = now()
 WHERE user_id = %(user_id)s AND status <> 'deleted'
RETURNING user_id, email, username, display_name, status, password_hash, failed_login_count, locked_until,
          last_login_at, created_at, updated_at, deleted_at;

-- name: erase_user
-- Deletes a user: erases personal data and the password, keeps the pseudonymous row.
UPDATE users
   SET email = NULL, username = NULL, display_name = '', password_hash = NULL, status = 'deleted',
       failed_login_count = 0, locked_until = NULL, deleted_at = now(), updated_at = now()
 WHERE user_id = %(user_id)s AND status <> 'deleted'
RETURNING user_id, email, username, display_name, status, password_hash, failed_login_count, locked_until,
          last_login_at, created_at, updated_at, deleted_at;

-- name: delete_preferences
-- Removes a user's preferences (personal settings) on deletion.
DELETE FROM user_preferences WHERE user_id = %(user_id)s;

-- name: reserve_password_check
-- Counts a password check before it runs, against a user id (ChangePassword) or a login
-- (Authenticate; an unknown login is counted under its digest), and refuses a locked one; see
-- 0010_login_lockout_reservations.sql. checked says whether the password may be checked.
SELECT user_id, status, password_hash, failed_count, locked_until, checked
  FROM reserve_password_check(%(user_id)s, %(login)s, %(login_digest)s, %(threshold)s, %(lock_seconds)s);

-- name: clear_failed_logins
-- A right password is no failure, also when it does not log in (a disabled account) or its change
-- fails afterwards: clears the count and the lock its reservation may have set.
UPDATE users SET failed_login_count = 0, failed_login_at = NULL, locked_until = NULL
 WHERE user_id = %(user_id)s AND status <> 'deleted'
RETURNING user_id;

-- name: finish_login
-- Records a successful login: resets the failure count and lock, stamps the time and replaces
-- the hash with an upgraded one unless the password changed meanwhile.
UPDATE users
   SET failed_login_count = 0,
       locked_until = NULL,
       last_login_at = now(),
       password_hash = CASE WHEN %(new_hash)s::text IS NOT NULL AND password_hash = %(old_hash)s
                            THEN %(new_hash)s::text ELSE password_hash END
 WHERE user_id = %(user_id)s AND status <> 'deleted'
RETURNING user_id, email, username, display_name, status, password_hash, failed_login_count, locked_until,
          last_login_at, created_at, updated_at, deleted_at;

-- name: set_password
-- Replaces the password hash if it is still the one that was verified.
UPDATE users
   SET password_hash = %(new_hash)s, failed_login_count = 0, locked_until = NULL, updated_at = now()
 WHERE user_id = %(user_id)s AND status <> 'deleted' AND password_hash = %(old_hash)s
RETURNING user_id, email, username, display_name, status, password_hash, failed_login_count, locked_until,
          last_login_at, created_at, updated_at, deleted_at;

-- name: get_preferences
-- Reads a user's preferences row (none until first set).
SELECT user_id, default_model_id, language, theme, extra, updated_at FROM user_preferences WHERE user_id = %(user_id)s;

-- name: upsert_preferences
-- Writes a user's whole preferences row.
INSERT INTO user_preferences (user_id, default_model_id, language, theme, extra, updated_at)
VALUES (%(user_id)s, %(default_model_id)s, %(language)s, %(theme)s, %(extra)s, now())
ON CONFLICT (user_id) DO UPDATE
   SET default_model_id = EXCLUDED.default_model_id,
       language = EXCLUDED.language,
       theme = EXCLUDED.theme,
       extra = EXCLUDED.extra,
       updated_at = EXCLUDED.updated_at
RETURNING user_id, default_model_id, language, theme, extra, updated_at;

-- name: count_users
-- Counts all user rows (seeding only loads sample data into an empty database).
SELECT count(*) AS n FROM users;
