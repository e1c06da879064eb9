-- Current source: the audit trail's functions and triggers (tables: migrations 0001, 0006, 0012,
-- 0017).
--
-- The trail is append-only and tamper-evident: events are hash-chained in 32 parallel chains
-- (the hash: 0006_audit_chain.sql; qdata_server.audit_chain verifies it). Every event, from
-- Python (qdata_server.audit, through queries/common.sql) and from plpgsql (usage_record) alike,
-- is written by audit_append below (or by its set form audit_append_many, usage_record_many's),
-- unsealed: the insert trigger only stamps the writer's transaction. audit_seal chains events
-- after their transactions end, in batches, one sealer at a time (0017_audit_sealer.sql;
-- qdata_server.audit_sealer runs it; docs/security.md).

-- Refuses every change to an event except its sealing: chain columns going from unset to set,
-- nothing else touched (audit_seal; the serving role may not UPDATE the table at all).
CREATE OR REPLACE FUNCTION audit_events_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.chain_seq IS NULL AND NEW.chain_seq IS NOT NULL
           AND (NEW.audit_event_id, NEW.occurred_at, NEW.actor, NEW.user_id, NEW.action, NEW.target_type,
                NEW.target_id, NEW.request_id, NEW.summary, NEW.written_xid)
               IS NOT DISTINCT FROM
               (OLD.audit_event_id, OLD.occurred_at, OLD.actor, OLD.user_id, OLD.action, OLD.target_type,
                OLD.target_id, OLD.request_id, OLD.summary, OLD.written_xid) THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only'
        USING ERRCODE = 'insufficient_privilege', CONSTRAINT = 'audit_events_append_only';
END;
$$;

CREATE OR REPLACE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_forbid_change();
CREATE OR REPLACE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_forbid_change();

-- The hashed encoding of one field: 4-byte big-endian length of its UTF-8 text, then the text
-- (length 0xFFFFFFFF and no text for NULL).
CREATE OR REPLACE FUNCTION audit_hash_field(value text) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL THEN '\xffffffff'::bytea
                ELSE int4send(octet_length(convert_to(value, 'UTF8'))) || convert_to(value, 'UTF8') END
$$;

-- An event's hash (the formula is in 0006_audit_chain.sql).
CREATE OR REPLACE FUNCTION audit_event_hash(
    p_prev bytea, p_shard smallint, p_seq bigint, p_id bigint, p_time timestamptz, p_actor text, p_user uuid,
    p_action text, p_target_type text, p_target_id text, p_request_id text, p_summary jsonb
) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sha256(
        convert_to('qdata.audit.v1', 'UTF8') || p_prev
        || audit_hash_field(p_shard::text)
        || audit_hash_field(p_seq::text)
        || audit_hash_field(p_id::text)
        || audit_hash_field(to_char(p_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
        || audit_hash_field(p_actor)
        || audit_hash_field(p_user::text)
        || audit_hash_field(p_action)
        || audit_hash_field(p_target_type)
        || audit_hash_field(p_target_id)
        || audit_hash_field(p_request_id)
        || audit_hash_field(p_summary::text))
$$;

-- Stamps each new event with its writer's transaction (top-level, so subtransactions share it)
-- and leaves it unsealed: whatever the caller supplied, the sealer decides the chain columns. No
-- lock and no hash on the write path. (The trigger keeps its name from 0006, so a build that
-- predates 0017 finds the same trigger, never a second one.)
CREATE OR REPLACE FUNCTION audit_events_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.written_xid := pg_current_xact_id()::text::bigint;
    NEW.chain_shard := NULL;
    NEW.chain_seq := NULL;
    NEW.prev_hash := NULL;
    NEW.hash := NULL;
    NEW.sealed_at := NULL;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER audit_events_chain
    BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_chain();

-- Chains up to p_limit unsealed events; returns how many it sealed (0 when another sealer holds
-- the seal lock: one sealer at a time, the others skip their round).
--
-- Which events: those whose writing transaction is older than every transaction still running
-- (written_xid below the snapshot's xmin). Such a transaction has ended, so its events are all
-- visible now or never will be (rolled back), and no event can join that set later: every
-- transaction that has yet to commit has an id at or above xmin. Sealing that set in
-- (written_xid, audit_event_id) order therefore skips nothing (a transaction that commits after
-- one with a higher id is simply sealed in a later round, once it has ended) and seals each event
-- once (the update requires chain_seq IS NULL, under the seal lock and the heads' row locks).
-- Events visible with a written_xid at or above the snapshot's xmax cannot come from a
-- transaction of this cluster (none had that id yet): they were restored from another cluster's
-- dump, committed there, and are sealed too (otherwise they would wait for this cluster's ids to
-- catch up). An event goes on chain written_xid % 32, the chain the trigger used before 0017,
-- after the chain's head, which moves with it.
CREATE OR REPLACE FUNCTION audit_seal(p_limit integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    seqs bigint[];
    hashes bytea[];
    moved boolean[];
    head record;
    ev record;
    shard integer;
    next_hash bytea;
    sealed integer := 0;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'audit_seal needs a positive limit' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Each statement below must see what the previous sealer committed.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'audit_seal runs under READ COMMITTED only' USING ERRCODE = 'invalid_transaction_state';
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtextextended('qdata.audit_seal', 0)) THEN
        RETURN 0;
    END IF;
    IF NOT EXISTS (SELECT FROM audit_events
                    WHERE chain_seq IS NULL
                      AND (written_xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                           OR written_xid >= pg_snapshot_xmax(pg_current_snapshot())::text::bigint)) THEN
        RETURN 0;
    END IF;
    -- Every head, in order (a writer of a build before 0017 locks one head, so no deadlock).
    FOR head IN SELECT chain_shard, last_seq, last_hash FROM audit_chain_heads ORDER BY chain_shard FOR UPDATE LOOP
        seqs[head.chain_shard] := head.last_seq;
        hashes[head.chain_shard] := head.last_hash;
        moved[head.chain_shard] := false;
    END LOOP;
    FOR ev IN
        SELECT audit_event_id, written_xid, occurred_at, actor, user_id, action, target_type, target_id,
               request_id, summary
          FROM audit_events
         WHERE chain_seq IS NULL
           AND (written_xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                OR written_xid >= pg_snapshot_xmax(pg_current_snapshot())::text::bigint)
         ORDER BY written_xid, audit_event_id
         LIMIT p_limit
    LOOP
        shard := (ev.written_xid % 32)::integer;
        IF seqs[shard] IS NULL THEN
            RAISE EXCEPTION 'audit chain head % is missing; the audit trail cannot be extended', shard;
        END IF;
        next_hash := audit_event_hash(hashes[shard], shard::smallint, seqs[shard] + 1, ev.audit_event_id,
                                      ev.occurred_at, ev.actor, ev.user_id, ev.action, ev.target_type,
                                      ev.target_id, ev.request_id, ev.summary);
        UPDATE audit_events
           SET chain_shard = shard, chain_seq = seqs[shard] + 1, prev_hash = hashes[shard], hash = next_hash,
               sealed_at = clock_timestamp()
         WHERE audit_event_id = ev.audit_event_id AND chain_seq IS NULL;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'audit event % was sealed meanwhile by something other than audit_seal', ev.audit_event_id;
        END IF;
        seqs[shard] := seqs[shard] + 1;
        hashes[shard] := next_hash;
        moved[shard] := true;
        sealed := sealed + 1;
    END LOOP;
    UPDATE audit_chain_heads
       SET last_seq = seqs[chain_shard], last_hash = hashes[chain_shard]
     WHERE moved[chain_shard];
    RETURN sealed;
END;
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_seal(integer) SET search_path = %I, pg_temp', current_schema());
END;
$$;
REVOKE EXECUTE ON FUNCTION audit_seal(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_seal(integer) TO qdata_service;

-- Heads move forward through audit_seal but never disappear.
CREATE OR REPLACE FUNCTION audit_chain_heads_forbid_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_chain_heads cannot be deleted'
        USING ERRCODE = 'insufficient_privilege', CONSTRAINT = 'audit_events_append_only';
END;
$$;

CREATE OR REPLACE TRIGGER audit_chain_heads_no_delete
    BEFORE DELETE ON audit_chain_heads
    FOR EACH ROW EXECUTE FUNCTION audit_chain_heads_forbid_delete();
CREATE OR REPLACE TRIGGER audit_chain_heads_no_truncate
    BEFORE TRUNCATE ON audit_chain_heads
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_heads_forbid_delete();

-- The chain heads, read with the owner's rights (the serving role may not read audit_chain_heads)
-- for the serving role's scheduled verification (qdata_server.verify_schedule); read-only, search
-- path fixed as for audit_events_chain.
CREATE OR REPLACE FUNCTION audit_chain_heads_read()
RETURNS TABLE (chain_shard smallint, last_seq bigint, last_hash bytea)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT h.chain_shard, h.last_seq, h.last_hash FROM audit_chain_heads h ORDER BY h.chain_shard
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_chain_heads_read() SET search_path = %I, pg_temp', current_schema());
END;
$$;
REVOKE EXECUTE ON FUNCTION audit_chain_heads_read() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_chain_heads_read() TO qdata_service;

-- Appends one audit event in the caller's transaction (the one way events are written). The
-- summary names what changed, never a password, secret or personal value.
CREATE OR REPLACE FUNCTION audit_append(
    p_actor text, p_user uuid, p_action text, p_target_type text, p_target_id text, p_request_id text,
    p_summary jsonb
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO audit_events (actor, user_id, action, target_type, target_id, request_id, summary)
    VALUES (p_actor, p_user, p_action, p_target_type, p_target_id, p_request_id, p_summary)
$$;

-- Appends one event per element of the arrays, in their order, in the caller's transaction: the
-- set form of audit_append for a writer of many rows at once (usage_record_many), same rows.
CREATE OR REPLACE FUNCTION audit_append_many(
    p_actor text, p_users uuid[], p_action text, p_target_type text, p_target_ids text[], p_request_ids text[],
    p_summaries jsonb[]
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO audit_events (actor, user_id, action, target_type, target_id, request_id, summary)
    SELECT p_actor, e.user_id, p_action, p_target_type, e.target_id, e.request_id, e.summary
      FROM unnest(p_users, p_target_ids, p_request_ids, p_summaries) WITH ORDINALITY AS e(user_id, target_id, request_id, summary, n)
     ORDER BY e.n
$$;
