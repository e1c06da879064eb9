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

-- name: metrics_budget_alerts_after
-- The budget alerts after a cursor (written_xid, alert_id) in the feed's order, at most limit of
-- them, counted by threshold, each row with the last one's key: what the qdata_budget_alerts
-- gauge adds in one round. Bounded: a range scan of budget_alerts_feed_idx after the cursor,
-- at most limit rows. The horizon is ListBudgetAlerts' (queries/budgets.sql), so an alert is
-- counted once its transaction has ended, and never twice.
WITH taken AS (
    SELECT written_xid, alert_id, threshold_percent
      FROM budget_alerts
     WHERE (written_xid, alert_id) > (%(after_xid)s::bigint, %(after_alert_id)s::uuid)
       AND written_xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
     ORDER BY written_xid, alert_id
     LIMIT %(limit)s
), last AS (
    SELECT written_xid, alert_id FROM taken ORDER BY written_xid DESC, alert_id DESC LIMIT 1
)
SELECT t.threshold_percent, count(*) AS alerts, l.written_xid AS last_xid, l.alert_id AS last_alert_id
  FROM taken t CROSS JOIN last l
 GROUP BY t.threshold_percent, l.written_xid, l.alert_id;
