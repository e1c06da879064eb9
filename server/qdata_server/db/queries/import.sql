-- name: import_log_for_users
-- The import_log rows of the given users: what an earlier run already imported.
SELECT user_id, request_id, step, response
  FROM import_log
 WHERE user_id = ANY (%(user_ids)s::uuid[]);

-- name: import_log_insert
-- Records one imported entity, in the transaction that created it.
INSERT INTO import_log (user_id, request_id, step, legacy_key, legacy, response)
VALUES (%(user_id)s, %(request_id)s, %(step)s, %(legacy_key)s, %(legacy)s, %(response)s);

-- name: import_model_ids
-- Every catalog model id (ratings of the dump must name one).
SELECT model_id FROM models;

-- name: import_reconcile
-- Per imported user: the posted balance in the dump's currency, the messages of the imported
-- sessions, the user's ratings and whether the user's import completed.
SELECT u.user_id,
       coalesce((SELECT a.posted_micros FROM ledger_accounts a
                  WHERE a.user_id = u.user_id AND a.currency_code = u.currency_code), 0) AS balance_micros,
       coalesce((SELECT sum(s.message_count) FROM chat_sessions s
                  WHERE s.user_id = u.user_id), 0)::bigint AS message_count,
       (SELECT count(*) FROM model_ratings r WHERE r.user_id = u.user_id) AS rating_count,
       EXISTS (SELECT FROM import_log l WHERE l.user_id = u.user_id AND l.step = 'complete') AS complete
  FROM unnest(%(user_ids)s::uuid[], %(currencies)s::text[]) AS u (user_id, currency_code);
