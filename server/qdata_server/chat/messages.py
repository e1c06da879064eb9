"""Chat messages: append, list (append order or one branch), get, delete and export.

Sequence numbers: AppendMessages locks the session row (SELECT ... FOR UPDATE) before it numbers
its messages from the row's last_sequence_number, and moves the counters in the same transaction.
Concurrent appends to one session therefore queue on that row and commit in number order: no gap,
no duplicate, and a reader paging upwards never sees a number before the lower ones are visible.
The cost is independent of the session's length (no count, no max over the messages).

Branches: each message names its parent (0 for a root) and children always have higher numbers,
so the messages form a tree; a branch is the path from a root to a leaf. Each message also records
its depth and a jump pointer (chat/tree.py), so a page of a branch in either direction costs
O(page + log depth) primary-key lookups, however long the branch or the session.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from qdata.v1 import chat_pb2
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import audit
from qdata_server.chat import convert, rules, tree
from qdata_server.chat.sessions import audit_session, load_session, message_not_found, require_session_ids, session_ids
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_all, fetch_one, fetch_row
from qdata_server.db.transactions import acting_for
from qdata_server.errors import InvalidArgument
from qdata_server.pagination import page_size
from qdata_server.validation import Violations

if TYPE_CHECKING:
    from qdata_server.config import Settings
    from qdata_server.deps import Deps

# Sequence numbers are bigint; "no upper bound" is one past the largest.
NO_UPPER_BOUND = 2**63 - 1
EXPORT_PAGE_SIZE = 100
# How much deeper than a page an ascending branch window may grow over deleted messages.
_MAX_WINDOW_GROWTH = 4
_SCOPES = {chat_pb2.MESSAGE_SCOPE_UNSPECIFIED, chat_pb2.MESSAGE_SCOPE_ALL, chat_pb2.MESSAGE_SCOPE_BRANCH}
_ORDERS = {chat_pb2.MESSAGE_ORDER_UNSPECIFIED, chat_pb2.MESSAGE_ORDER_ASCENDING, chat_pb2.MESSAGE_ORDER_DESCENDING}


def response_budget(settings: Settings) -> int:
    """Bytes of messages one response may carry and still fit the maximum gRPC message size."""
    return settings.max_message_bytes - rules.RESPONSE_HEADROOM_BYTES


async def append_messages(deps: Deps, request: chat_pb2.AppendMessagesRequest) -> chat_pb2.AppendMessagesResponse:
    v = Violations()
    user_id, session_id = session_ids(v, "user_id", request.user_id, "session_id", request.session_id)
    parent = None
    if request.HasField("parent_sequence_number"):
        parent = rules.check_bound(v, "parent_sequence_number", request.parent_sequence_number)
    messages = list(request.messages)
    too_large = rules.check_messages(
        v,
        messages,
        max_content_bytes=deps.settings.chat_max_content_bytes,
        max_total_bytes=response_budget(deps.settings),
    )
    if v:
        raise InvalidArgument(v.items, reason=ErrorReason.ERROR_REASON_CONTENT_TOO_LARGE if too_large else None)
    assert user_id is not None and session_id is not None  # no violations
    columns: dict[str, list[Any]] = {
        "roles": [rules.ROLE_TO_DB[m.role] for m in messages],
        "contents": [m.content for m in messages],
        "model_ids": [m.model_id for m in messages],
        "input_tokens": [m.input_tokens for m in messages],
        "output_tokens": [m.output_tokens for m in messages],
        "tool_calls": [rules.tool_calls_json(m) for m in messages],
        "tool_call_ids": [m.tool_call_id for m in messages],
    }
    keys = {"user_id": user_id, "session_id": session_id}

    async def work(conn: Conn) -> chat_pb2.AppendMessagesResponse:
        session = await load_session(conn, user_id, session_id, for_update=True)
        # The current leaf is live (or 0) by the session's invariant; a named parent must be.
        first_parent = session["current_leaf"] if parent is None else parent
        known: dict[int, tree.Place] = {}
        if first_parent:
            chain = await fetch_all(conn, "chat_message_jump_chain", {**keys, "sequence_number": first_parent})
            if not chain or chain[0]["deleted_at"] is not None:
                raise message_not_found()
            known = tree.places_by_number(chain)
        first = session["last_sequence_number"] + 1
        places = tree.chain_places(first_parent, known, first, len(messages))
        rows = await fetch_all(
            conn,
            "insert_chat_messages",
            {
                **keys,
                **columns,
                "first": first,
                "parent": first_parent,
                "depths": [p.depth for p in places],
                "jump_sequence_numbers": [p.jump_sequence_number for p in places],
                "jump_depths": [p.jump_depth for p in places],
            },
        )
        updated = await fetch_row(
            conn,
            "count_chat_append",
            {
                **keys,
                "count": len(messages),
                "input_tokens": sum(columns["input_tokens"]),
                "output_tokens": sum(columns["output_tokens"]),
            },
        )
        summary = {
            "first_sequence_number": first,
            "last_sequence_number": updated["last_sequence_number"],
            "parent_sequence_number": first_parent,
        }
        await audit_session(conn, "chat.AppendMessages", user_id, session_id, summary)
        rows.sort(key=lambda r: r["sequence_number"])
        return chat_pb2.AppendMessagesResponse(
            messages=[convert.message(r) for r in rows], session=convert.session(updated)
        )

    return await deps.idempotent(request, chat_pb2.AppendMessagesResponse, work, user_id=user_id)


async def list_messages(deps: Deps, request: chat_pb2.ListMessagesRequest) -> chat_pb2.ListMessagesResponse:
    v = Violations()
    user_id, session_id = session_ids(v, "user_id", request.user_id, "session_id", request.session_id)
    if request.scope not in _SCOPES:
        v.add("scope", "is not a known MessageScope")
    if request.order not in _ORDERS:
        v.add("order", "is not a known MessageOrder")
    branch = request.scope == chat_pb2.MESSAGE_SCOPE_BRANCH
    leaf = request.leaf_sequence_number
    if leaf < 0:
        v.add("leaf_sequence_number", "must not be negative (0 means the session's current leaf)")
    elif leaf and not branch:
        v.add("leaf_sequence_number", "must be 0 unless scope is MESSAGE_SCOPE_BRANCH")
    after = rules.check_bound(v, "after_sequence_number", request.after_sequence_number)
    before = rules.check_bound(v, "before_sequence_number", request.before_sequence_number)
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    v.raise_if_any()
    assert user_id is not None and session_id is not None  # raise_if_any() passed
    limit = page_size(request.page_size)
    descending = request.order == chat_pb2.MESSAGE_ORDER_DESCENDING
    filters = {
        "user_id": str(user_id),
        "session_id": str(session_id),
        "branch": branch,
        "leaf": leaf,
        "descending": descending,
        "after": after,
        "before": before,
    }
    tokens = await deps.page_tokens()
    cursor = tokens.open(request.page_token, "ListMessages", filters)
    lower, upper = after, before or NO_UPPER_BOUND
    if cursor:
        if descending:
            upper = min(upper, cursor[0])
        else:
            lower = max(lower, cursor[0])
    keys = {"user_id": user_id, "session_id": session_id}
    bounds = {"after": lower, "before": upper, "limit": limit + 1}

    async def work(conn: Conn) -> tuple[list[dict[str, Any]], int]:
        session = await load_session(conn, user_id, session_id)
        if not branch:
            name = "list_chat_messages_descending" if descending else "list_chat_messages_ascending"
            return await fetch_all(conn, name, {**keys, **bounds}), 0
        # A branch keeps the leaf it was first listed with, so its pages stay one branch.
        end = cursor[1] if cursor else (leaf or session["current_leaf"])
        if leaf > session["last_sequence_number"]:
            raise message_not_found()
        if end == 0:
            return [], 0
        if descending:
            # The cursor is the last message listed, on the branch: the walk goes on from there.
            start = cursor[0] if cursor else end
            return await fetch_all(conn, "list_chat_branch_descending", {**keys, **bounds, "start": start}), end
        return await _branch_ascending(conn, {**keys, "start": end}, lower, upper, limit + 1), end

    rows, end = await deps.transaction(work, acting=acting_for(user_id))
    messages, more = convert.size_bounded(rows, limit, response_budget(deps.settings))
    next_token = ""
    if more:
        next_token = tokens.seal("ListMessages", filters, [messages[-1].sequence_number, end])
    return chat_pb2.ListMessagesResponse(messages=messages, next_page_token=next_token)


async def _branch_ascending(
    conn: Conn, keys: dict[str, Any], after: int, before: int, wanted: int
) -> list[dict[str, Any]]:
    """Up to wanted live messages of a branch numbered between the bounds, root first.

    list_chat_branch_ascending returns the next levels of the branch, deleted messages included,
    so a window holds fewer live messages than levels when some were deleted. The next window
    starts below the last one and is deeper, up to _MAX_WINDOW_GROWTH times wanted: a long run
    of deleted messages takes a few windows, not one per message, and a window never reads the
    content of more than that many live messages for a page that keeps fewer.
    """
    found: list[dict[str, Any]] = []
    levels = wanted
    while True:
        window = await fetch_all(
            conn, "list_chat_branch_ascending", {**keys, "after": after, "before": before, "limit": levels}
        )
        found += [row for row in window if row["deleted_at"] is None]
        if len(found) >= wanted or not window or window[-1]["sequence_number"] == window[-1]["branch_end"]:
            return found[:wanted]
        after = window[-1]["sequence_number"]
        levels = min(2 * levels, _MAX_WINDOW_GROWTH * wanted)


def _message_key(
    request: chat_pb2.GetMessageRequest | chat_pb2.DeleteMessageRequest,
) -> tuple[uuid.UUID, uuid.UUID, int]:
    """The (user_id, session_id, sequence_number) that names one message, or INVALID_ARGUMENT."""
    v = Violations()
    user_id, session_id = session_ids(v, "user_id", request.user_id, "session_id", request.session_id)
    sequence_number = rules.check_sequence_number(v, "sequence_number", request.sequence_number)
    v.raise_if_any()
    assert user_id is not None and session_id is not None  # raise_if_any() passed
    return user_id, session_id, sequence_number


async def get_message(deps: Deps, request: chat_pb2.GetMessageRequest) -> chat_pb2.GetMessageResponse:
    user_id, session_id, sequence_number = _message_key(request)

    async def work(conn: Conn) -> dict[str, Any]:
        await load_session(conn, user_id, session_id)
        params = {"user_id": user_id, "session_id": session_id, "sequence_number": sequence_number}
        row = await fetch_one(conn, "get_live_chat_message", params)
        if row is None:
            raise message_not_found()
        return row

    return chat_pb2.GetMessageResponse(
        message=convert.message(await deps.transaction(work, acting=acting_for(user_id)))
    )


async def delete_message(deps: Deps, request: chat_pb2.DeleteMessageRequest) -> chat_pb2.DeleteMessageResponse:
    user_id, session_id, sequence_number = _message_key(request)
    keys = {"user_id": user_id, "session_id": session_id}

    async def work(conn: Conn) -> chat_pb2.DeleteMessageResponse:
        session = await load_session(conn, user_id, session_id, for_update=True)
        erased = await fetch_one(conn, "erase_chat_message", {**keys, "sequence_number": sequence_number})
        if erased is None:
            raise message_not_found()
        leaf = session["current_leaf"]
        if leaf == sequence_number:
            parent = erased["parent_sequence_number"]
            leaf = 0
            if parent:
                found = await fetch_row(conn, "nearest_live_chat_ancestor", {**keys, "start": parent})
                leaf = found["sequence_number"]
        updated = await fetch_row(
            conn,
            "count_chat_deletion",
            {
                **keys,
                "input_tokens": erased["input_tokens"],
                "output_tokens": erased["output_tokens"],
                "current_leaf": leaf,
            },
        )
        await audit.record(
            conn,
            action="chat.DeleteMessage",
            target_type="chat_message",
            target_id=f"{session_id}/{sequence_number}",
            user_id=user_id,
            summary={"current_leaf_sequence_number": leaf},
        )
        return chat_pb2.DeleteMessageResponse(session=convert.session(updated))

    return await deps.idempotent(request, chat_pb2.DeleteMessageResponse, work, user_id=user_id)


async def export_session(
    deps: Deps, request: chat_pb2.ExportSessionRequest
) -> AsyncIterator[chat_pb2.ExportSessionResponse]:
    """The session, then its live messages in order, one short transaction per chunk.

    No transaction stays open while a chunk travels to a slow reader. The end is fixed when the
    export starts (messages appended later are left out); if the session is deleted meanwhile, the
    stream ends with SESSION_NOT_FOUND instead of looking complete.
    """
    user_id, session_id = require_session_ids(request.user_id, request.session_id)
    keys: dict[str, uuid.UUID | None] = {"user_id": user_id, "session_id": session_id}
    budget = response_budget(deps.settings)

    async def first(conn: Conn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        session = await load_session(conn, user_id, session_id)
        rows = await fetch_all(
            conn,
            "list_chat_messages_ascending",
            {**keys, "after": 0, "before": session["last_sequence_number"] + 1, "limit": EXPORT_PAGE_SIZE + 1},
        )
        return session, rows

    session, rows = await deps.transaction(first, acting=acting_for(user_id))
    end = session["last_sequence_number"] + 1
    messages, more = convert.size_bounded(rows, EXPORT_PAGE_SIZE, budget)
    yield chat_pb2.ExportSessionResponse(session=convert.session(session), messages=messages)
    while more:
        params = {**keys, "after": messages[-1].sequence_number, "before": end, "limit": EXPORT_PAGE_SIZE + 1}

        async def chunk(conn: Conn, params: dict[str, Any] = params) -> list[dict[str, Any]]:
            rows = await fetch_all(conn, "list_chat_messages_ascending", params)
            if not rows:
                await load_session(conn, user_id, session_id)  # deleted meanwhile: SESSION_NOT_FOUND
            return rows

        rows = await deps.transaction(chunk, acting=acting_for(user_id))
        if not rows:
            return
        messages, more = convert.size_bounded(rows, EXPORT_PAGE_SIZE, budget)
        yield chat_pb2.ExportSessionResponse(messages=messages)
