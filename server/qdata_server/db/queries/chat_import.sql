-- name: claim_chat_import
-- Claims a source conversation for a user: inserts its chat_imports row naming the session about
-- to be created, or returns nothing when the source was imported before (a concurrent claim of
-- the same source waits here until the first commits or rolls back).
INSERT INTO chat_imports (user_id, source_format, source_id, session_id, digest)
VALUES (%(user_id)s, %(source_format)s, %(source_id)s, %(session_id)s, %(digest)s)
ON CONFLICT ON CONSTRAINT chat_imports_pkey DO NOTHING
RETURNING session_id;

-- name: get_chat_import
-- The earlier import of a source conversation: its session and the digest of what it carried.
SELECT session_id, digest
  FROM chat_imports
 WHERE user_id = %(user_id)s AND source_format = %(source_format)s AND source_id = %(source_id)s;

-- name: insert_imported_chat_session
-- Creates an imported session with its counters already set to the messages inserted with it.
INSERT INTO chat_sessions (user_id, session_id, model_id, title, metadata, current_leaf, last_sequence_number,
                           message_count, total_input_tokens, total_output_tokens, last_activity_at, created_at)
VALUES (%(user_id)s, %(session_id)s, %(model_id)s, %(title)s, %(metadata)s, %(current_leaf)s, %(count)s,
        %(count)s, %(input_tokens)s, %(output_tokens)s, %(last_activity_at)s, %(created_at)s)
RETURNING user_id, session_id, model_id, title, metadata, tags, pinned, archived, current_leaf, last_sequence_number,
          message_count, total_input_tokens, total_output_tokens, last_activity_at, created_at, updated_at;

-- name: insert_imported_chat_messages
-- Inserts a whole imported tree in one statement: one array entry per message, numbered 1, 2, ...
-- in array order, each with its parent's number (0 for a root, always lower), its source time
-- and its place (depth and jump pointer) computed by chat/tree.py.
INSERT INTO chat_messages (user_id, session_id, sequence_number, parent_sequence_number, role, content,
                           model_id, input_tokens, output_tokens, tool_calls, tool_call_id, created_at,
                           depth, jump_sequence_number, jump_depth)
SELECT %(user_id)s, %(session_id)s, m.ord, m.parent, m.role, m.content, m.model_id, 0, 0, '[]'::jsonb,
       m.tool_call_id, m.created_at, m.depth, m.jump_sequence_number, m.jump_depth
  FROM unnest(%(parents)s::bigint[], %(roles)s::text[], %(contents)s::text[], %(model_ids)s::text[],
              %(tool_call_ids)s::text[], %(created_ats)s::timestamptz[], %(depths)s::bigint[],
              %(jump_sequence_numbers)s::bigint[], %(jump_depths)s::bigint[])
       WITH ORDINALITY AS m (parent, role, content, model_id, tool_call_id, created_at, depth,
                             jump_sequence_number, jump_depth, ord);
