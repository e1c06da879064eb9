-- Read-only share links to a snapshot of a chat session (ChatService CreateShareLink and the
-- shared views, docs/services/chat.md#share-links).
--
-- A link keeps the SHA-256 digest of its token, never the token: tokens are 256 random bits, so a
-- fast digest cannot be reversed and allows the indexed equality lookup the token path needs. The
-- digest is unique across all users (like users' emails): a token names its link without naming
-- its owner, so that lookup cannot be scoped by user_id; every other key carries user_id first.
--
-- The snapshot is two numbers: the newest message shared (the session's last_sequence_number when
-- it was taken) and, for scope 'branch', the leaf that ends the shared branch. The messages
-- themselves are read from chat_messages at read time, so a deleted message (erased in place), a
-- deleted session (ON DELETE CASCADE below) or a deleted user (whose sessions go) vanish from
-- every link at once, without a copy to keep in step.

CREATE TABLE chat_share_links (
    user_id                  uuid        NOT NULL,
    share_link_id            uuid        NOT NULL DEFAULT gen_random_uuid(),
    session_id               uuid        NOT NULL,
    -- SHA-256 of the token.
    token_digest             bytea       NOT NULL,
    -- 'branch': the path from a root to leaf_sequence_number; 'all': every branch.
    scope                    text        NOT NULL,
    snapshot_sequence_number bigint      NOT NULL,
    leaf_sequence_number     bigint      NOT NULL DEFAULT 0,
    snapshot_at              timestamptz NOT NULL DEFAULT now(),
    -- NULL: never expires.
    expire_at                timestamptz,
    revoked_at               timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT chat_share_links_pkey PRIMARY KEY (user_id, share_link_id),
    CONSTRAINT chat_share_links_token_digest_key UNIQUE (token_digest),
    CONSTRAINT chat_share_links_session_fkey FOREIGN KEY (user_id, session_id)
        REFERENCES chat_sessions (user_id, session_id) ON DELETE CASCADE,
    CONSTRAINT chat_share_links_token_digest_length CHECK (octet_length(token_digest) = 32),
    CONSTRAINT chat_share_links_scope_valid CHECK (scope IN ('branch', 'all')),
    CONSTRAINT chat_share_links_snapshot_bounded CHECK (
        snapshot_sequence_number >= 0
        AND leaf_sequence_number BETWEEN 0 AND snapshot_sequence_number
        AND (scope = 'branch' OR leaf_sequence_number = 0))
);
-- ListShareLinks, newest first, for a user or one of their sessions (keyset on created_at, id);
-- the second also serves the cascade from chat_sessions.
CREATE INDEX chat_share_links_user_idx ON chat_share_links (user_id, created_at DESC, share_link_id DESC);
CREATE INDEX chat_share_links_session_idx
    ON chat_share_links (user_id, session_id, created_at DESC, share_link_id DESC);

-- Deletion goes through the cascade only (which runs with the owner's rights).
GRANT SELECT, INSERT, UPDATE ON chat_share_links TO qdata_service;
