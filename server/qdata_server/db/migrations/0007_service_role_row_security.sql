-- The serving role and row-level security.
--
-- Two roles touch this schema. The owner (whoever runs `migrate`) owns every table and function.
-- The server serves as a login role that is a member of the group role qdata_service, which
-- owns nothing and holds only the rights granted below: it cannot UPDATE or DELETE audit events,
-- ledger transactions, postings or price versions, cannot create tables, and cannot read a usage
-- partition except through usage_records.
--
-- Row-level security is defense in depth behind the server's own WHERE clauses. Every
-- transaction the server runs starts by naming whom it acts for, in transaction-local settings
-- sent in the same round trip as its first statement (db/transactions.py):
--   qdata.acting_users  a uuid[] literal: the users whose rows the transaction may see and change
--                       (the nil UUID stands for "no user": idempotency records and audit events
--                       of requests made for nobody, such as catalog changes);
--   qdata.all_users     'on' only for the named cross-user paths (statistics, VerifyLedger,
--                       ListAuditEvents, ListUsers, login by email, the background sweepers).
-- With neither set, the serving role sees no user's rows at all. The owner is not subject to
-- these policies (it does not FORCE them): operator commands such as verify-audit and
-- rewrap-keys run as the owner.
--
-- qdata_service is created here when missing; a database administrator can create it beforehand
-- (CREATE ROLE qdata_service NOLOGIN) when the owner may not create roles. Roles are cluster-wide:
-- several qdata databases on one cluster share the group role, each granting it rights on its own
-- tables only.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'qdata_service') THEN
        CREATE ROLE qdata_service NOLOGIN;
    END IF;
END;
$$;

-- Whom the current transaction acts for (see above). Inlined by the planner into each policy, so
-- a policy's comparison with user_id stays usable as an index condition.
CREATE FUNCTION qdata_acting_users() RETURNS uuid[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('qdata.acting_users', true), ''), '{}')::uuid[]
$$;

-- True only in a transaction the server runs on a cross-user path.
CREATE FUNCTION qdata_acting_for_all_users() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(current_setting('qdata.all_users', true), '') = 'on'
$$;

-- A payment provider's reference credits at most once, whoever the user: the deposit that finds
-- it taken names the transaction holding it, which may be another user's. This lookup, and only
-- it, reads across users with the owner's rights.
CREATE FUNCTION ledger_external_reference_holder(p_external_reference text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT transaction_id FROM ledger_transactions WHERE external_reference = p_external_reference
$$;

-- Functions that must act as the owner, with a search path fixed to this schema (pg_temp last,
-- so a temporary table of the caller cannot stand in for one of ours):
--   audit_events_chain                moves the chain heads, which the serving role may not touch;
--   usage_create_partition            partitions are the owner's (the serving role cannot create
--                                     tables);
--   ledger_external_reference_holder  (above) the one cross-user lookup inside a user's deposit.
ALTER FUNCTION audit_events_chain() SECURITY DEFINER;
ALTER FUNCTION usage_create_partition(timestamptz) SECURITY DEFINER;
DO $$
DECLARE
    definer text;
BEGIN
    FOREACH definer IN ARRAY ARRAY['audit_events_chain()', 'usage_create_partition(timestamptz)',
                                   'ledger_external_reference_holder(text)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', definer, current_schema());
    END LOOP;
END;
$$;
REVOKE EXECUTE ON FUNCTION usage_create_partition(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_create_partition(timestamptz) TO qdata_service;
REVOKE EXECUTE ON FUNCTION ledger_external_reference_holder(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger_external_reference_holder(text) TO qdata_service;

DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO qdata_service', current_schema());
END;
$$;
GRANT SELECT ON schema_migrations TO qdata_service;
-- Lookup only (usage_record checks whether a month's partition exists): the partitions themselves
-- grant nothing, so they are reachable only through usage_records and its policies.
GRANT USAGE ON SCHEMA usage_partitions TO qdata_service;

-- Table rights: exactly the statements the server runs. Append-only tables get no UPDATE or
-- DELETE; rollups need UPDATE for their upserts.
GRANT SELECT, INSERT, UPDATE ON users TO qdata_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON user_preferences TO qdata_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO qdata_service;
GRANT SELECT, INSERT ON audit_events TO qdata_service;
GRANT SELECT, INSERT ON server_secrets TO qdata_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON user_api_keys TO qdata_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON chat_sessions TO qdata_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON chat_messages TO qdata_service;
GRANT SELECT, INSERT, UPDATE ON ledger_accounts TO qdata_service;
GRANT SELECT, INSERT ON ledger_transactions TO qdata_service;
GRANT SELECT, INSERT ON ledger_postings TO qdata_service;
GRANT SELECT, INSERT, UPDATE ON ledger_holds TO qdata_service;
GRANT SELECT, INSERT, UPDATE ON models TO qdata_service;
GRANT SELECT, INSERT ON model_prices TO qdata_service;
GRANT SELECT, INSERT ON usage_records TO qdata_service;
GRANT SELECT, INSERT, DELETE ON usage_rollup_queue TO qdata_service;
GRANT SELECT, INSERT, UPDATE ON usage_model_hours, usage_model_days, usage_latency_hours, usage_latency_days,
    usage_model_user_months, usage_model_user_days, usage_user_days TO qdata_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON model_ratings TO qdata_service;
GRANT SELECT, INSERT, UPDATE ON model_rating_totals TO qdata_service;
GRANT USAGE ON SEQUENCE audit_events_audit_event_id_seq TO qdata_service;

-- Every table that holds a user's rows: RLS on, one policy for the users the transaction acts
-- for, one for the cross-user paths. Permissive policies add up (OR).
DO $$
DECLARE
    owned text;
    -- Table and the expression naming the user(s) a row belongs to, for reading and for writing.
    -- A transfer and all its postings are visible to both its sender (the owner) and its
    -- recipient (the counterparty); only the owner's transactions write them.
    spec text[];
    specs text[] := ARRAY[
        ARRAY['users', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['user_preferences', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['idempotency_keys', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['audit_events',
              'coalesce(user_id, ''00000000-0000-0000-0000-000000000000'') = ANY (qdata_acting_users())',
              'coalesce(user_id, ''00000000-0000-0000-0000-000000000000'') = ANY (qdata_acting_users())'],
        ARRAY['user_api_keys', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['chat_sessions', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['chat_messages', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['ledger_accounts', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['ledger_transactions',
              'user_id = ANY (qdata_acting_users()) OR counterparty_user_id = ANY (qdata_acting_users())',
              'user_id = ANY (qdata_acting_users())'],
        ARRAY['ledger_postings',
              'user_id = ANY (qdata_acting_users()) OR EXISTS (SELECT FROM ledger_transactions t'
              ' WHERE t.user_id = ledger_postings.user_id AND t.transaction_id = ledger_postings.transaction_id'
              ' AND t.counterparty_user_id = ANY (qdata_acting_users()))',
              'user_id = ANY (qdata_acting_users())'],
        ARRAY['ledger_holds', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['usage_records', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['usage_rollup_queue', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['usage_model_user_months', 'user_id = ANY (qdata_acting_users())',
              'user_id = ANY (qdata_acting_users())'],
        ARRAY['usage_model_user_days', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['usage_user_days', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['model_ratings', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())']
    ];
BEGIN
    FOREACH spec SLICE 1 IN ARRAY specs LOOP
        owned := spec[1];
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', owned);
        EXECUTE format('CREATE POLICY %I ON %I TO qdata_service USING (%s) WITH CHECK (%s)',
                       owned || '_acting_users', owned, spec[2], spec[3]);
        EXECUTE format('CREATE POLICY %I ON %I TO qdata_service USING (qdata_acting_for_all_users()) '
                       'WITH CHECK (qdata_acting_for_all_users())', owned || '_all_users', owned);
    END LOOP;
END;
$$;

-- As in 0003_ledger.sql, but the taken reference is looked up through the function above.
CREATE OR REPLACE FUNCTION ledger_deposit(
    p_user uuid, p_amount bigint, p_currency text, p_source text, p_external_reference text,
    p_description text, p_request_id text
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    earlier uuid;
BEGIN
    IF p_external_reference <> '' THEN
        -- Deposits of one reference queue here, so a later one sees the earlier one committed
        -- (and names it) instead of failing on the unique index with its raw message.
        PERFORM pg_advisory_xact_lock(hashtextextended('ledger_external_reference:' || p_external_reference, 0));
        earlier := ledger_external_reference_holder(p_external_reference);
        IF earlier IS NOT NULL THEN
            PERFORM ledger_reject('ledger_transactions_external_reference_key', earlier::text);
        END IF;
    END IF;
    PERFORM ledger_lock_account(p_user, p_currency);
    PERFORM ledger_credit_account(p_user, p_currency, p_amount);
    RETURN ledger_insert_transaction(
        p_user, 'deposit', p_amount, p_currency,
        NULL, CASE p_source WHEN 'promotion' THEN 'promotions' ELSE 'payments_received' END,
        p_user, NULL, NULL, p_description, '', p_external_reference, p_source, NULL, NULL, p_request_id);
END;
$$;
