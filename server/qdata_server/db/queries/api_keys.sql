-- name: api_key_insert
-- Stores a new provider API key (already encrypted); a vanished user fails on user_api_keys_user_fkey.
INSERT INTO user_api_keys (user_id, api_key_id, provider, label, hint, key_version, wrapped_key, key_nonce,
                           ciphertext, nonce)
VALUES (%(user_id)s, %(api_key_id)s, %(provider)s, %(label)s, %(hint)s, %(key_version)s, %(wrapped_key)s,
        %(key_nonce)s, %(ciphertext)s, %(nonce)s)
RETURNING user_id, api_key_id, provider, label, hint, key_version, wrapped_key, key_nonce, ciphertext, nonce,
          created_at, updated_at, last_used_at;

-- name: api_key_list
-- One page of a user's keys, newest first, after an optional (created_at, api_key_id) cursor.
SELECT user_id, api_key_id, provider, label, hint, key_version, created_at, updated_at, last_used_at
  FROM user_api_keys
 WHERE user_id = %(user_id)s
   AND (%(after_created_at)s::timestamptz IS NULL
        OR (created_at, api_key_id) < (%(after_created_at)s::timestamptz, %(after_api_key_id)s::uuid))
 ORDER BY created_at DESC, api_key_id DESC
 LIMIT %(limit)s;

-- name: api_key_touch
-- Marks a key as used (a reveal) and returns it with its encrypted secret.
UPDATE user_api_keys SET last_used_at = now()
 WHERE user_id = %(user_id)s AND api_key_id = %(api_key_id)s
RETURNING user_id, api_key_id, provider, label, hint, key_version, wrapped_key, key_nonce, ciphertext, nonce,
          created_at, updated_at, last_used_at;

-- name: api_key_get_for_update
-- Reads and locks one key.
SELECT user_id, api_key_id, provider, label, hint, key_version, wrapped_key, key_nonce, ciphertext, nonce,
       created_at, updated_at, last_used_at
  FROM user_api_keys WHERE user_id = %(user_id)s AND api_key_id = %(api_key_id)s FOR UPDATE;

-- name: api_key_update
-- Sets the label and/or a re-encrypted secret (set_* flags choose which).
UPDATE user_api_keys
   SET label       = CASE WHEN %(set_label)s THEN %(label)s ELSE label END,
       hint        = CASE WHEN %(set_secret)s THEN %(hint)s ELSE hint END,
       key_version = CASE WHEN %(set_secret)s THEN %(key_version)s ELSE key_version END,
       wrapped_key = CASE WHEN %(set_secret)s THEN %(wrapped_key)s ELSE wrapped_key END,
       key_nonce   = CASE WHEN %(set_secret)s THEN %(key_nonce)s ELSE key_nonce END,
       ciphertext  = CASE WHEN %(set_secret)s THEN %(ciphertext)s ELSE ciphertext END,
       nonce       = CASE WHEN %(set_secret)s THEN %(nonce)s ELSE nonce END,
       updated_at  = now()
 WHERE user_id = %(user_id)s AND api_key_id = %(api_key_id)s
RETURNING user_id, api_key_id, provider, label, hint, key_version, wrapped_key, key_nonce, ciphertext, nonce,
          created_at, updated_at, last_used_at;

-- name: api_key_delete
-- Deletes one key; returns it (no row if it does not exist).
DELETE FROM user_api_keys WHERE user_id = %(user_id)s AND api_key_id = %(api_key_id)s
RETURNING user_id, api_key_id, provider, key_version;

-- name: api_keys_delete_user
-- Deletes all of a user's keys (DeleteUser).
DELETE FROM user_api_keys WHERE user_id = %(user_id)s;

-- name: api_keys_count_by_version
-- Stored keys per KEK version (the start-up check and rewrap-keys progress).
SELECT key_version, count(*) AS keys FROM user_api_keys GROUP BY key_version ORDER BY key_version;

-- name: api_keys_lock_stale_batch
-- Locks up to limit keys not wrapped by the primary KEK, skipping rows live requests hold.
SELECT user_id, api_key_id, key_version, wrapped_key, key_nonce, ciphertext, nonce
  FROM user_api_keys
 WHERE key_version <> %(primary)s
 ORDER BY user_id, api_key_id
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED;

-- name: api_key_set_wrapped_key
-- Stores a re-wrapped data key (the secret's ciphertext and updated_at stay as they are).
UPDATE user_api_keys
   SET key_version = %(key_version)s, wrapped_key = %(wrapped_key)s, key_nonce = %(key_nonce)s
 WHERE user_id = %(user_id)s AND api_key_id = %(api_key_id)s AND key_version = %(old_version)s;

-- name: api_keys_table_present
-- Tells whether migration 0005 has created user_api_keys (the start-up key ring check).
SELECT to_regclass('user_api_keys') IS NOT NULL AS present;
