-- The audit hash chain leaves the write path: events are appended unsealed, chained after commit.
--
-- Until now the BEFORE INSERT trigger linked every event into its chain inside the writer's
-- transaction, holding the chain head's row lock until commit (11 hash calls and a hot row per
-- mutation). From here on the trigger only stamps the writer's transaction id (written_xid, as
-- since 0012) and leaves the chain columns NULL; one sealer (audit_seal() in
-- functions/audit.sql, run by every server in the background and by `qdata-server seal-audit`)
-- chains, in batches, the unsealed events of every transaction older than all transactions still
-- running, in (written_xid, audit_event_id) order, onto the same 32 chains and heads (chain
-- written_xid % 32), with the same hash formula (0006). An event is sealed once: its chain
-- columns go from NULL to set, never back (the append-only trigger allows nothing else).
--
-- Events chained before this migration keep their places; sealed_at stays NULL for them (they
-- were sealed as they were written). The NOT NULLs become one CHECK: the four chain columns are
-- all set or all NULL, and an unsealed event knows its writer.

ALTER TABLE audit_events
    ALTER COLUMN chain_shard DROP NOT NULL,
    ALTER COLUMN chain_seq DROP NOT NULL,
    ALTER COLUMN prev_hash DROP NOT NULL,
    ALTER COLUMN hash DROP NOT NULL,
    -- When the sealer chained the event (NULL: unsealed, or chained by the trigger before 0017).
    ADD COLUMN sealed_at timestamptz NULL,
    ADD CONSTRAINT audit_events_chain_complete CHECK (
        (chain_shard IS NULL) = (chain_seq IS NULL)
        AND (chain_seq IS NULL) = (prev_hash IS NULL)
        AND (prev_hash IS NULL) = (hash IS NULL)
        AND (chain_seq IS NOT NULL OR written_xid IS NOT NULL)
    ) NOT VALID;

ALTER TABLE audit_events VALIDATE CONSTRAINT audit_events_chain_complete;

-- The sealer's scan: only unsealed events, in the order they are chained (small: the backlog).
CREATE INDEX audit_events_unsealed_idx ON audit_events (written_xid, audit_event_id) WHERE chain_seq IS NULL;
