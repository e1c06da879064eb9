-- name: ledger_deposit
-- Credits a user (one transaction, two postings); returns the new transaction's id.
SELECT ledger_deposit(%(user_id)s, %(amount_micros)s, %(currency_code)s, %(source)s, %(external_reference)s,
                      %(description)s, %(request_id)s, %(actor)s, %(method)s, %(request_hash)s) AS transaction_id;

-- name: ledger_charge
-- Debits a user's available balance for revenue; rejects INSUFFICIENT_FUNDS.
SELECT ledger_charge(%(user_id)s, %(amount_micros)s, %(currency_code)s, %(description)s, %(reference)s,
                     %(request_id)s, %(actor)s, %(method)s, %(request_hash)s) AS transaction_id;

-- name: ledger_transfer
-- Moves credits between two users, locking both accounts in user_id order.
SELECT ledger_transfer(%(from_user_id)s, %(to_user_id)s, %(amount_micros)s, %(currency_code)s, %(description)s,
                       %(reference)s, %(request_id)s, %(actor)s, %(method)s, %(request_hash)s) AS transaction_id;

-- name: ledger_refund
-- Returns part of a CHARGE or HOLD_CAPTURE; refunds never exceed the original.
SELECT ledger_refund(%(user_id)s, %(original_transaction_id)s, %(amount_micros)s, %(description)s,
                     %(request_id)s, %(actor)s, %(method)s, %(request_hash)s) AS transaction_id;

-- name: ledger_create_hold
-- Reserves credits until the hold is captured, released or expires.
SELECT ledger_create_hold(%(user_id)s, %(amount_micros)s, %(currency_code)s, %(ttl_seconds)s, %(description)s,
                          %(reference)s, %(request_id)s, %(actor)s, %(method)s, %(request_hash)s) AS hold_id;

-- name: ledger_capture_hold
-- Charges part or all of an active hold and releases the rest.
SELECT ledger_capture_hold(%(user_id)s, %(hold_id)s, %(amount_micros)s, %(description)s,
                           %(request_id)s, p_actor => %(actor)s, p_method => %(method)s,
                           p_request_hash => %(request_hash)s) AS transaction_id;

-- name: ledger_release_hold
-- Releases an active hold.
SELECT ledger_release_hold(%(user_id)s, %(hold_id)s, %(request_id)s, %(actor)s, %(method)s, %(request_hash)s);

-- name: ledger_request_holder
-- The ledger row that carries a request's key (its idempotency record may be purged): a
-- transaction, a hold's creation or its release (see 0009_ledger_request_keys.sql).
SELECT method, request_hash, transaction_id, hold_id, created_at
  FROM ledger_request_holder(%(user_id)s, %(actor)s, %(request_id)s)
 LIMIT 1;

-- name: ledger_sweep_expired_holds
-- Resolves the expired holds of up to `limit` accounts; returns how many accounts it swept.
SELECT ledger_sweep_expired_holds(%(limit)s) AS swept;

-- name: ledger_user_state
-- Whether a user ever existed (deleted users' money stays readable).
SELECT status FROM users WHERE user_id = %(user_id)s;

-- name: ledger_get_balance
-- A user's balance in one currency, GetBalance's whole work in one statement: no row if the user
-- never existed (deleted users' money stays readable); posted_micros NULL if the user has no
-- account in the currency. held counts only holds still reserving at this moment.
SELECT u.status AS user_status,
       a.posted_micros,
       coalesce((SELECT sum(h.amount_micros) FROM ledger_holds h
                  WHERE h.user_id = a.user_id AND h.currency_code = a.currency_code
                    AND h.status = 'active' AND h.expire_at > now()), 0)::bigint AS held_micros,
       a.updated_at
  FROM users u
  LEFT JOIN ledger_accounts a ON a.user_id = u.user_id AND a.currency_code = %(currency_code)s
 WHERE u.user_id = %(user_id)s;

-- name: ledger_get_transaction
-- One transaction visible to a user (its owner or a transfer's receiver), with postings and the
-- refunded total.
SELECT t.user_id, t.transaction_id, t.kind, t.counterparty_user_id, t.amount_micros, t.currency_code,
       t.description, t.reference, t.external_reference, t.deposit_source, t.original_transaction_id, t.hold_id,
       t.request_id, t.created_at,
       (SELECT json_agg(json_build_object(
                   'account', CASE WHEN p.account_user_id IS NOT NULL THEN 'users/' || p.account_user_id
                                   ELSE 'system/' || p.system_account END,
                   'amount_micros', p.amount_micros) ORDER BY p.leg)
          FROM ledger_postings p WHERE p.user_id = t.user_id AND p.transaction_id = t.transaction_id) AS postings,
       (SELECT coalesce(sum(r.amount_micros), 0) FROM ledger_transactions r
         WHERE r.user_id = t.user_id AND r.original_transaction_id = t.transaction_id)::bigint AS refunded_micros
  FROM ledger_transactions t
 WHERE t.transaction_id = %(transaction_id)s
   AND (t.user_id = %(user_id)s OR t.counterparty_user_id = %(user_id)s);

-- name: ledger_list_transactions
-- One page of a user's transactions (owned, or received by transfer), newest first by the user's
-- position (commit order, see 0012_listing_commit_order.sql), after an optional position cursor,
-- filtered by time range, kinds and currency.
WITH visible AS (
    SELECT user_id, transaction_id, kind, counterparty_user_id, amount_micros, currency_code, description,
           reference, external_reference, deposit_source, original_transaction_id, hold_id, request_id,
           created_at, owner_position AS list_position
      FROM ledger_transactions
     WHERE user_id = %(user_id)s
       AND (%(before_position)s::bigint IS NULL OR owner_position < %(before_position)s::bigint)
    UNION ALL
    SELECT user_id, transaction_id, kind, counterparty_user_id, amount_micros, currency_code, description,
           reference, external_reference, deposit_source, original_transaction_id, hold_id, request_id,
           created_at, counterparty_position
      FROM ledger_transactions
     WHERE counterparty_user_id = %(user_id)s
       AND (%(before_position)s::bigint IS NULL OR counterparty_position < %(before_position)s::bigint)
)
SELECT t.user_id, t.transaction_id, t.kind, t.counterparty_user_id, t.amount_micros, t.currency_code,
       t.description, t.reference, t.external_reference, t.deposit_source, t.original_transaction_id,
       t.hold_id, t.request_id, t.created_at, t.list_position,
       (SELECT json_agg(json_build_object(
                   'account', CASE WHEN p.account_user_id IS NOT NULL THEN 'users/' || p.account_user_id
                                   ELSE 'system/' || p.system_account END,
                   'amount_micros', p.amount_micros) ORDER BY p.leg)
          FROM ledger_postings p WHERE p.user_id = t.user_id AND p.transaction_id = t.transaction_id) AS postings,
       (SELECT coalesce(sum(r.amount_micros), 0) FROM ledger_transactions r
         WHERE r.user_id = t.user_id AND r.original_transaction_id = t.transaction_id)::bigint AS refunded_micros
  FROM visible t
 WHERE (%(start_time)s::timestamptz IS NULL OR t.created_at >= %(start_time)s::timestamptz)
   AND (%(end_time)s::timestamptz IS NULL OR t.created_at < %(end_time)s::timestamptz)
   AND (%(kinds)s::text[] IS NULL OR t.kind = ANY (%(kinds)s::text[]))
   AND (%(currency_code)s::text IS NULL OR t.currency_code = %(currency_code)s::text)
 ORDER BY t.list_position DESC
 LIMIT %(limit)s;

-- name: ledger_get_hold
-- One hold of a user.
SELECT h.user_id, h.hold_id, h.currency_code, h.amount_micros, h.status, h.description, h.reference,
       h.captured_micros, h.capture_transaction_id, h.request_id, h.created_at, h.expire_at, h.resolved_at,
       now() AS read_at
  FROM ledger_holds h WHERE h.user_id = %(user_id)s AND h.hold_id = %(hold_id)s;

-- name: ledger_verify_unbalanced
-- Transactions whose postings do not sum to zero (or that have no postings).
SELECT t.transaction_id, t.currency_code, coalesce(sum(p.amount_micros), 0)::bigint AS total
  FROM ledger_transactions t
  LEFT JOIN ledger_postings p ON p.user_id = t.user_id AND p.transaction_id = t.transaction_id
 WHERE %(user_id)s::uuid IS NULL OR t.user_id = %(user_id)s::uuid
 GROUP BY t.user_id, t.transaction_id, t.currency_code
HAVING coalesce(sum(p.amount_micros), 0) <> 0 OR count(p.leg) <> 2
 LIMIT %(limit)s;

-- name: ledger_verify_accounts
-- Accounts whose cached posted or held amount differs from their postings or active holds, or
-- whose available balance is negative.
SELECT a.user_id, a.currency_code, a.posted_micros, a.held_micros,
       coalesce(p.total, 0)::bigint AS postings_total, coalesce(h.total, 0)::bigint AS holds_total
  FROM ledger_accounts a
  LEFT JOIN LATERAL (SELECT sum(amount_micros) AS total FROM ledger_postings
                      WHERE account_user_id = a.user_id AND currency_code = a.currency_code) p ON true
  LEFT JOIN LATERAL (SELECT sum(amount_micros) AS total FROM ledger_holds
                      WHERE user_id = a.user_id AND currency_code = a.currency_code AND status = 'active') h ON true
 WHERE (%(user_id)s::uuid IS NULL OR a.user_id = %(user_id)s::uuid)
   AND (a.posted_micros <> coalesce(p.total, 0) OR a.held_micros <> coalesce(h.total, 0)
        OR a.posted_micros < a.held_micros)
 LIMIT %(limit)s;

-- name: ledger_verify_holds
-- Holds whose state disagrees with itself or with their capture transaction.
SELECT h.hold_id, h.user_id, h.currency_code, h.status, h.captured_micros, t.amount_micros AS captured_in_transaction
  FROM ledger_holds h
  LEFT JOIN ledger_transactions t ON t.user_id = h.user_id AND t.transaction_id = h.capture_transaction_id
 WHERE (%(user_id)s::uuid IS NULL OR h.user_id = %(user_id)s::uuid)
   AND ((h.status = 'captured' AND (t.transaction_id IS NULL OR t.amount_micros <> h.captured_micros
                                    OR t.hold_id IS DISTINCT FROM h.hold_id))
        OR (h.status <> 'captured' AND h.captured_micros <> 0)
        OR h.captured_micros > h.amount_micros)
 LIMIT %(limit)s;

-- name: ledger_verify_refunds
-- Originals whose refunds total more than their amount.
SELECT o.transaction_id, o.currency_code, o.amount_micros, sum(r.amount_micros)::bigint AS refunded
  FROM ledger_transactions o
  JOIN ledger_transactions r ON r.user_id = o.user_id AND r.original_transaction_id = o.transaction_id
 WHERE %(user_id)s::uuid IS NULL OR o.user_id = %(user_id)s::uuid
 GROUP BY o.user_id, o.transaction_id, o.currency_code, o.amount_micros
HAVING sum(r.amount_micros) > o.amount_micros
 LIMIT %(limit)s;

-- name: ledger_verify_counts
-- How much the check covered.
SELECT (SELECT count(*) FROM ledger_accounts WHERE %(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid) AS accounts,
       (SELECT count(*) FROM ledger_transactions WHERE %(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid) AS transactions,
       (SELECT count(*) FROM ledger_holds WHERE %(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid) AS holds,
       now() AS check_time;

-- name: ledger_opening_balance
-- Credits an imported user's opening balance from the opening_balances system account.
SELECT ledger_opening_balance(%(user_id)s, %(amount_micros)s, %(currency_code)s, %(description)s, %(request_id)s,
                              %(actor)s, %(method)s, %(request_hash)s) AS transaction_id;

-- name: ledger_deposit_once
-- Claims the key, credits a user and audits it (ledger_deposit_once); answers the claim and the new
-- transaction in the same round trip.
SELECT o.claimed, o.stored_method, o.stored_hash, o.stored_response,
       a.user_id, a.transaction_id, a.kind, a.counterparty_user_id, a.amount_micros, a.currency_code,
       a.description, a.reference, a.external_reference, a.deposit_source, a.original_transaction_id, a.hold_id,
       a.request_id, a.created_at, a.postings, a.refunded_micros
  FROM ledger_deposit_once(%(user_id)s, %(amount_micros)s, %(currency_code)s, %(source)s, %(external_reference)s,
                           %(description)s, %(request_id)s, %(actor)s, %(method)s, %(request_hash)s,
                           %(audit_actor)s, %(audit_action)s, %(audit_request_id)s, %(audit_summary)s::jsonb) o
  LEFT JOIN LATERAL ledger_transaction_answer(%(user_id)s, o.transaction_id) a ON o.claimed;

-- name: ledger_opening_balance_once
-- Claims the key, credits an imported user's opening balance and audits it
-- (ledger_opening_balance_once); answers the claim and the new transaction in the same round trip.
SELECT o.claimed, o.stored_method, o.stored_hash, o.stored_response,
       a.user_id, a.transaction_id, a.kind, a.counterparty_user_id, a.amount_micros, a.currency_code,
       a.description, a.reference, a.external_reference, a.deposit_source, a.original_transaction_id, a.hold_id,
       a.request_id, a.created_at, a.postings, a.refunded_micros
  FROM ledger_opening_balance_once(%(user_id)s, %(amount_micros)s, %(currency_code)s, %(description)s,
                                   %(request_id)s, %(actor)s, %(method)s, %(request_hash)s,
                                   %(audit_actor)s, %(audit_action)s, %(audit_request_id)s,
                                   %(audit_summary)s::jsonb) o
  LEFT JOIN LATERAL ledger_transaction_answer(%(user_id)s, o.transaction_id) a ON o.claimed;

-- name: ledger_charge_once
-- Claims the key, debits a user for revenue and audits it (ledger_charge_once; INSUFFICIENT_FUNDS
-- rejects); answers the claim and the new transaction in the same round trip.
SELECT o.claimed, o.stored_method, o.stored_hash, o.stored_response,
       a.user_id, a.transaction_id, a.kind, a.counterparty_user_id, a.amount_micros, a.currency_code,
       a.description, a.reference, a.external_reference, a.deposit_source, a.original_transaction_id, a.hold_id,
       a.request_id, a.created_at, a.postings, a.refunded_micros
  FROM ledger_charge_once(%(user_id)s, %(amount_micros)s, %(currency_code)s, %(description)s, %(reference)s,
                          %(request_id)s, %(actor)s, %(method)s, %(request_hash)s,
                          %(audit_actor)s, %(audit_action)s, %(audit_request_id)s, %(audit_summary)s::jsonb) o
  LEFT JOIN LATERAL ledger_transaction_answer(%(user_id)s, o.transaction_id) a ON o.claimed;

-- name: ledger_transfer_once
-- Claims the sender's key, moves credits between two users and audits it (ledger_transfer_once);
-- answers the claim and the new transaction as the sender sees it in the same round trip.
SELECT o.claimed, o.stored_method, o.stored_hash, o.stored_response,
       a.user_id, a.transaction_id, a.kind, a.counterparty_user_id, a.amount_micros, a.currency_code,
       a.description, a.reference, a.external_reference, a.deposit_source, a.original_transaction_id, a.hold_id,
       a.request_id, a.created_at, a.postings, a.refunded_micros
  FROM ledger_transfer_once(%(from_user_id)s, %(to_user_id)s, %(amount_micros)s, %(currency_code)s,
                            %(description)s, %(reference)s, %(request_id)s, %(actor)s, %(method)s,
                            %(request_hash)s, %(audit_actor)s, %(audit_action)s, %(audit_request_id)s,
                            %(audit_summary)s::jsonb) o
  LEFT JOIN LATERAL ledger_transaction_answer(%(from_user_id)s, o.transaction_id) a ON o.claimed;

-- name: ledger_refund_once
-- Claims the key, refunds part of a CHARGE or HOLD_CAPTURE and audits it (ledger_refund_once);
-- answers the claim and the new transaction in the same round trip.
SELECT o.claimed, o.stored_method, o.stored_hash, o.stored_response,
       a.user_id, a.transaction_id, a.kind, a.counterparty_user_id, a.amount_micros, a.currency_code,
       a.description, a.reference, a.external_reference, a.deposit_source, a.original_transaction_id, a.hold_id,
       a.request_id, a.created_at, a.postings, a.refunded_micros
  FROM ledger_refund_once(%(user_id)s, %(original_transaction_id)s, %(amount_micros)s, %(description)s,
                          %(request_id)s, %(actor)s, %(method)s, %(request_hash)s,
                          %(audit_actor)s, %(audit_action)s, %(audit_request_id)s, %(audit_summary)s::jsonb) o
  LEFT JOIN LATERAL ledger_transaction_answer(%(user_id)s, o.transaction_id) a ON o.claimed;

-- name: ledger_create_hold_once
-- Claims the key, reserves credits and audits it (ledger_create_hold_once); answers the claim and
-- the new hold in the same round trip.
SELECT o.claimed, o.stored_method, o.stored_hash, o.stored_response,
       h.user_id, h.hold_id, h.currency_code, h.amount_micros, h.status, h.description, h.reference,
       h.captured_micros, h.capture_transaction_id, h.request_id, h.created_at, h.expire_at, h.resolved_at,
       h.read_at
  FROM ledger_create_hold_once(%(user_id)s, %(amount_micros)s, %(currency_code)s, %(ttl_seconds)s,
                               %(description)s, %(reference)s, %(request_id)s, %(actor)s, %(method)s,
                               %(request_hash)s, %(audit_actor)s, %(audit_action)s, %(audit_request_id)s,
                               %(audit_summary)s::jsonb) o
  LEFT JOIN LATERAL ledger_hold_answer(%(user_id)s, o.hold_id) h ON o.claimed;

-- name: ledger_capture_hold_once
-- Claims the key, charges part or all of an active hold and audits it (ledger_capture_hold_once);
-- answers the claim, the captured hold (its columns prefixed hold_) and the capture transaction in
-- the same round trip.
SELECT o.claimed, o.stored_method, o.stored_hash, o.stored_response,
       h.user_id AS hold_user_id, h.hold_id AS hold_hold_id, h.currency_code AS hold_currency_code,
       h.amount_micros AS hold_amount_micros, h.status AS hold_status, h.description AS hold_description,
       h.reference AS hold_reference, h.captured_micros AS hold_captured_micros,
       h.capture_transaction_id AS hold_capture_transaction_id, h.request_id AS hold_request_id,
       h.created_at AS hold_created_at, h.expire_at AS hold_expire_at, h.resolved_at AS hold_resolved_at,
       h.read_at AS hold_read_at,
       a.user_id, a.transaction_id, a.kind, a.counterparty_user_id, a.amount_micros, a.currency_code,
       a.description, a.reference, a.external_reference, a.deposit_source, a.original_transaction_id, a.hold_id,
       a.request_id, a.created_at, a.postings, a.refunded_micros
  FROM ledger_capture_hold_once(%(user_id)s, %(hold_id)s, %(amount_micros)s, %(description)s, %(request_id)s,
                                %(actor)s, %(method)s, %(request_hash)s, %(audit_actor)s, %(audit_action)s,
                                %(audit_request_id)s, %(audit_summary)s::jsonb) o
  LEFT JOIN LATERAL ledger_hold_answer(%(user_id)s, %(hold_id)s) h ON o.claimed
  LEFT JOIN LATERAL ledger_transaction_answer(%(user_id)s, o.transaction_id) a ON o.claimed;

-- name: ledger_release_hold_once
-- Claims the key, releases an active hold and audits it (ledger_release_hold_once); answers the
-- claim and the released hold in the same round trip.
SELECT o.claimed, o.stored_method, o.stored_hash, o.stored_response,
       h.user_id, h.hold_id, h.currency_code, h.amount_micros, h.status, h.description, h.reference,
       h.captured_micros, h.capture_transaction_id, h.request_id, h.created_at, h.expire_at, h.resolved_at,
       h.read_at
  FROM ledger_release_hold_once(%(user_id)s, %(hold_id)s, %(request_id)s, %(actor)s, %(method)s,
                                %(request_hash)s, %(audit_actor)s, %(audit_action)s, %(audit_request_id)s,
                                %(audit_summary)s::jsonb) o
  LEFT JOIN LATERAL ledger_hold_answer(%(user_id)s, %(hold_id)s) h ON o.claimed;
