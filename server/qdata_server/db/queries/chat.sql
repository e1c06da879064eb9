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

-- name: chat_message_jump_chain
-- A message and the ancestors its jump pointers lead to, up to its root: what placing new children
-- under it needs (chat/tree.py). O(log depth) rows, each a primary-key lookup.
WITH RECURSIVE chain AS (
    SELECT m.sequence_number, m.depth, m.jump_sequence_number, m.jump_depth, m.deleted_at
      FROM chat_messages m
     WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s AND m.sequence_number = %(sequence_number)s
    UNION ALL
    SELECT j.sequence_number, j.depth, j.jump_sequence_number, j.jump_depth, j.deleted_at
      FROM chain c
     CROSS JOIN LATERAL (
            SELECT m.sequence_number, m.depth, m.jump_sequence_number, m.jump_depth, m.deleted_at
              FROM chat_messages m
             WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s
               AND m.sequence_number = c.jump_sequence_number
             LIMIT 1) j
)
SELECT sequence_number, depth, jump_sequence_number, jump_depth, deleted_at FROM chain;

-- name: insert_chat_messages
-- Appends a chain of messages numbered first, first + 1, ...: the first one's parent is
-- %(parent)s, each other one's the message before it. The arrays hold one entry per message,
-- the places (depth and jump pointer) computed by chat/tree.py.
INSERT INTO chat_messages (user_id, session_id, sequence_number, parent_sequence_number, role, content,
                           model_id, input_tokens, output_tokens, tool_calls, tool_call_id,
                           depth, jump_sequence_number, jump_depth)
SELECT %(user_id)s, %(session_id)s,
       %(first)s + m.ord - 1,
       CASE WHEN m.ord = 1 THEN %(parent)s ELSE %(first)s + m.ord - 2 END,
       m.role, m.content, m.model_id, m.input_tokens, m.output_tokens, m.tool_calls::jsonb, m.tool_call_id,
       m.depth, m.jump_sequence_number, m.jump_depth
  FROM unnest(%(roles)s::text[], %(contents)s::text[], %(model_ids)s::text[], %(input_tokens)s::bigint[],
              %(output_tokens)s::bigint[], %(tool_calls)s::text[], %(tool_call_ids)s::text[],
              %(depths)s::bigint[], %(jump_sequence_numbers)s::bigint[], %(jump_depths)s::bigint[])
       WITH ORDINALITY AS m (role, content, model_id, input_tokens, output_tokens, tool_calls, tool_call_id,
                             depth, jump_sequence_number, jump_depth, ord)
 ORDER BY m.ord
RETURNING session_id, sequence_number, parent_sequence_number, role, content, model_id, input_tokens,
          output_tokens, tool_calls, tool_call_id, created_at;

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
-- Each step is a primary-key lookup by its full value (see list_chat_branch_descending).
WITH RECURSIVE up AS (
    SELECT m.sequence_number, m.parent_sequence_number, m.deleted_at
      FROM chat_messages m
     WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s AND m.sequence_number = %(start)s
    UNION ALL
    SELECT p.sequence_number, p.parent_sequence_number, p.deleted_at
      FROM up
     CROSS JOIN LATERAL (
            SELECT m.sequence_number, m.parent_sequence_number, m.deleted_at
              FROM chat_messages m
             WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s
               AND m.sequence_number = up.parent_sequence_number
             LIMIT 1) p
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

-- name: list_chat_branch_descending
-- One page of the live messages on the branch from %(start)s up to its root, numbered between the
-- exclusive bounds %(after)s and %(before)s, newest first, at most %(limit)s. The jump pointers
-- lead from %(start)s to the deepest message on it numbered below %(before)s (no step when
-- %(start)s already is), then the walk follows parents until it has %(limit)s live messages or
-- passes %(after)s. Every step is a LATERAL lookup of the primary key by its full value, which
-- the planner cannot turn into a rescan of the session whatever the table's statistics say, so a
-- page costs O(limit + log depth + deleted messages skipped) lookups, however long the session.
WITH RECURSIVE below AS (
    SELECT m.sequence_number, m.parent_sequence_number, m.jump_sequence_number
      FROM chat_messages m
     WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s AND m.sequence_number = %(start)s
    UNION ALL
    SELECT n.sequence_number, n.parent_sequence_number, n.jump_sequence_number
      FROM below b
     CROSS JOIN LATERAL (
            SELECT m.sequence_number, m.parent_sequence_number, m.jump_sequence_number
              FROM chat_messages m
             WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s
               AND m.sequence_number = CASE WHEN b.jump_sequence_number >= %(before)s THEN b.jump_sequence_number
                                            ELSE b.parent_sequence_number END
             LIMIT 1) n
     WHERE b.sequence_number >= %(before)s
), walk AS (
    SELECT m.session_id, m.sequence_number, m.parent_sequence_number, m.role, m.content, m.model_id,
           m.input_tokens, m.output_tokens, m.tool_calls, m.tool_call_id, m.created_at, m.deleted_at,
           (m.deleted_at IS NULL AND m.sequence_number > %(after)s)::int AS counted
      FROM chat_messages m
     WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s
       AND m.sequence_number = (SELECT b.sequence_number FROM below b WHERE b.sequence_number < %(before)s)
    UNION ALL
    SELECT n.session_id, n.sequence_number, n.parent_sequence_number, n.role, n.content, n.model_id,
           n.input_tokens, n.output_tokens, n.tool_calls, n.tool_call_id, n.created_at, n.deleted_at,
           w.counted + (n.deleted_at IS NULL)::int
      FROM walk w
     CROSS JOIN LATERAL (
            SELECT m.session_id, m.sequence_number, m.parent_sequence_number, m.role, m.content, m.model_id,
                   m.input_tokens, m.output_tokens, m.tool_calls, m.tool_call_id, m.created_at, m.deleted_at
              FROM chat_messages m
             WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s
               AND m.sequence_number = w.parent_sequence_number
             LIMIT 1) n
     WHERE w.parent_sequence_number > %(after)s AND w.counted < %(limit)s
)
SELECT session_id, sequence_number, parent_sequence_number, role, content, model_id, input_tokens, output_tokens,
       tool_calls, tool_call_id, created_at
  FROM walk
 WHERE deleted_at IS NULL AND sequence_number > %(after)s
 ORDER BY sequence_number DESC
 LIMIT %(limit)s;

-- name: list_chat_branch_ascending
-- One window of the branch from %(start)s up to its root, root first: the messages (deleted ones
-- included, with deleted_at) on the next %(limit)s levels below the deepest message numbered at
-- most %(after)s, among those numbered below %(before)s; each row also carries branch_end, the
-- deepest message of the branch numbered below %(before)s, so the caller knows whether more
-- follow. Jump pointers find that end, the window's top (when %(after)s > 0) and its bottom (the
-- ancestor at depth top + %(limit)s), O(log depth) primary-key lookups each; the walk from the
-- bottom up to the top takes %(limit)s more. As in list_chat_branch_descending, every step is a
-- LATERAL lookup of the primary key by its full value, so the cost never depends on the
-- session's length or on the planner's statistics.
WITH RECURSIVE below AS (
    SELECT m.sequence_number, m.parent_sequence_number, m.jump_sequence_number, m.depth, m.jump_depth
      FROM chat_messages m
     WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s AND m.sequence_number = %(start)s
    UNION ALL
    SELECT n.sequence_number, n.parent_sequence_number, n.jump_sequence_number, n.depth, n.jump_depth
      FROM below b
     CROSS JOIN LATERAL (
            SELECT m.sequence_number, m.parent_sequence_number, m.jump_sequence_number, m.depth, m.jump_depth
              FROM chat_messages m
             WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s
               AND m.sequence_number = CASE WHEN b.jump_sequence_number >= %(before)s THEN b.jump_sequence_number
                                            ELSE b.parent_sequence_number END
             LIMIT 1) n
     WHERE b.sequence_number >= %(before)s
), branch_end AS (
    SELECT b.sequence_number, b.parent_sequence_number, b.jump_sequence_number, b.depth, b.jump_depth
      FROM below b
     WHERE b.sequence_number < %(before)s
), above AS (
    SELECT e.sequence_number, e.parent_sequence_number, e.jump_sequence_number, e.depth
      FROM branch_end e
     WHERE %(after)s > 0
    UNION ALL
    SELECT n.sequence_number, n.parent_sequence_number, n.jump_sequence_number, n.depth
      FROM above a
     CROSS JOIN LATERAL (
            SELECT m.sequence_number, m.parent_sequence_number, m.jump_sequence_number, m.depth
              FROM chat_messages m
             WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s
               AND m.sequence_number = CASE WHEN a.jump_sequence_number > %(after)s THEN a.jump_sequence_number
                                            ELSE a.parent_sequence_number END
             LIMIT 1) n
     WHERE a.sequence_number > %(after)s
), top AS (
    -- Depth of the deepest message of the branch numbered at most %(after)s; 0 above the root.
    SELECT coalesce(max(a.depth) FILTER (WHERE a.sequence_number <= %(after)s), 0) AS depth FROM above a
), bottom AS (
    SELECT e.sequence_number, e.parent_sequence_number, e.jump_sequence_number, e.depth, e.jump_depth,
           t.depth + %(limit)s AS target
      FROM branch_end e CROSS JOIN top t
    UNION ALL
    SELECT n.sequence_number, n.parent_sequence_number, n.jump_sequence_number, n.depth, n.jump_depth, d.target
      FROM bottom d
     CROSS JOIN LATERAL (
            SELECT m.sequence_number, m.parent_sequence_number, m.jump_sequence_number, m.depth, m.jump_depth
              FROM chat_messages m
             WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s
               AND m.sequence_number = CASE WHEN d.jump_depth > d.target THEN d.jump_sequence_number
                                            ELSE d.parent_sequence_number END
             LIMIT 1) n
     WHERE d.depth > d.target
), walk AS (
    SELECT m.session_id, m.sequence_number, m.parent_sequence_number, m.role, m.content, m.model_id,
           m.input_tokens, m.output_tokens, m.tool_calls, m.tool_call_id, m.created_at, m.deleted_at, m.depth
      FROM chat_messages m
     WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s
       AND m.sequence_number = (SELECT d.sequence_number FROM bottom d WHERE d.depth <= d.target)
       AND m.depth > (SELECT t.depth FROM top t)
    UNION ALL
    SELECT n.session_id, n.sequence_number, n.parent_sequence_number, n.role, n.content, n.model_id,
           n.input_tokens, n.output_tokens, n.tool_calls, n.tool_call_id, n.created_at, n.deleted_at, n.depth
      FROM walk w
     CROSS JOIN LATERAL (
            SELECT m.session_id, m.sequence_number, m.parent_sequence_number, m.role, m.content, m.model_id,
                   m.input_tokens, m.output_tokens, m.tool_calls, m.tool_call_id, m.created_at, m.deleted_at, m.depth
              FROM chat_messages m
             WHERE m.user_id = %(user_id)s AND m.session_id = %(session_id)s
               AND m.sequence_number = w.parent_sequence_number
             LIMIT 1) n
     WHERE w.depth > (SELECT t.depth FROM top t) + 1
)
SELECT w.session_id, w.sequence_number, w.parent_sequence_number, w.role, w.content, w.model_id, w.input_tokens,
       w.output_tokens, w.tool_calls, w.tool_call_id, w.created_at, w.deleted_at,
       (SELECT e.sequence_number FROM branch_end e) AS branch_end
  FROM walk w
 ORDER BY w.sequence_number;

-- name: search_chat_messages
-- One page of a user's live messages matching a web-search query, best first (ts_rank_cd, then
-- newest), after an optional keyset cursor, each with its session's title and a snippet whose
-- matches are wrapped in %(start_sel)s ... %(stop_sel)s: the whole message when it has at most
-- %(whole_message_length)s characters, else excerpts around the matches. ts_headline's parser
-- reads "<...>" as an HTML tag and leaves it out, so every "<" goes in as %(less_than)s, which it
-- takes for punctuation, and chat/search.py turns it back; the three characters are removed from
-- the content first, so none can be forged. Only the first 100,000 characters of a message are
-- indexed and excerpted.
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
       ts_headline('english',
                   replace(translate(left(m.content, 100000), %(start_sel)s || %(stop_sel)s || %(less_than)s, ''),
                           '<', %(less_than)s),
                   q.query,
                   CASE WHEN char_length(m.content) <= %(whole_message_length)s THEN %(whole_message_options)s
                        ELSE %(headline_options)s END) AS snippet
  FROM page
  CROSS JOIN q
  JOIN chat_messages m
    ON m.user_id = %(user_id)s AND m.session_id = page.session_id AND m.sequence_number = page.sequence_number
  JOIN chat_sessions s ON s.user_id = %(user_id)s AND s.session_id = page.session_id
 ORDER BY page.score DESC, page.created_at DESC, page.session_id DESC, page.sequence_number DESC;
