-- name: audit_chain_heads
-- Reads every audit chain's newest position and hash (migration 0006).
SELECT chain_shard, last_seq, last_hash FROM audit_chain_heads ORDER BY chain_shard;

-- name: audit_chain_batch
-- Reads the next batch of one chain's events up to its head, in chain order, for verification.
SELECT audit_event_id, chain_shard, chain_seq, occurred_at, actor, user_id, action, target_type, target_id,
       request_id, summary::text AS summary_text, prev_hash, hash
  FROM audit_events
 WHERE chain_shard = %(shard)s AND chain_seq > %(after_seq)s AND chain_seq <= %(upto_seq)s
 ORDER BY chain_seq
 LIMIT %(limit)s;

-- name: list_audit_events
-- Lists audit events newest first (by id, the order of insertion), optionally filtered by user,
-- actor, action and [start_time, end_time), after a keyset cursor (the last id returned).
SELECT audit_event_id, occurred_at, actor, user_id, action, target_type, target_id, request_id,
       summary::text AS summary_text
  FROM audit_events
 WHERE (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
   AND (%(actor)s::text IS NULL OR actor = %(actor)s::text)
   AND (%(action)s::text IS NULL OR action = %(action)s::text)
   AND (%(start_time)s::timestamptz IS NULL OR occurred_at >= %(start_time)s::timestamptz)
   AND (%(end_time)s::timestamptz IS NULL OR occurred_at < %(end_time)s::timestamptz)
   AND (%(before_id)s::bigint IS NULL OR audit_event_id < %(before_id)s::bigint)
 ORDER BY audit_event_id DESC
 LIMIT %(limit)s;
