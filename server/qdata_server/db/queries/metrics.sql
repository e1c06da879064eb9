-- name: metrics_usage_fold_lag
-- Seconds since the call time of the oldest usage record waiting to be folded into the rollups (0
-- when none waits). Bounded: it reads at most the first 10,000 queued rows in the heap's order, the
-- order usage_fold takes them in, so a backlog beyond that many rows reports a lower bound. The
-- queue has no index; the folder keeps it short.
SELECT greatest(0, coalesce(extract(epoch FROM now() - min(q.called_at)), 0))::float8 AS lag_seconds
  FROM (SELECT called_at FROM usage_rollup_queue LIMIT 10000) q;

-- name: metrics_active_holds
-- Active holds (unresolved, unexpired) and the micro-units they reserve, by currency. Cheap: a
-- range scan of the partial index ledger_holds_expiry_idx (expire_at, WHERE status = 'active'),
-- which holds only unresolved holds, and the expiry sweep resolves them within a hold's TTL.
SELECT currency_code, count(*) AS holds, sum(amount_micros)::bigint AS held_micros
  FROM ledger_holds
 WHERE status = 'active' AND expire_at > now()
 GROUP BY currency_code;
