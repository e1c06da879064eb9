-- Tamper-evident audit trail: audit events are hash-chained, in 32 parallel chains.
--
-- Each event belongs to one chain (chain_shard) at one position (chain_seq, 1, 2, 3, ... with no
-- gaps) and carries the hash of the event before it in its chain:
--
--   hash = sha256('qdata.audit.v1' || prev_hash || field(shard) || field(seq) || field(id)
--                 || field(time) || field(actor) || field(user_id) || field(action)
--                 || field(target_type) || field(target_id) || field(request_id) || field(summary))
--
-- where field(x) is the 4-byte big-endian length of x's UTF-8 text followed by that text
-- (length 0xFFFFFFFF and no text for NULL), time is UTC "YYYY-MM-DDTHH:MI:SS.ffffffZ", user_id is
-- the lower-case UUID text and summary is the jsonb's canonical text. A chain's first prev_hash is
-- 32 zero bytes. qdata_server.audit_chain recomputes every chain the same way (`verify-audit`).
--
-- No forks: the BEFORE INSERT trigger locks its chain's row in audit_chain_heads (last position
-- and hash), links the event after it and moves the head; the row lock is held until commit. A
-- row lock rather than an advisory lock plus "read the newest event": it is correct under any
-- isolation level (a REPEATABLE READ writer gets a retryable serialization failure, not a fork),
-- transaction-scoped (fine behind PgBouncer in transaction mode), and the heads let the verifier
-- see events deleted from the end of a chain.
--
-- Why 32 chains: one chain makes every mutation in the service wait for the previous one's
-- commit (measured: Deposit throughput -44%, p99 x3 at 32 concurrent calls; see README). The
-- chain is picked by the transaction id (txid % 32), so all events of one transaction go to one
-- chain: concurrent transactions rarely share a chain, and a transaction never holds two heads,
-- so the chains add no deadlock. The chain count can grow later by adding head rows and changing
-- the modulus in audit_events_chain(); existing chains just continue.

-- One row per chain: its newest event's position and hash. Updated only by audit_events_chain().
CREATE TABLE audit_chain_heads (
    chain_shard smallint NOT NULL,
    last_seq    bigint   NOT NULL,
    last_hash   bytea    NOT NULL,
    CONSTRAINT audit_chain_heads_pkey PRIMARY KEY (chain_shard),
    CONSTRAINT audit_chain_heads_shard_range CHECK (chain_shard BETWEEN 0 AND 1023),
    CONSTRAINT audit_chain_heads_seq_nonnegative CHECK (last_seq >= 0),
    CONSTRAINT audit_chain_heads_hash_length CHECK (octet_length(last_hash) = 32)
);

CREATE FUNCTION audit_hash_field(value text) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL THEN '\xffffffff'::bytea
                ELSE int4send(octet_length(convert_to(value, 'UTF8'))) || convert_to(value, 'UTF8') END
$$;

CREATE FUNCTION audit_event_hash(
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

ALTER TABLE audit_events
    ADD COLUMN chain_shard smallint,
    ADD COLUMN chain_seq   bigint,
    ADD COLUMN prev_hash   bytea,
    ADD COLUMN hash        bytea;

-- Backfill: the events that exist now form chain 0, in id order (ADD COLUMN holds an ACCESS
-- EXCLUSIVE lock, so no event is written meanwhile). The append-only trigger is off only for
-- these UPDATEs; ALTER TABLE's lock keeps every other session out until it is on again.
ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete;
DO $$
DECLARE
    r   record;
    h   bytea  := decode(repeat('00', 32), 'hex');
    seq bigint := 0;
BEGIN
    FOR r IN SELECT * FROM audit_events ORDER BY audit_event_id LOOP
        seq := seq + 1;
        UPDATE audit_events
           SET chain_shard = 0,
               chain_seq = seq,
               prev_hash = h,
               hash = audit_event_hash(h, 0::smallint, seq, r.audit_event_id, r.occurred_at, r.actor, r.user_id,
                                       r.action, r.target_type, r.target_id, r.request_id, r.summary)
         WHERE audit_event_id = r.audit_event_id
        RETURNING hash INTO h;
    END LOOP;
    INSERT INTO audit_chain_heads (chain_shard, last_seq, last_hash) VALUES (0, seq, h);
    INSERT INTO audit_chain_heads (chain_shard, last_seq, last_hash)
    SELECT s, 0, decode(repeat('00', 32), 'hex') FROM generate_series(1, 31) AS s;
END;
$$;
ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update_delete;

ALTER TABLE audit_events
    ALTER COLUMN chain_shard SET NOT NULL,
    ALTER COLUMN chain_seq SET NOT NULL,
    ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL,
    ADD CONSTRAINT audit_events_hash_length CHECK (octet_length(prev_hash) = 32 AND octet_length(hash) = 32),
    -- One event per position: a fork cannot be stored. Also the verifier's walk order.
    ADD CONSTRAINT audit_events_chain_key UNIQUE (chain_shard, chain_seq);

CREATE FUNCTION audit_events_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
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
CREATE TRIGGER audit_events_chain
    BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_chain();

-- Heads move forward through the trigger but never disappear.
CREATE FUNCTION audit_chain_heads_forbid_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_chain_heads cannot be deleted'
        USING ERRCODE = 'insufficient_privilege', CONSTRAINT = 'audit_events_append_only';
END;
$$;
CREATE TRIGGER audit_chain_heads_no_delete
    BEFORE DELETE ON audit_chain_heads
    FOR EACH ROW EXECUTE FUNCTION audit_chain_heads_forbid_delete();
CREATE TRIGGER audit_chain_heads_no_truncate
    BEFORE TRUNCATE ON audit_chain_heads
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_heads_forbid_delete();

-- ListAuditEvents by action, newest first.
CREATE INDEX audit_events_action_idx ON audit_events (action, audit_event_id);
