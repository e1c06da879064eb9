-- name: insert_chat_share_link
-- Creates a share link whose snapshot is the session as it is now: its newest message and, for
-- scope 'branch', its current leaf. No row if the user has no such session.
INSERT INTO chat_share_links (user_id, session_id, token_digest, scope, snapshot_sequence_number,
                              leaf_sequence_number, expire_at)
SELECT s.user_id, s.session_id, %(token_digest)s, %(scope)s::text, s.last_sequence_number,
       CASE WHEN %(scope)s::text = 'branch' THEN s.current_leaf ELSE 0 END, %(expire_at)s::timestamptz
  FROM chat_sessions s
 WHERE s.user_id = %(user_id)s AND s.session_id = %(session_id)s
RETURNING user_id, share_link_id, session_id, scope, snapshot_sequence_number, leaf_sequence_number, snapshot_at,
          expire_at, revoked_at, created_at, updated_at;

-- name: list_chat_share_links
-- One page of a user's share links (of one session when %(session_id)s is not NULL), newest
-- first, after an optional keyset cursor.
SELECT user_id, share_link_id, session_id, scope, snapshot_sequence_number, leaf_sequence_number, snapshot_at,
       expire_at, revoked_at, created_at, updated_at
  FROM chat_share_links
 WHERE user_id = %(user_id)s
   AND (%(session_id)s::uuid IS NULL OR session_id = %(session_id)s::uuid)
   AND (%(after_created)s::timestamptz IS NULL
        OR (created_at, share_link_id) < (%(after_created)s::timestamptz, %(after_share_link_id)s::uuid))
 ORDER BY created_at DESC, share_link_id DESC
 LIMIT %(limit)s;

-- name: update_chat_share_link
-- Sets a live (not revoked) link's expiry when %(set_expire)s, and moves its snapshot to its
-- session's newest message (and current leaf, for scope 'branch') when %(move_snapshot)s.
UPDATE chat_share_links l
   SET expire_at = CASE WHEN %(set_expire)s THEN %(expire_at)s::timestamptz ELSE l.expire_at END,
       snapshot_sequence_number = CASE WHEN %(move_snapshot)s THEN s.last_sequence_number
                                       ELSE l.snapshot_sequence_number END,
       leaf_sequence_number = CASE WHEN %(move_snapshot)s AND l.scope = 'branch' THEN s.current_leaf
                                   ELSE l.leaf_sequence_number END,
       snapshot_at = CASE WHEN %(move_snapshot)s THEN now() ELSE l.snapshot_at END,
       updated_at = now()
  FROM chat_sessions s
 WHERE l.user_id = %(user_id)s AND l.share_link_id = %(share_link_id)s AND l.revoked_at IS NULL
   AND s.user_id = l.user_id AND s.session_id = l.session_id
RETURNING l.user_id, l.share_link_id, l.session_id, l.scope, l.snapshot_sequence_number, l.leaf_sequence_number,
          l.snapshot_at, l.expire_at, l.revoked_at, l.created_at, l.updated_at;

-- name: revoke_chat_share_link
-- Revokes a link (a revoked one keeps its first revocation time). No row if the user has no such link.
UPDATE chat_share_links
   SET revoked_at = coalesce(revoked_at, now()),
       updated_at = CASE WHEN revoked_at IS NULL THEN now() ELSE updated_at END
 WHERE user_id = %(user_id)s AND share_link_id = %(share_link_id)s
RETURNING user_id, share_link_id, session_id, scope, snapshot_sequence_number, leaf_sequence_number, snapshot_at,
          expire_at, revoked_at, created_at, updated_at;

-- name: name_share_token
-- Names the digest of the share token a transaction of the token path reads with (the
-- *_shared_token policies of db/functions/security.sql), transaction-local.
SELECT set_config('qdata.share_token_digest', %(token_digest_hex)s, true);

-- name: open_shared_chat_link
-- The live link with this token digest (not revoked, not expired) and what it shows of its
-- session; no row otherwise. A lookup of the unique digest index.
SELECT l.user_id, l.session_id, l.scope, l.snapshot_sequence_number, l.leaf_sequence_number, l.snapshot_at,
       l.expire_at, s.title, s.model_id, s.created_at
  FROM chat_share_links l
  JOIN chat_sessions s ON s.user_id = l.user_id AND s.session_id = l.session_id
 WHERE l.token_digest = %(token_digest)s AND l.revoked_at IS NULL AND (l.expire_at IS NULL OR l.expire_at > now());
