-- Listing orders that follow commit order, so a reader paging newest first cannot skip a row.
--
-- ListTransactions and ListAuditEvents page newest first with keyset cursors. They used to order
-- by values fixed when a row was written (created_at = now(), the writing transaction's start;
-- audit_event_id, drawn from a sequence): a transaction that wrote earlier but committed later
-- landed behind a cursor already handed out, and a reader polling newest first never saw it.
--
-- Ledger transactions: each user has a position counter (ledger_positions). Every ledger
-- transaction takes the next position of its owner, and a transfer also the next position of its
-- counterparty, under the counter row's lock, held until commit. A user's positions therefore
-- become visible in increasing order: a transaction committed after a page was read sorts above
-- every row of that page. The counter is per user, not per account, so one order spans all of a
-- user's currencies; a user's movements already queue on the account lock, so the counter adds
-- no waiting within one currency.
--
-- Audit events: one order across all users would need one lock held by every mutation until
-- commit. Instead each event records the id of the transaction that wrote it (written_xid), and a
-- listing shows only events whose transaction id lies below the reader's snapshot horizon
-- (pg_snapshot_xmin): every transaction that could still commit an event there has ended. Events
-- are ordered by (written_xid, audit_event_id), so an event that appears later always sorts above
-- the events already listed. The price: the newest events appear once every transaction that
-- obtained its id before theirs has ended (milliseconds normally; as long as the oldest open
-- writing transaction on the PostgreSQL cluster otherwise).

CREATE TABLE ledger_positions (
    user_id       uuid   NOT NULL,
    last_position bigint NOT NULL,
    CONSTRAINT ledger_positions_pkey PRIMARY KEY (user_id),
    CONSTRAINT ledger_positions_positive CHECK (last_position > 0)
);

ALTER TABLE ledger_transactions
    ADD COLUMN owner_position        bigint,
    ADD COLUMN counterparty_position bigint;

-- Backfill: each user's existing transactions (owned and received) in their old listing order.
ALTER TABLE ledger_transactions DISABLE TRIGGER ledger_transactions_immutable;
WITH sides AS (
    SELECT user_id AS positioned, user_id, transaction_id, created_at, true AS owner_side
      FROM ledger_transactions
    UNION ALL
    SELECT counterparty_user_id, user_id, transaction_id, created_at, false
      FROM ledger_transactions WHERE counterparty_user_id IS NOT NULL
), numbered AS (
    SELECT user_id, transaction_id, owner_side,
           row_number() OVER (PARTITION BY positioned ORDER BY created_at, transaction_id) AS position
      FROM sides
)
UPDATE ledger_transactions t
   SET owner_position = CASE WHEN n.owner_side THEN n.position ELSE t.owner_position END,
       counterparty_position = CASE WHEN n.owner_side THEN t.counterparty_position ELSE n.position END
  FROM numbered n
 WHERE t.user_id = n.user_id AND t.transaction_id = n.transaction_id;
ALTER TABLE ledger_transactions ENABLE TRIGGER ledger_transactions_immutable;

INSERT INTO ledger_positions (user_id, last_position)
SELECT positioned, max(position)
  FROM (SELECT user_id AS positioned, owner_position AS position FROM ledger_transactions
        UNION ALL
        SELECT counterparty_user_id, counterparty_position FROM ledger_transactions
         WHERE counterparty_user_id IS NOT NULL) p
 GROUP BY positioned;

ALTER TABLE ledger_transactions
    ALTER COLUMN owner_position SET NOT NULL,
    ADD CONSTRAINT ledger_transactions_counterparty_position_consistent CHECK (
        (counterparty_user_id IS NULL) = (counterparty_position IS NULL));
CREATE UNIQUE INDEX ledger_transactions_owner_position_key ON ledger_transactions (user_id, owner_position);
CREATE UNIQUE INDEX ledger_transactions_counterparty_position_key
    ON ledger_transactions (counterparty_user_id, counterparty_position) WHERE counterparty_user_id IS NOT NULL;

-- Assigns the positions of a new transaction. The counters are taken in user_id order, the order
-- in which the ledger locks accounts, so two transactions never wait on each other's counters in a
-- cycle. Runs as the owner: the serving role has no right on ledger_positions.
CREATE FUNCTION ledger_transactions_position() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    positioned uuid;
    taken bigint;
BEGIN
    FOR positioned IN
        SELECT u FROM unnest(ARRAY[NEW.user_id, NEW.counterparty_user_id]) AS u WHERE u IS NOT NULL ORDER BY u
    LOOP
        INSERT INTO ledger_positions AS p (user_id, last_position) VALUES (positioned, 1)
        ON CONFLICT ON CONSTRAINT ledger_positions_pkey DO UPDATE SET last_position = p.last_position + 1
        RETURNING p.last_position INTO taken;
        IF positioned = NEW.user_id THEN
            NEW.owner_position := taken;
        ELSE
            NEW.counterparty_position := taken;
        END IF;
    END LOOP;
    RETURN NEW;
END;
$$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION ledger_transactions_position() SET search_path = %I, pg_temp', current_schema());
END;
$$;
REVOKE EXECUTE ON FUNCTION ledger_transactions_position() FROM PUBLIC;
CREATE TRIGGER ledger_transactions_position BEFORE INSERT ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_transactions_position();

-- Read-only for the serving role, under the same policies as every user-owned table (0007).
GRANT SELECT ON ledger_positions TO qdata_service;
ALTER TABLE ledger_positions ENABLE ROW LEVEL SECURITY;
CREATE POLICY ledger_positions_acting_users ON ledger_positions TO qdata_service
    USING (user_id = ANY (qdata_acting_users())) WITH CHECK (user_id = ANY (qdata_acting_users()));
CREATE POLICY ledger_positions_all_users ON ledger_positions TO qdata_service
    USING (qdata_acting_for_all_users()) WITH CHECK (qdata_acting_for_all_users());

-- Existing events keep NULL (they order as written_xid 0, by id); new ones record their writer.
-- No rewrite of the append-only, hash-chained table: the default applies to new rows only.
ALTER TABLE audit_events ADD COLUMN written_xid bigint;
ALTER TABLE audit_events ALTER COLUMN written_xid SET DEFAULT pg_current_xact_id()::text::bigint;
CREATE INDEX audit_events_written_order_idx ON audit_events ((coalesce(written_xid, 0)) DESC, audit_event_id DESC);
CREATE INDEX audit_events_user_written_order_idx
    ON audit_events (user_id, (coalesce(written_xid, 0)) DESC, audit_event_id DESC);
