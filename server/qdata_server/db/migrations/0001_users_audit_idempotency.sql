-- Accounts, their preferences, the audit trail, idempotency records and server secrets.

-- Users. The row stays after deletion (status 'deleted', personal data erased) so that ledger
-- and audit records keep a pseudonymous user_id to point at.
CREATE TABLE users (
    user_id            uuid        NOT NULL DEFAULT gen_random_uuid(),
    email              text,
    username           text,
    display_name       text        NOT NULL DEFAULT '',
    status             text        NOT NULL DEFAULT 'active',
    -- "bcrypt-hmac-sha256$<bcrypt hash>", or a legacy PBKDF2 hash until the first login.
    password_hash      text,
    failed_login_count integer     NOT NULL DEFAULT 0,
    locked_until       timestamptz,
    last_login_at      timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    CONSTRAINT users_pkey PRIMARY KEY (user_id),
    CONSTRAINT users_status_valid CHECK (status IN ('active', 'disabled', 'deleted')),
    CONSTRAINT users_failed_login_count_nonnegative CHECK (failed_login_count >= 0),
    CONSTRAINT users_email_normalized CHECK (email = lower(email)),
    CONSTRAINT users_username_normalized CHECK (username = lower(username)),
    CONSTRAINT users_live_has_identity CHECK (
        status = 'deleted' OR (email IS NOT NULL AND username IS NOT NULL AND password_hash IS NOT NULL)),
    CONSTRAINT users_deleted_is_erased CHECK (
        status <> 'deleted'
        OR (email IS NULL AND username IS NULL AND password_hash IS NULL AND display_name = ''
            AND deleted_at IS NOT NULL))
);
-- Email and username are unique among live users; erased (NULL) values never collide.
CREATE UNIQUE INDEX users_email_key ON users (email);
CREATE UNIQUE INDEX users_username_key ON users (username);
-- ListUsers walks (created_at, user_id) in order, optionally per status.
CREATE INDEX users_status_created_idx ON users (status, created_at, user_id);
CREATE INDEX users_created_idx ON users (created_at, user_id);

-- Preferences: one row per user that ever changed a default.
CREATE TABLE user_preferences (
    user_id          uuid        NOT NULL,
    default_model_id text        NOT NULL DEFAULT '',
    language         text        NOT NULL DEFAULT '',
    theme            text        NOT NULL DEFAULT '',
    extra            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_preferences_pkey PRIMARY KEY (user_id),
    CONSTRAINT user_preferences_user_fkey FOREIGN KEY (user_id) REFERENCES users (user_id) ON DELETE CASCADE,
    CONSTRAINT user_preferences_theme_valid CHECK (theme IN ('', 'system', 'light', 'dark')),
    CONSTRAINT user_preferences_extra_is_object CHECK (jsonb_typeof(extra) = 'object')
);

-- Idempotency: the first response to each (user, caller, request_id), stored in the same
-- transaction as the change it describes. user_id is the nil UUID for requests that act for no
-- existing user (CreateUser, ImportUsers).
CREATE TABLE idempotency_keys (
    user_id      uuid        NOT NULL,
    actor        text        NOT NULL,
    request_id   text        NOT NULL,
    method       text        NOT NULL,
    -- SHA-256 of the request (without request_id), to tell a replay from a reuse.
    request_hash bytea       NOT NULL,
    -- The serialized response message returned to the first call.
    response     bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (user_id, actor, request_id),
    CONSTRAINT idempotency_keys_request_id_length CHECK (length(request_id) BETWEEN 1 AND 128)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Audit trail: one row per change, written in the change's transaction; append-only.
CREATE TABLE audit_events (
    audit_event_id bigint      GENERATED ALWAYS AS IDENTITY,
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    actor          text        NOT NULL,
    user_id        uuid,
    action         text        NOT NULL,
    target_type    text        NOT NULL,
    target_id      text        NOT NULL,
    request_id     text        NOT NULL,
    summary        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT audit_events_pkey PRIMARY KEY (audit_event_id)
);
CREATE INDEX audit_events_user_idx ON audit_events (user_id, audit_event_id);
CREATE INDEX audit_events_occurred_idx ON audit_events (occurred_at);

CREATE FUNCTION audit_events_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only'
        USING ERRCODE = 'insufficient_privilege', CONSTRAINT = 'audit_events_append_only';
END;
$$;
CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_forbid_change();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_forbid_change();

-- Secrets the server generates for itself and shares between its processes and replicas.
CREATE TABLE server_secrets (
    name       text        NOT NULL,
    secret     bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT server_secrets_pkey PRIMARY KEY (name),
    CONSTRAINT server_secrets_length CHECK (length(secret) >= 32)
);
-- 32 bytes from the server's strong random source (gen_random_uuid) seal page tokens.
INSERT INTO server_secrets (name, secret)
VALUES ('page_token_key', sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')));
