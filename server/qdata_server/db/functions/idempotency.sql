-- Current source: request-id idempotency records (table idempotency_keys: migrations 0001, 0009).
--
-- The one implementation of claiming a request's key and storing its first answer, called by the
-- Python path (qdata_server.idempotency, through queries/common.sql) and by plpgsql
-- (usage_record_batch) alike; usage_record_many claims a whole batch's keys with one INSERT of
-- the same rows (and reads taken keys back the same way). A claim and the change it guards commit or vanish together; a
-- concurrent claim of the same key waits on the primary key until the first transaction ends. The
-- caller compares the stored method and fingerprint with its own (qdata_server.idempotency's
-- check_same_request: REQUEST_ID_REUSED when they differ) and answers the stored response.

-- Claims (p_user, p_actor, p_request_id) for the calling transaction: claimed is true when this
-- call took it (store the answer with idempotency_store before commit); false with the stored
-- method, fingerprint and response when a committed request holds it. A record purged between
-- the two statements (a retention shorter than a transaction) is claimed again.
CREATE OR REPLACE FUNCTION idempotency_claim(
    p_user uuid, p_actor text, p_request_id text, p_method text, p_request_hash bytea,
    OUT claimed boolean, OUT stored_method text, OUT stored_hash bytea, OUT stored_response bytea
)
LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        INSERT INTO idempotency_keys (user_id, actor, request_id, method, request_hash, response)
        VALUES (p_user, p_actor, p_request_id, p_method, p_request_hash, ''::bytea)
        ON CONFLICT (user_id, actor, request_id) DO NOTHING;
        IF FOUND THEN
            claimed := true;
            RETURN;
        END IF;
        SELECT k.method, k.request_hash, k.response INTO stored_method, stored_hash, stored_response
          FROM idempotency_keys k
         WHERE k.user_id = p_user AND k.actor = p_actor AND k.request_id = p_request_id;
        IF FOUND THEN
            claimed := false;
            RETURN;
        END IF;
    END LOOP;
END;
$$;

-- Stores the answers of keys the calling transaction claimed (one or many, by position). One
-- primary-key update per key: a join of the arrays with the table is planned from statistics that
-- lag behind a table growing by every request, and its plans (a scan of every key of the actor,
-- with the row-security check on each) cost more the larger the table grows.
CREATE OR REPLACE FUNCTION idempotency_store(
    p_actor text, p_users uuid[], p_request_ids text[], p_responses bytea[]
) RETURNS void
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_request_ids, 1), 0) LOOP
        UPDATE idempotency_keys SET response = p_responses[i]
         WHERE user_id = p_users[i] AND actor = p_actor AND request_id = p_request_ids[i];
    END LOOP;
END;
$$;
