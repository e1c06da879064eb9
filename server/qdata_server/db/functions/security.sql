-- Current source: row-level security, the defense in depth behind the server's own WHERE clauses
-- (the roles and their table rights: 0007_service_role_row_security.sql and later migrations).
--
-- Every transaction the server runs starts by naming whom it acts for, in transaction-local
-- settings sent in the same round trip as its first statement (db/transactions.py):
--   qdata.acting_users  a uuid[] literal: the users whose rows the transaction may see and change
--                       (the nil UUID stands for "no user": idempotency records and audit events
--                       of requests made for nobody, such as catalog changes);
--   qdata.all_users     'on' only for the named cross-user paths (statistics, VerifyLedger,
--                       ListAuditEvents, ListUsers, login by email, the background sweepers,
--                       ListBudgetAlerts for every user, the database-derived gauges).
-- With neither set, the serving role (qdata_service) sees no user's rows at all. The owner is not
-- subject to these policies (they are not FORCEd): operator commands such as verify-audit and
-- rewrap-keys run as the owner.
--
-- Every table that holds a user's rows is listed below: RLS on, one policy for the users the
-- transaction acts for, one for the cross-user paths (permissive policies add up: OR). A policy
-- cannot be replaced in place, so each is dropped and created again, in this file's transaction.
-- A new user-owned table gets its line here; a policy removed from here needs a migration that
-- drops it.

-- Whom the current transaction acts for (see above). Inlined by the planner into each policy, so
-- a policy's comparison with user_id stays usable as an index condition.
CREATE OR REPLACE FUNCTION qdata_acting_users() RETURNS uuid[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('qdata.acting_users', true), ''), '{}')::uuid[]
$$;

-- True only in a transaction the server runs on a cross-user path.
CREATE OR REPLACE FUNCTION qdata_acting_for_all_users() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(current_setting('qdata.all_users', true), '') = 'on'
$$;

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
        ARRAY['chat_imports', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
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
        -- Read-only for the serving role (ledger_transactions_position writes it as the owner).
        ARRAY['ledger_positions', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['usage_records', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['usage_rollup_queue', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['usage_model_user_months', 'user_id = ANY (qdata_acting_users())',
              'user_id = ANY (qdata_acting_users())'],
        ARRAY['usage_model_user_days', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['usage_user_days', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['model_ratings', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['import_log', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['chat_share_links', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['budgets', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['budget_periods', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['budget_spend_entries', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())'],
        ARRAY['budget_alerts', 'user_id = ANY (qdata_acting_users())', 'user_id = ANY (qdata_acting_users())']
    ];
BEGIN
    FOREACH spec SLICE 1 IN ARRAY specs LOOP
        owned := spec[1];
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', owned);
        EXECUTE format('DROP POLICY IF EXISTS %I ON %I', owned || '_acting_users', owned);
        -- qdata_acting_users() as a scalar subquery: evaluated once per statement (an InitPlan,
        -- still an index condition) instead of parsing the setting again for every row a
        -- statement checks, which costs about 0.35-0.4 us per acting user per row (measured: a
        -- RecordUsageBatch of 100 records for 32 users spent about 40% of its database time
        -- in its policies).
        EXECUTE format('CREATE POLICY %I ON %I TO qdata_service USING (%s) WITH CHECK (%s)',
                       owned || '_acting_users', owned,
                       replace(spec[2], 'qdata_acting_users()', '(SELECT qdata_acting_users())::uuid[]'),
                       replace(spec[3], 'qdata_acting_users()', '(SELECT qdata_acting_users())::uuid[]'));
        EXECUTE format('DROP POLICY IF EXISTS %I ON %I', owned || '_all_users', owned);
        EXECUTE format('CREATE POLICY %I ON %I TO qdata_service USING (qdata_acting_for_all_users()) '
                       'WITH CHECK (qdata_acting_for_all_users())', owned || '_all_users', owned);
    END LOOP;
END;
$$;

-- The share token path (ChatService GetSharedSession, ListSharedMessages) acts for no user: it
-- names the SHA-256 digest of the presented token in the transaction-local setting
-- qdata.share_token_digest (hex), and these three read-only policies let it see exactly the live
-- link with that digest (not revoked, not expired by the database's clock), its session's row,
-- and that session's messages numbered up to the link's snapshot: nothing of another session or
-- another link, and no write at all. The server's own queries narrow further (the shared branch,
-- live messages only). Each policy's subqueries do not depend on the row: they probe the unique
-- digest index once per statement, not once per row.
CREATE OR REPLACE FUNCTION qdata_share_token_digest() RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT decode(nullif(current_setting('qdata.share_token_digest', true), ''), 'hex')
$$;

DO $$
BEGIN
    DROP POLICY IF EXISTS chat_share_links_shared_token ON chat_share_links;
    CREATE POLICY chat_share_links_shared_token ON chat_share_links FOR SELECT TO qdata_service
        USING (token_digest = qdata_share_token_digest() AND revoked_at IS NULL
               AND (expire_at IS NULL OR expire_at > now()));
    DROP POLICY IF EXISTS chat_sessions_shared_token ON chat_sessions;
    CREATE POLICY chat_sessions_shared_token ON chat_sessions FOR SELECT TO qdata_service
        USING ((user_id, session_id) IN (SELECT l.user_id, l.session_id FROM chat_share_links l
                                          WHERE l.token_digest = qdata_share_token_digest()));
    DROP POLICY IF EXISTS chat_messages_shared_token ON chat_messages;
    CREATE POLICY chat_messages_shared_token ON chat_messages FOR SELECT TO qdata_service
        USING ((user_id, session_id) IN (SELECT l.user_id, l.session_id FROM chat_share_links l
                                          WHERE l.token_digest = qdata_share_token_digest())
               AND sequence_number <= (SELECT l.snapshot_sequence_number FROM chat_share_links l
                                        WHERE l.token_digest = qdata_share_token_digest()));
END;
$$;
