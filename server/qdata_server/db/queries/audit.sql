-- name: audit_chain_heads
-- Reads every audit chain's newest position and hash (migration 0006).
SELECT chain_shard, last_seq, last_hash FROM audit_chain_heads ORDER BY chain_shard;

-- name: audit_chain_heads_read
-- Reads every audit chain's newest position and hash as the serving role (audit_chain_heads_read
-- in functions/audit.sql), for the scheduled verification.
SELECT chain_shard, last_seq, last_hash FROM audit_chain_heads_read();

-- name: audit_chain_batch
-- Reads the next batch of one chain's sealed events up to its head, in chain order, for verification.
SELECT audit_event_id, chain_shard, chain_seq, occurred_at, actor, user_id, action, target_type, target_id,
       request_id, summary::text AS summary_text, prev_hash, hash
  FROM audit_events
 WHERE chain_shard = %(shard)s AND chain_seq > %(after_seq)s AND chain_seq <= %(upto_seq)s
 ORDER BY chain_seq
 LIMIT %(limit)s;

-- name: list_audit_events
-- Lists audit events newest first by (written_xid, audit_event_id), only those below the
-- reader's snapshot horizon (see 0012_listing_commit_order.sql: an event that appears later sorts
-- above every event listed now), optionally filtered by user, actor, action and
-- [start_time, end_time), after a keyset cursor (the last event's written_xid and id).
SELECT audit_event_id, occurred_at, actor, user_id, action, target_type, target_id, request_id,
       summary::text AS summary_text, coalesce(written_xid, 0) AS written_order
  FROM audit_events
 WHERE coalesce(written_xid, 0) < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
   AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
   AND (%(actor)s::text IS NULL OR actor = %(actor)s::text)
   AND (%(action)s::text IS NULL OR action = %(action)s::text)
   AND (%(start_time)s::timestamptz IS NULL OR occurred_at >= %(start_time)s::timestamptz)
   AND (%(end_time)s::timestamptz IS NULL OR occurred_at < %(end_time)s::timestamptz)
   AND (%(before_order)s::bigint IS NULL
        OR (coalesce(written_xid, 0), audit_event_id) < (%(before_order)s::bigint, %(before_id)s::bigint))
 ORDER BY coalesce(written_xid, 0) DESC, audit_event_id DESC
 LIMIT %(limit)s;

-- name: audit_seal
-- Chains up to limit unsealed audit events after their transactions ended (audit_seal in
-- functions/audit.sql); sealed is 0 when another sealer is at work.
SELECT audit_seal(%(limit)s) AS sealed;

-- name: audit_unsealed
-- Counts the audit events not chained yet, and names the oldest (its id and age in seconds).
SELECT count(*) AS unsealed,
       (array_agg(audit_event_id ORDER BY occurred_at, audit_event_id))[1] AS oldest_id,
       extract(epoch FROM clock_timestamp() - min(occurred_at))::float8 AS oldest_age_seconds
  FROM audit_events
 WHERE chain_seq IS NULL;
