-- name: usage_get_model
-- One catalog model with the price version in force now and the next scheduled one.
SELECT m.model_id, m.provider, m.display_name, m.context_window_tokens, m.status, m.currency_code, m.created_at,
       m.updated_at, cur.price AS current_price, nxt.price AS next_price
  FROM models m
  LEFT JOIN LATERAL (SELECT to_jsonb(p) AS price FROM model_prices p
                      WHERE p.model_id = m.model_id AND p.effective_at <= now()
                      ORDER BY p.effective_at DESC LIMIT 1) cur ON true
  LEFT JOIN LATERAL (SELECT to_jsonb(p) AS price FROM model_prices p
                      WHERE p.model_id = m.model_id AND p.effective_at > now()
                      ORDER BY p.effective_at LIMIT 1) nxt ON true
 WHERE m.model_id = %(model_id)s;

-- name: usage_list_models
-- One page of catalog models by id after an optional cursor, filtered by provider and status.
SELECT m.model_id, m.provider, m.display_name, m.context_window_tokens, m.status, m.currency_code, m.created_at,
       m.updated_at, cur.price AS current_price, nxt.price AS next_price
  FROM models m
  LEFT JOIN LATERAL (SELECT to_jsonb(p) AS price FROM model_prices p
                      WHERE p.model_id = m.model_id AND p.effective_at <= now()
                      ORDER BY p.effective_at DESC LIMIT 1) cur ON true
  LEFT JOIN LATERAL (SELECT to_jsonb(p) AS price FROM model_prices p
                      WHERE p.model_id = m.model_id AND p.effective_at > now()
                      ORDER BY p.effective_at LIMIT 1) nxt ON true
 WHERE (%(provider)s::text IS NULL OR m.provider = %(provider)s::text)
   AND (%(status)s::text IS NULL OR m.status = %(status)s::text)
   AND (%(after_model_id)s::text IS NULL OR m.model_id > %(after_model_id)s::text)
 ORDER BY m.model_id
 LIMIT %(limit)s;

-- name: usage_lock_model
-- Locks a catalog model for a change.
SELECT model_id, provider, display_name, context_window_tokens, status, currency_code, created_at, updated_at
  FROM models WHERE model_id = %(model_id)s FOR UPDATE;

-- name: usage_insert_model
-- Creates a catalog model unless it exists (then returns no row).
INSERT INTO models (model_id, provider, display_name, context_window_tokens, status)
VALUES (%(model_id)s, %(provider)s, %(display_name)s, %(context_window_tokens)s, %(status)s)
ON CONFLICT (model_id) DO NOTHING
RETURNING model_id, provider, display_name, context_window_tokens, status, currency_code, created_at, updated_at;

-- name: usage_update_model
-- Changes the catalog fields whose set_* flag is true.
UPDATE models
   SET provider = CASE WHEN %(set_provider)s THEN %(provider)s ELSE provider END,
       display_name = CASE WHEN %(set_display_name)s THEN %(display_name)s ELSE display_name END,
       context_window_tokens = CASE WHEN %(set_context_window_tokens)s THEN %(context_window_tokens)s::bigint
                                    ELSE context_window_tokens END,
       status = CASE WHEN %(set_status)s THEN %(status)s ELSE status END,
       updated_at = now()
 WHERE model_id = %(model_id)s
RETURNING model_id, provider, display_name, context_window_tokens, status, currency_code, created_at, updated_at;

-- name: usage_insert_price
-- Adds an immutable price version (effective now when effective_at is NULL) and fixes the
-- model's currency with its first version.
WITH price AS (
    INSERT INTO model_prices (model_id, currency_code, input_micros_per_million, output_micros_per_million,
                              cached_input_micros_per_million, reasoning_micros_per_million, effective_at)
    VALUES (%(model_id)s, %(currency_code)s, %(input)s, %(output)s, %(cached_input)s, %(reasoning)s,
            coalesce(%(effective_at)s::timestamptz, now()))
    RETURNING price_id, model_id, currency_code, input_micros_per_million, output_micros_per_million,
              cached_input_micros_per_million, reasoning_micros_per_million, effective_at, created_at
), touched AS (
    UPDATE models SET currency_code = %(currency_code)s, updated_at = now() WHERE model_id = %(model_id)s
)
SELECT price_id, model_id, currency_code, input_micros_per_million, output_micros_per_million,
       cached_input_micros_per_million, reasoning_micros_per_million, effective_at, created_at
  FROM price;

-- name: usage_list_model_prices
-- One page of a model's price versions, latest effective_at first, after an optional cursor.
SELECT price_id, model_id, currency_code, input_micros_per_million, output_micros_per_million,
       cached_input_micros_per_million, reasoning_micros_per_million, effective_at, created_at
  FROM model_prices
 WHERE model_id = %(model_id)s
   AND (%(before_effective_at)s::timestamptz IS NULL OR effective_at < %(before_effective_at)s::timestamptz)
 ORDER BY effective_at DESC
 LIMIT %(limit)s;

-- name: usage_model_exists
-- Whether a catalog model exists, with its currency.
SELECT model_id, currency_code FROM models WHERE model_id = %(model_id)s;

-- name: usage_record
-- Records and bills one model call (usage_record in functions/usage.sql); returns the record with its
-- currency and the amount of its overage charge (0 without one: the money metrics split a hold's
-- capture from the charge beyond it). The overage is the cost beyond the hold's amount: the
-- charge itself, written by this statement, is not in the statement's snapshot.
SELECT r.user_id, r.called_at, r.usage_record_id, r.request_id, r.model_id, r.price_id, r.session_id,
       r.input_tokens, r.cached_input_tokens, r.output_tokens, r.reasoning_tokens, r.latency_ns,
       r.time_to_first_token_ns, r.outcome, r.error_code, r.used_own_provider_key, r.hold_id, r.cost_micros,
       r.billed, r.ledger_transaction_id, r.overage_transaction_id, r.created_at, p.currency_code,
       CASE WHEN r.overage_transaction_id IS NULL THEN 0 ELSE r.cost_micros - h.amount_micros END
           AS overage_micros
  FROM usage_record(%(user_id)s, %(model_id)s, %(session_id)s, %(input_tokens)s, %(cached_input_tokens)s,
                    %(output_tokens)s, %(reasoning_tokens)s, %(latency_ns)s, %(ttft_ns)s, %(outcome)s,
                    %(error_code)s, %(used_own_provider_key)s, %(hold_id)s, %(called_at)s, %(request_id)s,
                    %(actor)s, %(method)s, %(request_hash)s) r
  JOIN model_prices p ON p.price_id = r.price_id
  LEFT JOIN ledger_holds h ON h.user_id = r.user_id AND h.hold_id = r.hold_id;

-- name: usage_remembered_record
-- The usage record billed by a remembered request's ledger transaction (see
-- 0009_ledger_request_keys.sql), looked for in the call times its charge allows; with its currency.
SELECT r.usage_record_id, r.request_id, r.user_id, r.model_id, r.session_id, r.input_tokens,
       r.cached_input_tokens, r.output_tokens, r.reasoning_tokens, r.latency_ns, r.time_to_first_token_ns,
       r.outcome, r.error_code, r.used_own_provider_key, r.hold_id, r.price_id, r.cost_micros, r.billed,
       r.ledger_transaction_id, r.overage_transaction_id, r.called_at, r.created_at, p.currency_code
  FROM usage_records r
  JOIN model_prices p ON p.price_id = r.price_id
 WHERE r.user_id = %(user_id)s AND r.called_at BETWEEN %(earliest)s AND %(latest)s
   AND r.ledger_transaction_id = %(transaction_id)s;

-- name: usage_record_many
-- Records the items of a RecordUsageBatch with set-based statements; one result row per item in
-- order (see usage_record_many in functions/usage.sql).
SELECT b.o_item AS item, b.o_status AS status, (b.o_record).user_id, (b.o_record).called_at,
       (b.o_record).usage_record_id, (b.o_record).request_id, (b.o_record).model_id, (b.o_record).price_id,
       (b.o_record).session_id, (b.o_record).input_tokens, (b.o_record).cached_input_tokens,
       (b.o_record).output_tokens, (b.o_record).reasoning_tokens, (b.o_record).latency_ns,
       (b.o_record).time_to_first_token_ns, (b.o_record).outcome, (b.o_record).error_code,
       (b.o_record).used_own_provider_key, (b.o_record).hold_id, (b.o_record).cost_micros, (b.o_record).billed,
       (b.o_record).ledger_transaction_id, (b.o_record).overage_transaction_id, (b.o_record).created_at,
       p.currency_code,
       CASE WHEN (b.o_record).overage_transaction_id IS NULL THEN 0
            ELSE (b.o_record).cost_micros - h.amount_micros END AS overage_micros,
       b.o_error_constraint AS error_constraint, b.o_error_detail AS error_detail,
       b.o_error_sqlstate AS error_sqlstate, b.o_stored_method AS stored_method,
       b.o_stored_hash AS stored_hash, b.o_stored_response AS stored_response
  FROM usage_record_many(%(actor)s, %(method)s, %(request_ids)s::text[], %(request_hashes)s::bytea[],
                         %(user_ids)s::uuid[], %(model_ids)s::text[], %(session_ids)s::uuid[],
                         %(input_tokens)s::bigint[], %(cached_input_tokens)s::bigint[], %(output_tokens)s::bigint[],
                         %(reasoning_tokens)s::bigint[], %(latency_ns)s::bigint[], %(ttft_ns)s::bigint[],
                         %(outcomes)s::text[], %(error_codes)s::text[], %(used_own_provider_keys)s::boolean[],
                         %(hold_ids)s::uuid[], %(called_at)s::timestamptz[]) b
  LEFT JOIN model_prices p ON p.price_id = (b.o_record).price_id
  LEFT JOIN ledger_holds h ON h.user_id = (b.o_record).user_id AND h.hold_id = (b.o_record).hold_id
 ORDER BY b.o_item;

-- name: usage_store_responses
-- Stores the responses of the batch items recorded in this transaction (their keys were claimed
-- by usage_record_many).
SELECT idempotency_store(%(actor)s, %(user_ids)s::uuid[], %(request_ids)s::text[], %(responses)s::bytea[]);

-- name: usage_fold
-- Folds queued usage into the rollups; returns how many rows it folded.
SELECT usage_fold(%(limit)s) AS folded;

-- name: usage_ensure_partitions
-- Creates the monthly partitions of usage_records that are missing up to months_ahead months.
SELECT usage_ensure_partitions(%(months_ahead)s) AS created;

-- name: usage_user_state
-- Whether a user ever existed, and its status.
SELECT status FROM users WHERE user_id = %(user_id)s;

-- name: usage_user_usage
-- A user's usage per model and UTC day over a range, in one currency: folded days, queued rows
-- of those days, and raw records for the partial days at the edges.
WITH parts AS (
    SELECT model_id, day, request_count, error_count, input_tokens, cached_input_tokens, output_tokens,
           reasoning_tokens, cost_micros, billed_micros
      FROM usage_user_days
     WHERE user_id = %(user_id)s AND day >= %(day_start)s AND day < %(day_end)s
    UNION ALL
    SELECT model_id, date_trunc('day', called_at, 'UTC'), 1, is_error::int, input_tokens, cached_input_tokens,
           output_tokens, reasoning_tokens, cost_micros, billed_micros
      FROM usage_rollup_queue
     WHERE user_id = %(user_id)s AND called_at >= %(day_start)s AND called_at < %(day_end)s
    UNION ALL
    SELECT model_id, date_trunc('day', called_at, 'UTC'), 1, (outcome = 'error')::int, input_tokens,
           cached_input_tokens, output_tokens, reasoning_tokens, cost_micros,
           CASE WHEN billed THEN cost_micros ELSE 0 END
      FROM usage_records
     WHERE user_id = %(user_id)s AND called_at >= %(raw1_start)s AND called_at < %(raw1_end)s
    UNION ALL
    SELECT model_id, date_trunc('day', called_at, 'UTC'), 1, (outcome = 'error')::int, input_tokens,
           cached_input_tokens, output_tokens, reasoning_tokens, cost_micros,
           CASE WHEN billed THEN cost_micros ELSE 0 END
      FROM usage_records
     WHERE user_id = %(user_id)s AND called_at >= %(raw2_start)s AND called_at < %(raw2_end)s
)
SELECT p.model_id, p.day,
       sum(p.request_count)::bigint AS request_count, sum(p.error_count)::bigint AS error_count,
       sum(p.input_tokens)::bigint AS input_tokens, sum(p.cached_input_tokens)::bigint AS cached_input_tokens,
       sum(p.output_tokens)::bigint AS output_tokens, sum(p.reasoning_tokens)::bigint AS reasoning_tokens,
       sum(p.cost_micros)::bigint AS cost_micros, sum(p.billed_micros)::bigint AS billed_micros
  FROM parts p
  JOIN models m ON m.model_id = p.model_id
 WHERE m.currency_code = %(currency_code)s
 GROUP BY p.model_id, p.day;

-- name: usage_model_stats
-- A model's statistics over a window split into whole days, whole hours and raw edges (see
-- usage/windows.py): sums, the merged latency histogram's percentile buckets, exact unique
-- users (from the day and hour bitmaps), and its ratings; from folded rollups, queued rows and
-- raw records in one snapshot.
WITH totals AS (
    SELECT coalesce(sum(request_count), 0)::bigint AS request_count, coalesce(sum(error_count), 0)::bigint AS error_count,
           coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
           coalesce(sum(cached_input_tokens), 0)::bigint AS cached_input_tokens,
           coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
           coalesce(sum(reasoning_tokens), 0)::bigint AS reasoning_tokens,
           coalesce(sum(billed_micros), 0)::bigint AS billed_micros
      FROM (
        SELECT request_count, error_count, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
               billed_micros
          FROM usage_model_days
         WHERE model_id = %(model_id)s AND day >= %(day_start)s AND day < %(day_end)s
        UNION ALL
        SELECT request_count, error_count, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
               billed_micros
          FROM usage_model_hours
         WHERE model_id = %(model_id)s
           AND ((hour >= %(hours1_start)s AND hour < %(hours1_end)s) OR (hour >= %(hours2_start)s AND hour < %(hours2_end)s))
        UNION ALL
        SELECT 1, is_error::int, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, billed_micros
          FROM usage_rollup_queue
         WHERE model_id = %(model_id)s AND called_at >= %(aligned_start)s AND called_at < %(aligned_end)s
        UNION ALL
        SELECT 1, (outcome = 'error')::int, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
               CASE WHEN billed THEN cost_micros ELSE 0 END
          FROM usage_records
         WHERE model_id = %(model_id)s AND called_at >= %(raw1_start)s AND called_at < %(raw1_end)s
        UNION ALL
        SELECT 1, (outcome = 'error')::int, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
               CASE WHEN billed THEN cost_micros ELSE 0 END
          FROM usage_records
         WHERE model_id = %(model_id)s AND called_at >= %(raw2_start)s AND called_at < %(raw2_end)s
      ) parts
), histogram AS (
    SELECT bucket, sum(call_count) AS calls
      FROM (
        SELECT bucket, call_count FROM usage_latency_days
         WHERE model_id = %(model_id)s AND day >= %(day_start)s AND day < %(day_end)s
        UNION ALL
        SELECT bucket, call_count FROM usage_latency_hours
         WHERE model_id = %(model_id)s
           AND ((hour >= %(hours1_start)s AND hour < %(hours1_end)s) OR (hour >= %(hours2_start)s AND hour < %(hours2_end)s))
        UNION ALL
        SELECT latency_bucket, 1 FROM usage_rollup_queue
         WHERE model_id = %(model_id)s AND latency_bucket IS NOT NULL
           AND called_at >= %(aligned_start)s AND called_at < %(aligned_end)s
        UNION ALL
        SELECT usage_latency_bucket(latency_ns), 1 FROM usage_records
         WHERE model_id = %(model_id)s AND outcome = 'success' AND latency_ns IS NOT NULL
           AND called_at >= %(raw1_start)s AND called_at < %(raw1_end)s
        UNION ALL
        SELECT usage_latency_bucket(latency_ns), 1 FROM usage_records
         WHERE model_id = %(model_id)s AND outcome = 'success' AND latency_ns IS NOT NULL
           AND called_at >= %(raw2_start)s AND called_at < %(raw2_end)s
      ) buckets
     GROUP BY bucket
), cumulative AS (
    SELECT bucket, sum(calls) OVER (ORDER BY bucket) AS running, sum(calls) OVER () AS total FROM histogram
), percentiles AS (
    -- Nearest rank: the smallest bucket whose running count reaches ceil(p * total).
    SELECT coalesce(max(total), 0)::bigint AS latency_count,
           min(bucket) FILTER (WHERE running >= ceil(total * 0.50)) AS p50_bucket,
           min(bucket) FILTER (WHERE running >= ceil(total * 0.95)) AS p95_bucket
      FROM cumulative
), users AS (
    -- UNION (not count(DISTINCT), which always sorts) lets PostgreSQL deduplicate by hashing.
    SELECT count(*) AS unique_users
      FROM (
        SELECT u.user_id
          FROM usage_model_user_months u
          JOIN unnest(%(user_months)s::timestamptz[], %(user_month_masks)s::integer[]) AS w(month, mask)
            ON u.month = w.month
         WHERE u.model_id = %(model_id)s AND u.days & w.mask <> 0
        UNION
        SELECT u.user_id
          FROM usage_model_user_days u
          JOIN unnest(%(user_days)s::timestamptz[], %(user_day_masks)s::integer[]) AS w(day, mask)
            ON u.day = w.day
         WHERE u.model_id = %(model_id)s AND u.hours & w.mask <> 0
        UNION
        SELECT user_id FROM usage_rollup_queue
         WHERE model_id = %(model_id)s AND called_at >= %(aligned_start)s AND called_at < %(aligned_end)s
        UNION
        SELECT user_id FROM usage_records
         WHERE model_id = %(model_id)s AND called_at >= %(raw1_start)s AND called_at < %(raw1_end)s
        UNION
        SELECT user_id FROM usage_records
         WHERE model_id = %(model_id)s AND called_at >= %(raw2_start)s AND called_at < %(raw2_end)s
      ) who
)
SELECT t.request_count, t.error_count, t.input_tokens, t.cached_input_tokens, t.output_tokens,
       t.reasoning_tokens, t.billed_micros, p.latency_count, p.p50_bucket, p.p95_bucket, u.unique_users,
       coalesce(r.rating_count, 0) AS rating_count, coalesce(r.stars_sum, 0) AS stars_sum
  FROM totals t, percentiles p, users u
  LEFT JOIN model_rating_totals r ON r.model_id = %(model_id)s;

-- name: usage_model_activity
-- Request counts, tokens and billed amounts per model over a window split as for
-- usage_model_stats, for the models that pass the provider and status filters.
WITH chosen AS (
    SELECT model_id FROM models
     WHERE (%(provider)s::text IS NULL OR provider = %(provider)s::text)
       AND (%(status)s::text IS NULL OR status = %(status)s::text)
), parts AS (
    SELECT d.model_id, d.request_count, d.input_tokens + d.cached_input_tokens + d.output_tokens + d.reasoning_tokens
           AS total_tokens, d.billed_micros
      FROM usage_model_days d JOIN chosen USING (model_id)
     WHERE d.day >= %(day_start)s AND d.day < %(day_end)s
    UNION ALL
    SELECT h.model_id, h.request_count, h.input_tokens + h.cached_input_tokens + h.output_tokens + h.reasoning_tokens,
           h.billed_micros
      FROM usage_model_hours h JOIN chosen USING (model_id)
     WHERE (h.hour >= %(hours1_start)s AND h.hour < %(hours1_end)s) OR (h.hour >= %(hours2_start)s AND h.hour < %(hours2_end)s)
    UNION ALL
    SELECT q.model_id, 1, q.input_tokens + q.cached_input_tokens + q.output_tokens + q.reasoning_tokens, q.billed_micros
      FROM usage_rollup_queue q JOIN chosen USING (model_id)
     WHERE q.called_at >= %(aligned_start)s AND q.called_at < %(aligned_end)s
    UNION ALL
    SELECT r.model_id, 1, r.input_tokens + r.cached_input_tokens + r.output_tokens + r.reasoning_tokens,
           CASE WHEN r.billed THEN r.cost_micros ELSE 0 END
      FROM chosen c
      CROSS JOIN LATERAL (
        SELECT u.model_id, u.input_tokens, u.cached_input_tokens, u.output_tokens, u.reasoning_tokens, u.billed,
               u.cost_micros
          FROM usage_records u
         WHERE u.model_id = c.model_id AND u.called_at >= %(raw1_start)s AND u.called_at < %(raw1_end)s
        UNION ALL
        SELECT u.model_id, u.input_tokens, u.cached_input_tokens, u.output_tokens, u.reasoning_tokens, u.billed,
               u.cost_micros
          FROM usage_records u
         WHERE u.model_id = c.model_id AND u.called_at >= %(raw2_start)s AND u.called_at < %(raw2_end)s
      ) r
)
SELECT model_id, sum(request_count)::bigint AS request_count, sum(total_tokens)::bigint AS total_tokens,
       sum(billed_micros)::bigint AS billed_micros
  FROM parts
 GROUP BY model_id;

-- name: usage_ranking_models
-- The catalog models that pass the provider and status filters, with their rating totals.
SELECT m.model_id, m.provider, m.display_name, m.status, m.currency_code,
       coalesce(r.rating_count, 0) AS rating_count, coalesce(r.stars_sum, 0) AS stars_sum
  FROM models m
  LEFT JOIN model_rating_totals r ON r.model_id = m.model_id
 WHERE (%(provider)s::text IS NULL OR m.provider = %(provider)s::text)
   AND (%(status)s::text IS NULL OR m.status = %(status)s::text);

-- name: usage_lock_rating_totals
-- Locks (creating it if needed) a model's rating totals, so ratings of the model apply one at a
-- time and the totals stay exact.
INSERT INTO model_rating_totals AS t (model_id, rating_count, stars_sum) VALUES (%(model_id)s, 0, 0)
ON CONFLICT (model_id) DO UPDATE SET rating_count = t.rating_count
RETURNING rating_count;

-- name: usage_upsert_rating
-- Records a user's rating of a model, replacing an earlier one, and moves the model's totals
-- (locked before by usage_lock_rating_totals); returns the rating.
-- (No FOR UPDATE on earlier: it would skip the row the upsert below changes in the same
-- statement. The totals lock, taken in an earlier statement, already serializes the model's
-- ratings, so this statement's snapshot sees the latest committed rating.)
WITH earlier AS (
    SELECT stars FROM model_ratings WHERE user_id = %(user_id)s AND model_id = %(model_id)s
), rating AS (
    INSERT INTO model_ratings (user_id, model_id, stars, review)
    VALUES (%(user_id)s, %(model_id)s, %(stars)s, %(review)s)
    ON CONFLICT (user_id, model_id) DO UPDATE
        SET stars = excluded.stars, review = excluded.review, updated_at = now()
    RETURNING user_id, model_id, stars, review, created_at, updated_at
), totals AS (
    UPDATE model_rating_totals
       SET rating_count = rating_count + CASE WHEN EXISTS (SELECT 1 FROM earlier) THEN 0 ELSE 1 END,
           stars_sum = stars_sum + %(stars)s - coalesce((SELECT stars FROM earlier), 0)
     WHERE model_id = %(model_id)s
)
SELECT user_id, model_id, stars, review, created_at, updated_at FROM rating;

-- name: usage_list_model_ratings
-- One page of a model's ratings, most recently changed first, after an optional cursor.
SELECT user_id, model_id, stars, review, created_at, updated_at
  FROM model_ratings
 WHERE model_id = %(model_id)s
   AND (%(stars)s::smallint IS NULL OR stars = %(stars)s::smallint)
   AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
   AND (%(after_updated_at)s::timestamptz IS NULL
        OR (updated_at, user_id) < (%(after_updated_at)s::timestamptz, %(after_user_id)s::uuid))
 ORDER BY updated_at DESC, user_id DESC
 LIMIT %(limit)s;

-- name: usage_delete_user_ratings
-- Deletes a deleted user's ratings (their reviews are personal data) and takes them out of the
-- models' totals.
WITH gone AS (
    DELETE FROM model_ratings WHERE user_id = %(user_id)s RETURNING model_id, stars
)
UPDATE model_rating_totals t
   SET rating_count = t.rating_count - 1, stars_sum = t.stars_sum - gone.stars
  FROM gone
 WHERE t.model_id = gone.model_id;
