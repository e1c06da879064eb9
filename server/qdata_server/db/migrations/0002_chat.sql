-- Chat sessions and their messages (ChatService).
--
-- Both tables are owned by a user and carry user_id first in their primary key, so they can be
-- distributed by user. A session row holds the counters AppendMessages and DeleteMessage keep in
-- the same transaction (appending locks the row, so sequence numbers are gapless and O(1) to
-- assign). Messages are never renumbered: a deleted message keeps its row, erased, so its number
-- and its place in the tree stay.

CREATE TABLE chat_sessions (
    user_id              uuid        NOT NULL,
    session_id           uuid        NOT NULL DEFAULT gen_random_uuid(),
    model_id             text        NOT NULL DEFAULT '',
    title                text        NOT NULL DEFAULT '',
    metadata             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- Lower case, without duplicates, sorted (the server normalizes them).
    tags                 text[]      NOT NULL DEFAULT '{}',
    pinned               boolean     NOT NULL DEFAULT false,
    archived             boolean     NOT NULL DEFAULT false,
    -- Where the next append attaches by default; 0 while there is no live message on it.
    current_leaf         bigint      NOT NULL DEFAULT 0,
    -- Highest sequence number given so far (deleted messages included).
    last_sequence_number bigint      NOT NULL DEFAULT 0,
    -- Live messages and their token sums.
    message_count        bigint      NOT NULL DEFAULT 0,
    total_input_tokens   bigint      NOT NULL DEFAULT 0,
    total_output_tokens  bigint      NOT NULL DEFAULT 0,
    last_activity_at     timestamptz NOT NULL DEFAULT now(),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT chat_sessions_pkey PRIMARY KEY (user_id, session_id),
    CONSTRAINT chat_sessions_user_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT chat_sessions_model_id_length CHECK (char_length(model_id) <= 200),
    CONSTRAINT chat_sessions_title_length CHECK (char_length(title) <= 200),
    CONSTRAINT chat_sessions_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT chat_sessions_tags_count CHECK (cardinality(tags) <= 16),
    CONSTRAINT chat_sessions_counters_nonnegative CHECK (
        last_sequence_number >= 0 AND message_count >= 0
        AND total_input_tokens >= 0 AND total_output_tokens >= 0),
    CONSTRAINT chat_sessions_message_count_bounded CHECK (message_count <= last_sequence_number),
    CONSTRAINT chat_sessions_current_leaf_bounded CHECK (current_leaf BETWEEN 0 AND last_sequence_number)
);
-- ListSessions: a user's sessions, most recent activity first, keyset on (last_activity_at, session_id).
CREATE INDEX chat_sessions_activity_idx ON chat_sessions (user_id, last_activity_at DESC, session_id DESC);

CREATE TABLE chat_messages (
    user_id                uuid        NOT NULL,
    session_id             uuid        NOT NULL,
    -- 1, 2, 3, ... in append order within the session, without gaps.
    sequence_number        bigint      NOT NULL,
    -- 0 for a root; always lower than sequence_number, so the messages form a tree.
    parent_sequence_number bigint      NOT NULL,
    role                   text        NOT NULL,
    content                text        NOT NULL DEFAULT '',
    model_id               text        NOT NULL DEFAULT '',
    input_tokens           bigint      NOT NULL DEFAULT 0,
    output_tokens          bigint      NOT NULL DEFAULT 0,
    -- [{"id": ..., "name": ..., "arguments_json": ...}, ...] of an assistant message.
    tool_calls             jsonb       NOT NULL DEFAULT '[]'::jsonb,
    tool_call_id           text        NOT NULL DEFAULT '',
    created_at             timestamptz NOT NULL DEFAULT now(),
    -- Set when the message is deleted; its content, tool calls and token counts are erased then.
    deleted_at             timestamptz,
    -- Full-text search over the first 100,000 characters (a tsvector holds at most 1 MB).
    search                 tsvector    GENERATED ALWAYS AS (
                               to_tsvector('english'::regconfig, left(content, 100000))) STORED,
    CONSTRAINT chat_messages_pkey PRIMARY KEY (user_id, session_id, sequence_number),
    CONSTRAINT chat_messages_session_fkey FOREIGN KEY (user_id, session_id)
        REFERENCES chat_sessions (user_id, session_id) ON DELETE CASCADE,
    CONSTRAINT chat_messages_sequence_positive CHECK (sequence_number > 0),
    CONSTRAINT chat_messages_parent_before_child CHECK (
        parent_sequence_number >= 0 AND parent_sequence_number < sequence_number),
    CONSTRAINT chat_messages_role_valid CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    CONSTRAINT chat_messages_tokens_bounded CHECK (
        input_tokens BETWEEN 0 AND 1000000000 AND output_tokens BETWEEN 0 AND 1000000000),
    CONSTRAINT chat_messages_tool_calls_is_array CHECK (jsonb_typeof(tool_calls) = 'array'),
    CONSTRAINT chat_messages_model_id_length CHECK (char_length(model_id) <= 200),
    CONSTRAINT chat_messages_tool_call_id_length CHECK (char_length(tool_call_id) <= 128),
    CONSTRAINT chat_messages_deleted_is_erased CHECK (
        deleted_at IS NULL
        OR (content = '' AND tool_calls = '[]'::jsonb AND tool_call_id = ''
            AND input_tokens = 0 AND output_tokens = 0))
);
-- The primary key serves "the last N messages" (a backward index scan) and keyset pages both
-- ways; the GIN index serves SearchMessages.
CREATE INDEX chat_messages_search_idx ON chat_messages USING gin (search);
