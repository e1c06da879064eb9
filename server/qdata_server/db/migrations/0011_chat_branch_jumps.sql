-- Branch pages whose cost does not grow with the session: each message records its depth and one
-- jump pointer (Myers' skew-binary rule; qdata_server/chat/tree.py explains it and sets them on
-- append). From any message, the ancestor at a given depth, or the deepest one numbered at most
-- some bound, is then O(log depth) lookups of the primary key by its full value, so
-- ListMessages(scope=BRANCH) reaches any page of a branch without walking the rest of it.
--
-- No index is needed: every step of the walks is a primary-key lookup. Deleted messages keep
-- their place like their number: children go on jumping through them.

ALTER TABLE chat_messages
    -- Number of messages on the path from the root to this one, itself included (a root is 1).
    ADD COLUMN depth                bigint,
    -- An ancestor farther up than the parent (or the parent itself); 0 stands for "above the root".
    ADD COLUMN jump_sequence_number bigint,
    -- That ancestor's depth (0 for "above the root"), so a walk can decide without reading it.
    ADD COLUMN jump_depth           bigint;

-- Backfill with the same rule, parents before children (a parent's number is always lower). One
-- pass over the messages; each costs one or two primary-key lookups and an update (100,000
-- messages took 5.6 s on the development machine), all under the lock ALTER TABLE took above.
DO $$
DECLARE
    m record;
    parent record;
    parent_jump_depth_next bigint;
    parent_jump_next bigint;
BEGIN
    FOR m IN
        SELECT user_id, session_id, sequence_number, parent_sequence_number
          FROM chat_messages
         ORDER BY user_id, session_id, sequence_number
    LOOP
        IF m.parent_sequence_number = 0 THEN
            UPDATE chat_messages SET depth = 1, jump_sequence_number = 0, jump_depth = 0
             WHERE user_id = m.user_id AND session_id = m.session_id AND sequence_number = m.sequence_number;
            CONTINUE;
        END IF;
        SELECT p.sequence_number, p.depth, p.jump_sequence_number, p.jump_depth
          INTO parent
          FROM chat_messages p
         WHERE p.user_id = m.user_id AND p.session_id = m.session_id AND p.sequence_number = m.parent_sequence_number;
        parent_jump_next := 0;
        parent_jump_depth_next := 0;
        IF parent.jump_sequence_number <> 0 THEN
            SELECT j.jump_sequence_number, j.jump_depth
              INTO parent_jump_next, parent_jump_depth_next
              FROM chat_messages j
             WHERE j.user_id = m.user_id AND j.session_id = m.session_id
               AND j.sequence_number = parent.jump_sequence_number;
        END IF;
        IF parent.depth - parent.jump_depth = parent.jump_depth - parent_jump_depth_next THEN
            UPDATE chat_messages
               SET depth = parent.depth + 1, jump_sequence_number = parent_jump_next, jump_depth = parent_jump_depth_next
             WHERE user_id = m.user_id AND session_id = m.session_id AND sequence_number = m.sequence_number;
        ELSE
            UPDATE chat_messages
               SET depth = parent.depth + 1, jump_sequence_number = parent.sequence_number, jump_depth = parent.depth
             WHERE user_id = m.user_id AND session_id = m.session_id AND sequence_number = m.sequence_number;
        END IF;
    END LOOP;
END
$$;

ALTER TABLE chat_messages
    ALTER COLUMN depth SET NOT NULL,
    ALTER COLUMN jump_sequence_number SET NOT NULL,
    ALTER COLUMN jump_depth SET NOT NULL,
    ADD CONSTRAINT chat_messages_depth_valid CHECK (
        depth BETWEEN 1 AND sequence_number AND (depth = 1) = (parent_sequence_number = 0)),
    ADD CONSTRAINT chat_messages_jump_above CHECK (
        jump_sequence_number BETWEEN 0 AND parent_sequence_number
        AND jump_depth BETWEEN 0 AND depth - 1
        AND (jump_sequence_number = 0) = (jump_depth = 0));
