-- name: share_live_chat_user
-- Reads and share-locks a live user, so a concurrent DeleteUser cannot miss a session created now.
SELECT user_id FROM users WHERE user_id = %(user_id)s AND status <> 'deleted' FOR SHARE;

-- name: insert_chat_session
-- Creates an empty session.
INSERT INTO chat_sessions (user_id, model_id, title, metadata, tags, pinned)
VALUES (%(user_id)s, %(model_id)s, %(title)s, %(metadata)s, %(tags)s, %(pinned)s)
RETURNING user_id, session_id, model_id, title, metadata, tags, pinned, archived, current_leaf, last_sequence_number,
          message_count, total_input_tokens, total_output_tokens, last_activity_at, created_at, updated_at;

-- name: get_chat_session
-- Reads one session of a user.
SELECT user_id, session_id, model_id, title, metadata, tags, pinned, archived, current_leaf, last_sequence_number,
       message_count, total_input_tokens, total_output_tokens, last_activity_at, created_at, updated_at
  FROM chat_sessions WHERE user_id = %(user_id)s AND session_id = %(session_id)s;

-- name: lock_chat_session
-- Reads and locks one session of a user: appends, updates and deletions of its messages queue here.
SELECT user_id, session_id, model_id, title, metadata, tags, pinned, archived, current_leaf, last_sequence_number,
       message_count, total_input_tokens, total_output_tokens, last_activity_at, created_at, updated_at
  FROM chat_sessions WHERE user_id = %(user_id)s AND session_id = %(session_id)s FOR UPDATE;

-- name: list_chat_sessions
-- One page of a user's sessions, most recent activity first, after an optional keyset cursor.
-- tags: the session must carry all of them; pinned and archived: NULL for either.
SELECT user_id, session_id, model_id, title, metadata, tags, pinned, archived, current_leaf, last_sequence_number,
       message_count, total_input_tokens, total_output_tokens, last_activity_at, created_at, updated_at
  FROM chat_sessions
 WHERE user_id = %(user_id)s
   AND tags @> %(tags)s::text[]
   AND (%(pinned)s::boolean IS NULL OR pinned = %(pinned)s::boolean)
   AND (%(archived)s::boolean IS NULL OR archived = %(archived)s::boolean)
   AND (%(after_activity)s::timestamptz IS NULL
        OR (last_activity_at, session_id) < (%(after_activity)s::timestamptz, %(after_session_id)s::uuid))
 ORDER BY last_activity_at DESC, session_id DESC
 LIMIT %(limit)s;

-- name: update_chat_session
-- Writes the updatable fields of a locked session (the caller merged the field mask).
UPDATE chat_sessions
   SET title = %(title)s,
       model_id = %(model_id)s,
       pinned = %(pinned)s,
       archived = %(archived)s,
       tags = %(tags)s,
       metadata = %(metadata)s,
       current_leaf = %(current_leaf)s,
       updated_at = now()
 WHERE user_id = %(user_id)s AND session_id = %(session_id)s
RETURNING user_id, session_id, model_id, title, metadata, tags, pinned, archived, current_leaf, last_sequence_number,
          message_count, total_input_tokens, total_output_tokens, last_activity_at, created_at, updated_at;

-- name: delete_chat_session
-- Deletes a session; its messages go with it (ON DELETE CASCADE).
DELETE FROM chat_sessions WHERE user_id = %(user_id)s AND session_id = %(session_id)s
RETURNING session_id;

-- name: delete_user_chats
-- Removes all of a deleted user's chats, and the ChatService idempotency records whose stored
-- responses repeat their content.
WITH forgotten AS (
    DELETE FROM idempotency_keys
     WHERE user_id = %(user_id)s AND method LIKE '/qdata.v1.ChatService/%%'
)
DELETE FROM chat_sessions WHERE user_id = %(user_id)s;

-- name: get_live_chat_message
-- Reads one live message of a session.
SELECT user_id, session_id, sequence_number, parent_sequence_number, role, content, model_id, input_tokens,
       output_tokens, tool_calls, tool_call_id, created_at, deleted_at
  FROM chat_messages
 WHERE user_id = %(user_id)s AND session_id = %(session_id)s AND sequence_number = %(sequence_number)s
   AND deleted_at IS NULL;

-- name: insert_chat_messages
-- Appends a chain of messages numbered first, first + 1, ...: the first one's parent is
-- %(parent)s, each other one's the message before it. The arrays hold one entry per message.
INSERT INTO chat_messages (user_id, session_id, sequence_number, parent_sequence_number, role, content,
                           model_id, input_tokens, output_tokens, tool_calls, tool_call_id)
SELECT %(user_id)s, %(session_id)s,
       %(first)s + m.ord - 1,
       CASE WHEN m.ord = 1 THEN %(parent)s ELSE %(first)s + m.ord - 2 END,
       m.role, m.content, m.model_id, m.input_tokens, m.output_tokens, m.tool_calls::jsonb, m.tool_call_id
  FROM unnest(%(roles)s::text[], %(contents)s::text[], %(model_ids)s::text[], %(input_tokens)s::bigint[],
              %(output_tokens)s::bigint[], %(tool_calls)s::text[], %(tool_call_ids)s::text[])
       WITH ORDINALITY AS m (role, content, model_id, input_tokens, output_tokens, tool_calls, tool_call_id, ord)
 ORDER BY m.ord
RETURNING user_id, session_id, sequence_number, parent_sequence_number, role, content, model_id, input_tokens,
          output_tokens, tool_calls, tool_call_id, created_at, deleted_at;

-- name: count_chat_append
-- Moves a locked session's counters past an append of %(count)s messages (no counting of rows).
UPDATE chat_sessions
   SET last_sequence_number = last_sequence_number + %(count)s,
       current_leaf = last_sequence_number + %(count)s,
       message_count = message_count + %(count)s,
       total_input_tokens = total_input_tokens + %(input_tokens)s,
       total_output_tokens = total_output_tokens + %(output_tokens)s,
       last_activity_at = now(),
       updated_at = now()
 WHERE user_id = %(user_id)s AND session_id = %(session_id)s
RETURNING user_id, session_id, model_id, title, metadata, tags, pinned, archived, current_leaf, last_sequence_number,
          message_count, total_input_tokens, total_output_tokens, last_activity_at, created_at, updated_at;

-- name: erase_chat_message
-- Deletes one live message: erases its content, tool calls and token counts, keeps its number and
-- parent. Returns the erased share (tokens) and the parent.
WITH old AS (
    SELECT sequence_number, parent_sequence_number, input_tokens, output_tokens
      FROM chat_messages
     WHERE user_id = %(user_id)s AND session_id = %(session_id)s AND sequence_number = %(sequence_number)s
       AND deleted_at IS NULL
       FOR UPDATE
)
UPDATE chat_messages m
   SET content = '', tool_calls = '[]'::jsonb, tool_call_id = '', input_tokens = 0, output_tokens = 0,
       deleted_at = now()
  FROM old
 WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s AND m.sequence_number = old.sequence_number
RETURNING old.parent_sequence_number, old.input_tokens, old.output_tokens;

-- name: nearest_live_chat_ancestor
-- The nearest live message on the path from %(start)s up to its root (%(start)s included); 0 if none.
WITH RECURSIVE up AS (
    SELECT sequence_number, parent_sequence_number, deleted_at
      FROM chat_messages
     WHERE user_id = %(user_id)s AND session_id = %(session_id)s AND sequence_number = %(start)s
    UNION ALL
    SELECT m.sequence_number, m.parent_sequence_number, m.deleted_at
      FROM up
      JOIN chat_messages m
        ON m.user_id = %(user_id)s AND m.session_id = %(session_id)s
       AND m.sequence_number = up.parent_sequence_number
     WHERE up.deleted_at IS NOT NULL
)
SELECT coalesce(max(sequence_number) FILTER (WHERE deleted_at IS NULL), 0) AS sequence_number FROM up;

-- name: count_chat_deletion
-- Takes a deleted message's share off a locked session's counters and sets its current leaf.
UPDATE chat_sessions
   SET message_count = message_count - 1,
       total_input_tokens = total_input_tokens - %(input_tokens)s,
       total_output_tokens = total_output_tokens - %(output_tokens)s,
       current_leaf = %(current_leaf)s,
       updated_at = now()
 WHERE user_id = %(user_id)s AND session_id = %(session_id)s
RETURNING user_id, session_id, model_id, title, metadata, tags, pinned, archived, current_leaf, last_sequence_number,
          message_count, total_input_tokens, total_output_tokens, last_activity_at, created_at, updated_at;

-- name: list_chat_messages_ascending
-- One page of a session's live messages in append order, between exclusive bounds (an index range
-- scan of the primary key).
SELECT user_id, session_id, sequence_number, parent_sequence_number, role, content, model_id, input_tokens,
       output_tokens, tool_calls, tool_call_id, created_at, deleted_at
  FROM chat_messages
 WHERE user_id = %(user_id)s AND session_id = %(session_id)s
   AND sequence_number > %(after)s AND sequence_number < %(before)s
   AND deleted_at IS NULL
 ORDER BY sequence_number
 LIMIT %(limit)s;

-- name: list_chat_messages_descending
-- One page of a session's live messages newest first, between exclusive bounds: "the last N
-- messages" is a backward index scan of the primary key that stops after N rows.
SELECT user_id, session_id, sequence_number, parent_sequence_number, role, content, model_id, input_tokens,
       output_tokens, tool_calls, tool_call_id, created_at, deleted_at
  FROM chat_messages
 WHERE user_id = %(user_id)s AND session_id = %(session_id)s
   AND sequence_number > %(after)s AND sequence_number < %(before)s
   AND deleted_at IS NULL
 ORDER BY sequence_number DESC
 LIMIT %(limit)s;

-- name: list_chat_branch
-- One page of the live messages on the path from %(start)s up to its root, between exclusive
-- bounds, ascending or descending. The walk follows parent numbers down the primary key; it stops
-- below the lower bound and, when descending, as soon as it has counted %(limit)s live messages in
-- range, so "the last N of a branch" costs O(N) whatever the branch's length.
WITH RECURSIVE walk AS (
    SELECT sequence_number, parent_sequence_number, deleted_at,
           (deleted_at IS NULL AND sequence_number > %(after)s AND sequence_number < %(before)s)::int AS counted
      FROM chat_messages
     WHERE user_id = %(user_id)s AND session_id = %(session_id)s AND sequence_number = %(start)s
    UNION ALL
    SELECT m.sequence_number, m.parent_sequence_number, m.deleted_at,
           w.counted + (m.deleted_at IS NULL AND m.sequence_number > %(after)s
                        AND m.sequence_number < %(before)s)::int
      FROM walk w
      JOIN chat_messages m
        ON m.user_id = %(user_id)s AND m.session_id = %(session_id)s
       AND m.sequence_number = w.parent_sequence_number
     WHERE w.parent_sequence_number > %(after)s
       AND (NOT %(descending)s OR w.counted < %(limit)s)
)
SELECT m.user_id, m.session_id, m.sequence_number, m.parent_sequence_number, m.role, m.content, m.model_id, m.input_tokens,
       m.output_tokens, m.tool_calls, m.tool_call_id, m.created_at, m.deleted_at
  FROM walk w
  JOIN chat_messages m
    ON m.user_id = %(user_id)s AND m.session_id = %(session_id)s AND m.sequence_number = w.sequence_number
 WHERE w.deleted_at IS NULL AND w.sequence_number > %(after)s AND w.sequence_number < %(before)s
 ORDER BY CASE WHEN %(descending)s THEN -m.sequence_number ELSE m.sequence_number END
 LIMIT %(limit)s;

-- name: search_chat_messages
-- One page of a user's live messages matching a web-search query, best first (ts_rank_cd, then
-- newest), after an optional keyset cursor, each with its session's title and a snippet whose
-- matches are wrapped in %(start_sel)s ... %(stop_sel)s (those characters are removed from the
-- content first). Only the first 100,000 characters of a message are indexed and excerpted.
WITH q AS (
    SELECT websearch_to_tsquery('english', %(query)s) AS query
), page AS (
    SELECT m.session_id, m.sequence_number, m.role, m.created_at, ts_rank_cd(m.search, q.query) AS score
      FROM chat_messages m, q
     WHERE m.user_id = %(user_id)s
       AND m.search @@ q.query
       AND m.deleted_at IS NULL
       AND (%(session_id)s::uuid IS NULL OR m.session_id = %(session_id)s::uuid)
       AND (cardinality(%(roles)s::text[]) = 0 OR m.role = ANY (%(roles)s::text[]))
       AND (%(after_score)s::float8 IS NULL
            OR (ts_rank_cd(m.search, q.query)::float8, m.created_at, m.session_id, m.sequence_number)
               < (%(after_score)s::float8, %(after_created_at)s::timestamptz, %(after_session_id)s::uuid,
                  %(after_sequence_number)s::bigint))
     ORDER BY score DESC, m.created_at DESC, m.session_id DESC, m.sequence_number DESC
     LIMIT %(limit)s
)
SELECT page.session_id, page.sequence_number, page.role, page.created_at, page.score::float8 AS score,
       s.title AS session_title,
       ts_headline('english', translate(left(m.content, 100000), %(start_sel)s || %(stop_sel)s, ''),
                   q.query, %(headline_options)s) AS snippet
  FROM page
  CROSS JOIN q
  JOIN chat_messages m
    ON m.user_id = %(user_id)s AND m.session_id = page.session_id AND m.sequence_number = page.sequence_number
  JOIN chat_sessions s ON s.user_id = %(user_id)s AND s.session_id = page.session_id
 ORDER BY page.score DESC, page.created_at DESC, page.session_id DESC, page.sequence_number DESC;
