-- Conversations imported from other chat products (ChatService.ImportSession).
--
-- One row per imported source conversation: the user, the source's format and its own
-- conversation id, and the session the import created. The primary key makes the import
-- idempotent by the source's id whatever the request_id: a second upload of the same
-- conversation finds this row (a concurrent one waits for the first to commit, then finds it)
-- and creates nothing. digest is the SHA-256 of the normalized conversation the first upload
-- carried, so a re-upload can say whether its content differs. Deleting the session (or the
-- user's chats) deletes the row, so the conversation can be imported again.
--
-- The foreign key to the session is checked at commit (DEFERRABLE INITIALLY DEFERRED): the
-- import claims its source id first, before it creates the session it names.

CREATE TABLE chat_imports (
    user_id       uuid        NOT NULL,
    source_format text        NOT NULL,
    source_id     text        NOT NULL,
    session_id    uuid        NOT NULL,
    digest        bytea       NOT NULL,
    imported_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT chat_imports_pkey PRIMARY KEY (user_id, source_format, source_id),
    CONSTRAINT chat_imports_session_key UNIQUE (user_id, session_id),
    CONSTRAINT chat_imports_session_fkey FOREIGN KEY (user_id, session_id)
        REFERENCES chat_sessions (user_id, session_id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT chat_imports_format_valid CHECK (source_format IN ('chatgpt', 'librechat', 'open_webui')),
    -- Flat comparisons, not BETWEEN: the text pg_dump writes then parses back to the same tree.
    CONSTRAINT chat_imports_source_id_length CHECK (char_length(source_id) >= 1 AND char_length(source_id) <= 256),
    CONSTRAINT chat_imports_digest_length CHECK (octet_length(digest) = 32)
);

-- Written once by the import, read by later ones; rows leave with their session.
GRANT SELECT, INSERT, DELETE ON chat_imports TO qdata_service;
