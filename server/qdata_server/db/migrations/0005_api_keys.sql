-- Provider API keys (the UserService vault), stored with envelope encryption (users/vault.py):
-- the secret is AES-256-GCM encrypted under a per-secret data key, and the data key is wrapped by
-- the key-encryption key version named in key_version. The plaintext is never stored.
CREATE TABLE user_api_keys (
    user_id      uuid        NOT NULL,
    api_key_id   uuid        NOT NULL,
    provider     text        NOT NULL,
    label        text        NOT NULL DEFAULT '',
    -- The last 4 characters of the secret, for recognizing it.
    hint         text        NOT NULL,
    -- Version of the key-encryption key (KEK) that wraps data_key.
    key_version  integer     NOT NULL,
    -- The data key encrypted by the KEK (32 bytes + 16-byte GCM tag), and that encryption's nonce.
    wrapped_key  bytea       NOT NULL,
    key_nonce    bytea       NOT NULL,
    -- The secret encrypted by the data key (with its GCM tag), and that encryption's nonce.
    ciphertext   bytea       NOT NULL,
    nonce        bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    CONSTRAINT user_api_keys_pkey PRIMARY KEY (user_id, api_key_id),
    CONSTRAINT user_api_keys_user_fkey FOREIGN KEY (user_id) REFERENCES users (user_id) ON DELETE CASCADE,
    CONSTRAINT user_api_keys_provider_valid CHECK (provider ~ '^[a-z0-9_.-]{1,64}$'),
    CONSTRAINT user_api_keys_label_length CHECK (char_length(label) <= 100),
    CONSTRAINT user_api_keys_hint_length CHECK (char_length(hint) BETWEEN 1 AND 4),
    CONSTRAINT user_api_keys_key_version_positive CHECK (key_version > 0),
    CONSTRAINT user_api_keys_wrapped_key_length CHECK (octet_length(wrapped_key) = 48),
    CONSTRAINT user_api_keys_nonce_lengths CHECK (octet_length(key_nonce) = 12 AND octet_length(nonce) = 12),
    CONSTRAINT user_api_keys_ciphertext_length CHECK (octet_length(ciphertext) > 16)
);
-- ListApiKeys walks a user's keys newest first.
CREATE INDEX user_api_keys_user_created_idx ON user_api_keys (user_id, created_at DESC, api_key_id DESC);
-- The start-up check and rewrap-keys look rows up by KEK version.
CREATE INDEX user_api_keys_key_version_idx ON user_api_keys (key_version);
