"""ListMessages(scope=BRANCH) at real sizes: pages in both orders across a long branch with side
branches and deleted messages, and the plan of every branch walk on fresh table statistics."""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from qdata.v1 import chat_pb2
from qdata_server.chat.messages import NO_UPPER_BOUND
from qdata_server.db.sql import query
from qdata_server.db.transactions import acting_for
from tests.support.calls import create_user, rid
from tests.support.chat import append, create_session, list_page, numbers
from tests.support.database import sql
from tests.support.server import serving_url

BRANCH = chat_pb2.MESSAGE_SCOPE_BRANCH
DESC = chat_pb2.MESSAGE_ORDER_DESCENDING


class Tree:
    """The session as the test built it: each message's parent and whether it was deleted."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.deleted: set[int] = set()

    def add(self, reply: chat_pb2.AppendMessagesResponse) -> list[int]:
        for m in reply.messages:
            self.parent[m.sequence_number] = m.parent_sequence_number
        return numbers(reply.messages)

    def branch(self, leaf: int, after: int = 0, before: int = 0) -> list[int]:
        """The live messages from the root down to leaf, within the bounds, root first."""
        path = []
        while leaf:
            path.append(leaf)
            leaf = self.parent[leaf]
        return [n for n in reversed(path) if n not in self.deleted and n > after and (not before or n < before)]


async def pages(api, session: chat_pb2.Session, **fields: Any) -> list[list[int]]:
    """The sequence numbers of every page ListMessages returns, following the tokens to the end."""
    found, token = [], ""
    while True:
        reply = await list_page(api, session, scope=BRANCH, page_token=token, **fields)
        found.append(numbers(reply.messages))
        token = reply.next_page_token
        if not token:
            return found
        assert len(found) < 1000, "pagination does not end"


async def assert_pages(api, session: chat_pb2.Session, expected: list[int], page_size: int, **fields: Any) -> None:
    """Both orders page through exactly expected: full pages, nothing skipped or repeated."""
    for order, want in ((chat_pb2.MESSAGE_ORDER_ASCENDING, expected), (DESC, expected[::-1])):
        got = await pages(api, session, page_size=page_size, order=order, **fields)
        assert [n for page in got for n in page] == want, (order, fields)
        # Every page but the last is full (deleted messages must not shorten one), and the last
        # is not empty unless the branch is.
        assert all(len(page) == page_size for page in got[:-1]), ([len(p) for p in got], order, fields)
        assert got[-1] or not want


async def test_branch_pages_in_both_orders_across_side_branches_and_deletions(api):
    user = await create_user(api)
    session = await create_session(api, user.id)
    tree = Tree()
    main: list[int] = []
    side_leaves: list[int] = []
    for batch in range(12):
        reply = await append(api, session, *[f"main {batch}.{i}" for i in range(50)], parent=main[-1] if main else 0)
        main += tree.add(reply)
        # A regeneration or an edit in the middle of the batch: a side branch of 1 to 3 messages.
        side = await append(api, session, *[f"side {batch}.{i}" for i in range(batch % 3 + 1)], parent=main[-33])
        side_leaves.append(tree.add(side)[-1])
    # A side branch of a side branch, and a second tree (a new root).
    side_leaves.append(tree.add(await append(api, session, "deeper", "deeper still", parent=side_leaves[4] - 1))[-1])
    second_root = tree.add(await append(api, session, "another root", "its answer", parent=0))[-1]
    assert len(main) == 600

    # Deleted messages: one long run on the main branch (longer than two windows of a page), a
    # message every 37 further down, one at the start and one fork point.
    for n in main[200:330] + main[350::37] + [main[0], main[-33 - 50]]:
        await api.chat.DeleteMessage(
            chat_pb2.DeleteMessageRequest(request_id=rid(), user_id=user.id, session_id=session.id, sequence_number=n)
        )
        tree.deleted.add(n)

    leaf = main[-1]
    expected = tree.branch(leaf)
    assert len(expected) == 600 - 130 - 7 - 2
    for page_size in (50, 7):
        await assert_pages(api, session, expected, page_size, leaf_sequence_number=leaf)
    for side_leaf in side_leaves:
        await assert_pages(api, session, tree.branch(side_leaf), 50, leaf_sequence_number=side_leaf)
    # A leaf in the middle of the branch, a deleted leaf, the second tree's leaf.
    for middle in (main[299], main[420], main[100], second_root):
        await assert_pages(api, session, tree.branch(middle), 13, leaf_sequence_number=middle)
    # Bounds inside the branch, on either side of the deleted run, and off the branch.
    for after, before in ((main[150], main[480]), (main[210], main[320]), (main[599], 0), (0, main[0] + 1)):
        want = tree.branch(leaf, after, before)
        await assert_pages(
            api,
            session,
            want,
            13,
            leaf_sequence_number=leaf,
            after_sequence_number=after,
            before_sequence_number=before,
        )
    # The current leaf (the second tree's, after its append) is the default.
    await assert_pages(api, session, tree.branch(second_root), 1)


# ---- Plans on fresh statistics ----------------------------------------------------------------------


def explained_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes, todo = [], [plan]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return nodes


def rows_touched(nodes: list[dict[str, Any]]) -> int:
    """Rows the scans of chat_messages read: returned plus filtered out, over all their loops."""
    total = 0.0
    for node in nodes:
        if node.get("Relation Name") == "chat_messages":
            read = (
                node["Actual Rows"]
                + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Index Recheck", 0)
            )
            total += read * node["Actual Loops"]
    return round(total)


def numbered(text: str) -> tuple[str, list[str]]:
    """text with %(name)s placeholders as $1, $2, ... (for PREPARE) and the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, text), names


async def explain(conn: psycopg.AsyncConnection, user_id: str, name: str, params: dict[str, Any], generic: bool):
    """EXPLAIN ANALYZE of a named query in a transaction opened as the server opens its own.

    generic: the plan PostgreSQL caches for a prepared statement (the server prepares a query
    after its 5th use), else the plan for these very values.
    """
    async with conn.transaction(force_rollback=True):
        await conn.execute(
            query("begin_transaction"),
            {**acting_for(uuid.UUID(user_id)).settings(), "statement_timeout": None, "clock": ""},
        )
        if not generic:
            cur = await conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query(name), params)
        else:
            text, names = numbered(query(name))
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute(pgsql.SQL("PREPARE {} AS ").format(pgsql.Identifier(name)) + pgsql.SQL(text))
            values = pgsql.SQL(", ").join(pgsql.Literal(params[n]) for n in names)
            statement = pgsql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {} ({})")
            cur = await conn.execute(statement.format(pgsql.Identifier(name), values))
        [row] = await cur.fetchall()
        if generic:
            await conn.execute(pgsql.SQL("DEALLOCATE {}").format(pgsql.Identifier(name)))
    [document] = row["QUERY PLAN"]
    return explained_nodes(document["Plan"])


async def test_branch_walks_are_key_lookups_whatever_the_statistics(fresh_api):
    # A database of its own: its chat_messages must never have been analyzed, and the module's
    # may have been, by autovacuum after the earlier tests' rows were deleted.
    api = fresh_api
    # Right after a bulk append, before any ANALYZE: autovacuum stays away from this table, so
    # the planner knows nothing about its 2,000 rows (the state that made every walk step rescan
    # the session).
    await sql(api, "ALTER TABLE chat_messages SET (autovacuum_enabled = off)")
    user = await create_user(api)
    session = await create_session(api, user.id)
    main: list[int] = []
    for batch in range(20):
        reply = await append(
            api, session, *[f"message {batch}.{i}" for i in range(100)], parent=main[-1] if main else 0
        )
        main += numbers(reply.messages)
        if batch % 4 == 1:
            await append(api, session, "a side branch", "of two", parent=main[-50])
    leaf, middle = main[-1], main[1000]
    page = 51  # ListMessages reads one more than the page to know whether another follows
    cases = {
        "the last 50": ("list_chat_branch_descending", {"start": leaf, "after": 0, "before": NO_UPPER_BOUND}),
        "a descending page after a token": (
            "list_chat_branch_descending",
            {"start": middle, "after": 0, "before": middle},
        ),
        "the first 50": ("list_chat_branch_ascending", {"start": leaf, "after": 0, "before": NO_UPPER_BOUND}),
        "an ascending page after a token": (
            "list_chat_branch_ascending",
            {"start": leaf, "after": middle, "before": NO_UPPER_BOUND},
        ),
        "an ascending page within bounds": (
            "list_chat_branch_ascending",
            {"start": leaf, "after": 100, "before": middle},
        ),
    }
    others = {
        "placing appended messages": ("chat_message_jump_chain", {"sequence_number": leaf}),
        "the nearest live ancestor": ("nearest_live_chat_ancestor", {"start": leaf}),
    }
    keys = {"user_id": user.id, "session_id": session.id, "limit": page}

    async with await psycopg.AsyncConnection.connect(serving_url(api.database_url), row_factory=dict_row) as conn:
        for statistics in ("fresh", "analyzed"):
            [stats] = await sql(api, "SELECT reltuples FROM pg_class WHERE oid = 'chat_messages'::regclass")
            assert (stats["reltuples"] < 0) == (statistics == "fresh")  # -1: never analyzed
            for label, (name, params) in {**cases, **others}.items():
                for generic in (False, True):
                    nodes = await explain(conn, user.id, name, {**keys, **params}, generic)
                    where = (label, statistics, "generic" if generic else "custom")
                    kinds = {n["Node Type"] for n in nodes}
                    assert not kinds & {"Seq Scan", "Bitmap Heap Scan", "Hash Join", "Merge Join"}, (where, kinds)
                    for scan in (n for n in nodes if n.get("Relation Name") == "chat_messages"):
                        # A lookup by the whole key, never a range over the session.
                        assert scan["Index Name"] == "chat_messages_pkey", where
                        assert "sequence_number =" in scan["Index Cond"], (where, scan["Index Cond"])
                    touched = rows_touched(nodes)
                    if label in cases:
                        assert page <= touched <= 3 * page, (where, touched)
                    else:
                        assert touched <= page, (where, touched)
            await sql(api, "ANALYZE chat_messages")
