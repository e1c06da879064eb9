-- name: claim_request_id
-- Claims an idempotency key for this transaction (idempotency_claim in functions/idempotency.sql):
-- claimed, or the stored method, fingerprint and response of the request that holds it (a
-- concurrent claim waits until the first transaction commits or rolls back).
SELECT claimed, stored_method, stored_hash, stored_response
  FROM idempotency_claim(%(user_id)s, %(actor)s, %(request_id)s, %(method)s, %(request_hash)s);

-- name: get_request_id
-- Reads a claimed idempotency key with the first response.
SELECT method, request_hash, response
  FROM idempotency_keys
 WHERE user_id = %(user_id)s AND actor = %(actor)s AND request_id = %(request_id)s;

-- name: store_response
-- Stores the response for a key claimed in this transaction.
SELECT idempotency_store(%(actor)s, ARRAY[%(user_id)s::uuid], ARRAY[%(request_id)s::text], ARRAY[%(response)s::bytea]);

-- name: purge_request_ids
-- Forgets up to %(limit)s idempotency records older than %(retention_seconds)s (oldest first,
-- skipping any a replay holds right now, and those kept forever: see 0009_ledger_request_keys.sql);
-- returns how many.
WITH doomed AS (
    SELECT user_id, actor, request_id
      FROM idempotency_keys
     WHERE created_at < now() - make_interval(secs => %(retention_seconds)s) AND NOT kept_forever
     ORDER BY created_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM idempotency_keys k
     USING doomed d
     WHERE k.user_id = d.user_id AND k.actor = d.actor AND k.request_id = d.request_id
    RETURNING 1
)
SELECT count(*) AS purged FROM gone;

-- name: insert_audit_event
-- Appends one audit record in the caller's transaction (audit_append in functions/audit.sql).
SELECT audit_append(%(actor)s, %(user_id)s::uuid, %(action)s, %(target_type)s, %(target_id)s, %(request_id)s,
                    %(summary)s::jsonb);

-- name: get_server_secret
-- Reads a secret the server generated for itself at migration time.
SELECT secret FROM server_secrets WHERE name = %(name)s;

-- name: database_read_only
-- True if a new transaction here cannot write: a standby (after a failover, say) or a database
-- with default_transaction_read_only on. Run at the start of a transaction that set nothing.
SELECT current_setting('transaction_read_only') = 'on' AS read_only;

-- name: begin_transaction
-- Opens every server transaction (see db/functions/security.sql): names the users it
-- acts for and whether it is a cross-user path, and bounds its statements by the caller's
-- deadline (NULL keeps the role's statement_timeout); qdata.clock is the budgets' injected time
-- (empty: the database's own; see qdata_server/clock.py). Queued with the first statement of the work.
SELECT set_config('qdata.acting_users', %(acting_users)s, true),
       set_config('qdata.all_users', %(all_users)s, true),
       set_config('statement_timeout', coalesce(%(statement_timeout)s, current_setting('statement_timeout')), true),
       set_config('qdata.clock', %(clock)s, true);

-- name: serving_role_confined
-- True if row-level security applies to the current role (not a superuser, not BYPASSRLS, not
-- the owner of the user tables).
SELECT row_security_active('users') AS confined;
