"""Chat sessions: create, read, list, update (field mask, branch switch) and delete.

Every call names the user it acts for, and every query filters by that user: a session of another
user answers NOT_FOUND exactly like one that does not exist. Mutations write their audit record
(field names and numbers only, never titles, metadata or content) in their own transaction, and go
through Deps.idempotent scoped to the user.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from qdata.v1 import chat_pb2
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import audit
from qdata_server.chat import convert, rules
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_all, fetch_one, fetch_row
from qdata_server.db.transactions import acting_for
from qdata_server.errors import NotFound, invalid
from qdata_server.pagination import keyset, page_size
from qdata_server.users.accounts import load_live_user, user_not_found
from qdata_server.validation import Violations, mask_paths

if TYPE_CHECKING:
    from qdata_server.deps import Deps

_UPDATABLE_PATHS = {"title", "model_id", "pinned", "archived", "tags", "metadata", "current_leaf_sequence_number"}
_ARCHIVED = {
    chat_pb2.ARCHIVE_FILTER_UNSPECIFIED: False,
    chat_pb2.ARCHIVE_FILTER_EXCLUDE: False,
    chat_pb2.ARCHIVE_FILTER_INCLUDE: None,
    chat_pb2.ARCHIVE_FILTER_ONLY: True,
}


def session_not_found() -> NotFound:
    return NotFound("session not found", reason=ErrorReason.ERROR_REASON_SESSION_NOT_FOUND)


def message_not_found() -> NotFound:
    return NotFound("message not found", reason=ErrorReason.ERROR_REASON_MESSAGE_NOT_FOUND)


async def load_session(
    conn: Conn, user_id: uuid.UUID, session_id: uuid.UUID, *, for_update: bool = False
) -> dict[str, Any]:
    """The user's session row (locked with for_update), or NOT_FOUND (SESSION_NOT_FOUND)."""
    params = {"user_id": user_id, "session_id": session_id}
    row = await fetch_one(conn, "lock_chat_session" if for_update else "get_chat_session", params)
    if row is None:
        raise session_not_found()
    return row


def session_ids(
    v: Violations, user_field: str, user_value: str, session_field: str, session_value: str
) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """Parses the (user_id, session_id) pair every session-scoped request carries."""
    return v.uuid(user_field, user_value), v.uuid(session_field, session_value)


def require_session_ids(user_value: str, session_value: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The (user_id, session_id) pair of a request that carries nothing else to check."""
    v = Violations()
    user_id, session_id = session_ids(v, "user_id", user_value, "session_id", session_value)
    v.raise_if_any()
    assert user_id is not None and session_id is not None  # raise_if_any() passed
    return user_id, session_id


async def audit_session(
    conn: Conn, action: str, user_id: uuid.UUID, session_id: uuid.UUID, summary: dict[str, Any] | None = None
) -> None:
    """Records an audit event about one of the user's chat sessions."""
    await audit.record(
        conn, action=action, target_type="chat_session", target_id=str(session_id), user_id=user_id, summary=summary
    )


async def create_session(deps: Deps, request: chat_pb2.CreateSessionRequest) -> chat_pb2.CreateSessionResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    values: dict[str, Any] = {
        "user_id": user_id,
        "model_id": rules.check_model_id(v, "model_id", request.model_id),
        "title": rules.check_title(v, "title", request.title),
        "metadata": Jsonb(rules.check_metadata(v, "metadata", request.metadata)),
        "tags": rules.normalize_tags(v, "tags", request.tags),
        "pinned": request.pinned,
    }
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed

    async def work(conn: Conn) -> chat_pb2.CreateSessionResponse:
        # Share-locks the user: a DeleteUser running now either sees this session or makes it fail.
        if await fetch_one(conn, "share_live_chat_user", {"user_id": user_id}) is None:
            raise user_not_found()
        row = await fetch_row(conn, "insert_chat_session", values)
        summary = {"tags": len(values["tags"]), "metadata_entries": len(request.metadata)}
        await audit_session(conn, "chat.CreateSession", user_id, row["session_id"], summary)
        return chat_pb2.CreateSessionResponse(session=convert.session(row))

    return await deps.idempotent(request, chat_pb2.CreateSessionResponse, work, user_id=user_id)


async def get_session(deps: Deps, request: chat_pb2.GetSessionRequest) -> chat_pb2.GetSessionResponse:
    user_id, session_id = require_session_ids(request.user_id, request.session_id)
    row = await deps.transaction(lambda conn: load_session(conn, user_id, session_id), acting=acting_for(user_id))
    return chat_pb2.GetSessionResponse(session=convert.session(row))


async def list_sessions(deps: Deps, request: chat_pb2.ListSessionsRequest) -> chat_pb2.ListSessionsResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    if len(request.tags) > rules.MAX_TAGS:
        v.add("tags", f"may name at most {rules.MAX_TAGS} tags")
    tags = rules.normalize_tags(v, "tags", request.tags[: rules.MAX_TAGS])
    if request.archive_filter not in _ARCHIVED:
        v.add("archive_filter", "is not a known ArchiveFilter")
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed
    limit = page_size(request.page_size)
    pinned = request.pinned if request.HasField("pinned") else None
    archived = _ARCHIVED[request.archive_filter]
    filters = {"user_id": str(user_id), "tags": tags, "pinned": pinned, "archived": archived}
    tokens = await deps.page_tokens()
    cursor = tokens.open(request.page_token, "ListSessions", filters)

    async def work(conn: Conn) -> list[dict[str, Any]]:
        await load_live_user(conn, user_id)
        # The filters the page token is bound to, the user's id as a UUID.
        params = {**filters, "user_id": user_id, **keyset(cursor, "after_activity after_session_id", limit)}
        return await fetch_all(conn, "list_chat_sessions", params)

    rows = await deps.transaction(work, acting=acting_for(user_id))
    rows, next_token = tokens.page(
        rows,
        limit,
        "ListSessions",
        filters,
        lambda last: [last["last_activity_at"].isoformat(), str(last["session_id"])],
    )
    return chat_pb2.ListSessionsResponse(sessions=[convert.session(r) for r in rows], next_page_token=next_token)


async def update_session(deps: Deps, request: chat_pb2.UpdateSessionRequest) -> chat_pb2.UpdateSessionResponse:
    paths = mask_paths("update_mask", list(request.update_mask.paths), _UPDATABLE_PATHS, prefixes=("metadata.",))
    given = request.session
    v = Violations()
    user_id, session_id = session_ids(v, "session.user_id", given.user_id, "session.id", given.id)
    if "title" in paths:
        rules.check_title(v, "session.title", given.title)
    if "model_id" in paths:
        rules.check_model_id(v, "session.model_id", given.model_id)
    tags = rules.normalize_tags(v, "session.tags", given.tags) if "tags" in paths else []
    metadata_keys = [p[len("metadata.") :] for p in paths if p.startswith("metadata.")]
    if "metadata" in paths and metadata_keys:
        v.add("update_mask", "must not name both 'metadata' and 'metadata.<key>'")
    for key in metadata_keys:
        if not rules.metadata_key_ok(key):
            v.add("update_mask", f"{'metadata.' + key[:64]!r}: metadata {rules.METADATA_KEY_RULE}")
    if "metadata" in paths:
        rules.check_metadata(v, "session.metadata", given.metadata)
    elif metadata_keys:
        rules.check_metadata(
            v, "session.metadata", {k: given.metadata[k] for k in metadata_keys if k in given.metadata}
        )
    if "current_leaf_sequence_number" in paths:
        rules.check_sequence_number(v, "session.current_leaf_sequence_number", given.current_leaf_sequence_number)
    v.raise_if_any()
    assert user_id is not None and session_id is not None  # raise_if_any() passed

    async def work(conn: Conn) -> chat_pb2.UpdateSessionResponse:
        row = await load_session(conn, user_id, session_id, for_update=True)
        values = _merge(row, given, paths, tags, metadata_keys)
        if len(values["metadata"]) > rules.MAX_METADATA_ENTRIES:
            raise invalid("session.metadata", f"may hold at most {rules.MAX_METADATA_ENTRIES} entries after the update")
        if "current_leaf_sequence_number" in paths:
            params = {"user_id": user_id, "session_id": session_id, "sequence_number": values["current_leaf"]}
            if await fetch_one(conn, "get_live_chat_message", params) is None:
                raise message_not_found()
        updated = await fetch_row(
            conn, "update_chat_session", {**values, "metadata": Jsonb(values["metadata"]), "user_id": user_id}
        )
        # Field names and the non-personal values only (no title, model or metadata values).
        summary: dict[str, Any] = {"fields": sorted(paths)}
        for path, column in (
            ("pinned", "pinned"),
            ("archived", "archived"),
            ("current_leaf_sequence_number", "current_leaf"),
        ):
            if path in paths:
                summary[path] = values[column]
        await audit_session(conn, "chat.UpdateSession", user_id, session_id, summary)
        return chat_pb2.UpdateSessionResponse(session=convert.session(updated))

    return await deps.idempotent(request, chat_pb2.UpdateSessionResponse, work, user_id=user_id)


def _merge(
    row: dict[str, Any], given: chat_pb2.Session, paths: list[str], tags: list[str], metadata_keys: list[str]
) -> dict[str, Any]:
    """The session's updatable columns after applying the masked fields of given to row."""
    values = {
        "session_id": row["session_id"],
        "title": given.title if "title" in paths else row["title"],
        "model_id": given.model_id if "model_id" in paths else row["model_id"],
        "pinned": given.pinned if "pinned" in paths else row["pinned"],
        "archived": given.archived if "archived" in paths else row["archived"],
        "tags": tags if "tags" in paths else row["tags"],
        "metadata": dict(given.metadata) if "metadata" in paths else dict(row["metadata"]),
        "current_leaf": (
            given.current_leaf_sequence_number if "current_leaf_sequence_number" in paths else row["current_leaf"]
        ),
    }
    for key in metadata_keys:
        if key in given.metadata:
            values["metadata"][key] = given.metadata[key]
        else:
            values["metadata"].pop(key, None)
    return values


async def delete_session(deps: Deps, request: chat_pb2.DeleteSessionRequest) -> chat_pb2.DeleteSessionResponse:
    user_id, session_id = require_session_ids(request.user_id, request.session_id)

    async def work(conn: Conn) -> chat_pb2.DeleteSessionResponse:
        row = await fetch_one(conn, "delete_chat_session", {"user_id": user_id, "session_id": session_id})
        if row is None:
            raise session_not_found()
        await audit_session(conn, "chat.DeleteSession", user_id, session_id)
        return chat_pb2.DeleteSessionResponse()

    return await deps.idempotent(request, chat_pb2.DeleteSessionResponse, work, user_id=user_id)
