-- Current source: the audit trail's functions and triggers (tables: migrations 0001, 0006, 0012).
--
-- The trail is append-only and tamper-evident: events are hash-chained in 32 parallel chains
-- (the full rule and why 32: 0006_audit_chain.sql; qdata_server.audit_chain verifies it). Every
-- event, from Python (qdata_server.audit, through queries/common.sql) and from plpgsql
-- (usage_record) alike, is written by audit_append below (or by its set form audit_append_many,
-- usage_record_many's); the chain trigger decides each event's place and hash.

CREATE OR REPLACE FUNCTION audit_events_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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

-- Links each new event after its chain's head and moves the head. Runs as the owner (the serving
-- role may not touch audit_chain_heads), with the search path fixed to this schema (pg_temp last,
-- so a temporary table of the caller cannot stand in for one of ours).
CREATE OR REPLACE FUNCTION audit_events_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    head audit_chain_heads;
BEGIN
    -- The transaction's own chain (subtransactions share the top-level transaction id).
    SELECT * INTO head FROM audit_chain_heads
     WHERE chain_shard = (txid_current() % 32)::smallint
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit chain head % is missing; the audit trail cannot be extended', txid_current() % 32;
    END IF;
    -- Whatever the caller supplied, the chain decides these.
    NEW.chain_shard := head.chain_shard;
    NEW.chain_seq := head.last_seq + 1;
    NEW.prev_hash := head.last_hash;
    NEW.hash := audit_event_hash(NEW.prev_hash, NEW.chain_shard, NEW.chain_seq, NEW.audit_event_id,
                                 NEW.occurred_at, NEW.actor, NEW.user_id, NEW.action, NEW.target_type,
                                 NEW.target_id, NEW.request_id, NEW.summary);
    UPDATE audit_chain_heads SET last_seq = NEW.chain_seq, last_hash = NEW.hash
     WHERE chain_shard = head.chain_shard;
    RETURN NEW;
END;
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_events_chain() SET search_path = %I, pg_temp', current_schema());
END;
$$;
CREATE OR REPLACE TRIGGER audit_events_chain
    BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_chain();

-- Heads move forward through the trigger but never disappear.
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
