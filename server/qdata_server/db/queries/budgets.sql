-- name: time_zone_names
-- Every time zone name PostgreSQL knows (its tz database). Slow (about 70 ms: the view reads every
-- zone file), so the server reads it once per process (budgets/time_zones.py).
SELECT name FROM pg_timezone_names;

-- name: budget_create_once
-- Claims the key, creates a budget with the spend already made in its current period and audits
-- it (budget_create_once in functions/budgets.sql); answers the claim and the new budget with its
-- current period in the same round trip.
SELECT o.claimed, o.stored_method, o.stored_hash, o.stored_response,
       a.user_id, a.budget_id, a.display_name, a.currency_code, a.limit_micros, a.period, a.time_zone,
       a.model_id, a.caller, a.enforcement, a.alert_thresholds_percent, a.created_at, a.updated_at,
       a.period_start, a.period_end, a.spent_micros, a.held_micros
  FROM budget_create_once(%(user_id)s, %(display_name)s, %(currency_code)s, %(limit_micros)s, %(period)s,
                          %(time_zone)s, %(model_id)s, %(caller)s, %(enforcement)s, %(thresholds)s::integer[],
                          %(max_budgets)s, %(request_id)s, %(actor)s, %(method)s, %(request_hash)s,
                          %(audit_actor)s, %(audit_action)s, %(audit_request_id)s, %(audit_summary)s::jsonb) o
  LEFT JOIN LATERAL budget_answer(%(user_id)s, o.budget_id) a ON o.claimed;

-- name: budget_update_once
-- Claims the key, changes the fields the mask names and audits it (budget_update_once); answers
-- the claim and the budget as changed, with its current period, in the same round trip.
SELECT o.claimed, o.stored_method, o.stored_hash, o.stored_response,
       a.user_id, a.budget_id, a.display_name, a.currency_code, a.limit_micros, a.period, a.time_zone,
       a.model_id, a.caller, a.enforcement, a.alert_thresholds_percent, a.created_at, a.updated_at,
       a.period_start, a.period_end, a.spent_micros, a.held_micros
  FROM budget_update_once(%(user_id)s, %(budget_id)s, %(set_display_name)s, %(display_name)s,
                          %(set_limit_micros)s, %(limit_micros)s, %(set_enforcement)s, %(enforcement)s,
                          %(set_alert_thresholds_percent)s, %(thresholds)s::integer[],
                          %(request_id)s, %(actor)s, %(method)s, %(request_hash)s,
                          %(audit_actor)s, %(audit_action)s, %(audit_request_id)s, %(audit_summary)s::jsonb) o
  LEFT JOIN LATERAL budget_answer(%(user_id)s, o.budget_id) a ON o.claimed;

-- name: budget_delete_once
-- Claims the key, deletes a budget and audits it (budget_delete_once); answers the claim.
SELECT o.claimed, o.stored_method, o.stored_hash, o.stored_response
  FROM budget_delete_once(%(user_id)s, %(budget_id)s, %(request_id)s, %(actor)s, %(method)s, %(request_hash)s,
                          %(audit_actor)s, %(audit_action)s, %(audit_request_id)s, %(audit_summary)s::jsonb) o;

-- name: get_budget
-- One budget of a user with its consumption in the current period; no row if the user has none
-- with that id.
SELECT user_id, budget_id, display_name, currency_code, limit_micros, period, time_zone, model_id, caller,
       enforcement, alert_thresholds_percent, created_at, updated_at, period_start, period_end, spent_micros,
       held_micros
  FROM budget_answer(%(user_id)s, %(budget_id)s);

-- name: list_budgets
-- One page of a user's budgets, oldest first (budgets_user_created_idx), after an optional keyset
-- cursor, each with its consumption in the current period.
SELECT b.user_id, b.budget_id, b.display_name, b.currency_code, b.limit_micros, b.period, b.time_zone,
       b.model_id, b.caller, b.enforcement, b.alert_thresholds_percent, b.created_at, b.updated_at,
       nullif(u.period_start, '-infinity'::timestamptz) AS period_start, u.period_end, u.spent_micros,
       u.held_micros
  FROM (SELECT user_id, budget_id, display_name, currency_code, limit_micros, period, time_zone, model_id, caller,
               enforcement, alert_thresholds_percent, created_at, updated_at
          FROM budgets
         WHERE user_id = %(user_id)s
           AND (%(after_created)s::timestamptz IS NULL
                OR (created_at, budget_id) > (%(after_created)s::timestamptz, %(after_budget_id)s::uuid))
         ORDER BY created_at, budget_id
         LIMIT %(limit)s) b
  LEFT JOIN LATERAL budget_usage(b.user_id, b.budget_id) u ON true
 ORDER BY b.created_at, b.budget_id;

-- name: list_budget_alerts
-- One page of every user's budget alerts in commit order, (written_xid, alert_id) ascending after
-- the cursor (budget_alerts_feed_idx). Only alerts of transactions that have ended are listed:
-- written_xid below the snapshot's xmin (every transaction that may still commit has an id at or
-- above it, so an alert that appears later sorts after every alert listed now and a reader that
-- resumes from its cursor never skips one). Unlike audit_seal (functions/audit.sql), alerts at or
-- above the snapshot's xmax (restored from another cluster's logical dump) are not listed until
-- this cluster's ids pass them: listing them would move readers' cursors past every alert this
-- cluster writes until then, and a cursor must never skip one.
SELECT user_id, alert_id, budget_id, threshold_percent, limit_micros, consumed_micros, currency_code,
       nullif(period_start, '-infinity'::timestamptz) AS period_start, period_end, created_at, written_xid
  FROM budget_alerts
 WHERE (written_xid, alert_id) > (%(after_xid)s::bigint, %(after_alert_id)s::uuid)
   AND written_xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
 ORDER BY written_xid, alert_id
 LIMIT %(limit)s;

-- name: list_user_budget_alerts
-- As list_budget_alerts, for one user's alerts (budget_alerts_user_feed_idx).
SELECT user_id, alert_id, budget_id, threshold_percent, limit_micros, consumed_micros, currency_code,
       nullif(period_start, '-infinity'::timestamptz) AS period_start, period_end, created_at, written_xid
  FROM budget_alerts
 WHERE user_id = %(user_id)s
   AND (written_xid, alert_id) > (%(after_xid)s::bigint, %(after_alert_id)s::uuid)
   AND written_xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
 ORDER BY written_xid, alert_id
 LIMIT %(limit)s;
