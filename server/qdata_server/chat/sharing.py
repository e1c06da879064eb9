"""Chat share links: read-only snapshots of a session that a token opens.

The owner's side (CreateShareLink, ListShareLinks, UpdateShareLink, RevokeShareLink) acts for the
owner like every other chat call. The token's side (GetSharedSession, ListSharedMessages) acts for
nobody: it names the SHA-256 digest of the presented token (name_share_token), and the
*_shared_token policies of db/functions/security.sql let that transaction see only the live link
with that digest, its session and the session's messages up to the snapshot.

Tokens are "qds_" and 256 random bits from `secrets`; only their SHA-256 digest is stored. A fast
digest is enough because nobody can guess or brute-force 256 random bits (unlike a password, which
needs a slow salted hash), and it keeps the lookup one probe of a unique index. The token is in
CreateShareLink's first answer only: the idempotency record stores the response without it (the
database would otherwise hold the token), so a replay returns the same link with token empty.

The snapshot is two numbers (newest message, and the leaf for a branch link); the messages are read
from chat_messages each time, live ones only, so a deleted message, session or user vanishes from
every link at once. Expiry is compared with the database's now() in SQL, on every path alike.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from typing import TYPE_CHECKING, Any

from qdata.v1 import chat_pb2
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import audit
from qdata_server.chat import convert, rules
from qdata_server.chat.messages import _branch_ascending, response_budget
from qdata_server.chat.sessions import load_session, session_not_found
from qdata_server.db.connection import Conn
from qdata_server.db.sql import execute, fetch_all, fetch_one
from qdata_server.db.transactions import Acting, acting_for
from qdata_server.errors import NotFound
from qdata_server.pagination import keyset, page_size
from qdata_server.users.accounts import load_live_user
from qdata_server.validation import ANY_TIMESTAMP, Violations, mask_paths

if TYPE_CHECKING:
    from google.protobuf import timestamp_pb2

    from qdata_server.deps import Deps

TOKEN_PREFIX = "qds_"
_TOKEN_BYTES = 32
_SCOPE_TO_DB = {chat_pb2.SHARE_SCOPE_CURRENT_BRANCH: "branch", chat_pb2.SHARE_SCOPE_ALL_BRANCHES: "all"}
_SCOPE_FROM_DB = {v: k for k, v in _SCOPE_TO_DB.items()}
_UPDATABLE_PATHS = {"expire_time", "snapshot_sequence_number"}
# The token path acts for nobody at all (not even the nil "no user" of catalog requests): the only
# rows it can see are the ones the *_shared_token policies open for the named token digest.
_TOKEN_PATH = Acting()


def share_link_not_found() -> NotFound:
    """The one answer for a token or link id that opens nothing (unknown, revoked, expired, gone)."""
    return NotFound("share link not found", reason=ErrorReason.ERROR_REASON_SHARE_LINK_NOT_FOUND)


def new_token() -> str:
    """A fresh share token: the prefix makes leaked tokens easy to scan for."""
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _share_link(row: dict[str, Any]) -> chat_pb2.ShareLink:
    link = chat_pb2.ShareLink(
        id=str(row["share_link_id"]),
        user_id=str(row["user_id"]),
        session_id=str(row["session_id"]),
        scope=_SCOPE_FROM_DB[row["scope"]],
        snapshot_sequence_number=row["snapshot_sequence_number"],
        leaf_sequence_number=row["leaf_sequence_number"],
        snapshot_time=convert.timestamp(row["snapshot_at"]),
        create_time=convert.timestamp(row["created_at"]),
        update_time=convert.timestamp(row["updated_at"]),
    )
    if row["expire_at"] is not None:
        link.expire_time.CopyFrom(convert.timestamp(row["expire_at"]))
    if row["revoked_at"] is not None:
        link.revoke_time.CopyFrom(convert.timestamp(row["revoked_at"]))
    return link


def _shared_message(row: dict[str, Any]) -> chat_pb2.SharedMessage:
    """A live message as a share token shows it: private tool-call arguments left empty."""
    return chat_pb2.SharedMessage(
        sequence_number=row["sequence_number"],
        parent_sequence_number=row["parent_sequence_number"],
        role=rules.ROLE_FROM_DB[row["role"]],
        content=row["content"],
        model_id=row["model_id"],
        tool_calls=[
            chat_pb2.ToolCall(
                id=c["id"],
                name=c["name"],
                arguments_json="" if c.get("private") else c["arguments_json"],
                private=bool(c.get("private")),
            )
            for c in row["tool_calls"]
        ],
        tool_call_id=row["tool_call_id"],
        create_time=convert.timestamp(row["created_at"]),
    )


def _expire_at(v: Violations, field: str, value: timestamp_pb2.Timestamp) -> datetime.datetime | None:
    """The expiry as a datetime; a violation unless it is a valid Timestamp in the future."""
    expire_at = v.timestamp(field, value, ANY_TIMESTAMP)
    if expire_at is not None and expire_at <= datetime.datetime.now(datetime.UTC):
        v.add(field, "must be in the future (leave it unset for a link that never expires)")
    return expire_at


async def _audit_link(conn: Conn, action: str, row: dict[str, Any], summary: dict[str, Any]) -> None:
    await audit.record(
        conn,
        action=action,
        target_type="chat_share_link",
        target_id=str(row["share_link_id"]),
        user_id=row["user_id"],
        summary={"session_id": str(row["session_id"]), **summary},
    )


async def create_share_link(deps: Deps, request: chat_pb2.CreateShareLinkRequest) -> chat_pb2.CreateShareLinkResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    session_id = v.uuid("session_id", request.session_id)
    if request.scope not in _SCOPE_TO_DB:
        v.add("scope", "must be SHARE_SCOPE_CURRENT_BRANCH or SHARE_SCOPE_ALL_BRANCHES")
    expire_at = _expire_at(v, "expire_time", request.expire_time) if request.HasField("expire_time") else None
    v.raise_if_any()
    assert user_id is not None and session_id is not None  # raise_if_any() passed
    # Tokens of the attempts that ran the work, by link id: the one whose link committed is returned.
    issued: dict[str, str] = {}

    async def work(conn: Conn) -> chat_pb2.CreateShareLinkResponse:
        token = new_token()
        params = {
            "user_id": user_id,
            "session_id": session_id,
            "token_digest": token_digest(token),
            "scope": _SCOPE_TO_DB[request.scope],
            "expire_at": expire_at,
        }
        row = await fetch_one(conn, "insert_chat_share_link", params)
        if row is None:
            raise session_not_found()
        summary = {"scope": row["scope"], "snapshot_sequence_number": row["snapshot_sequence_number"]}
        await _audit_link(conn, "chat.CreateShareLink", row, {**summary, "expires": expire_at is not None})
        issued[str(row["share_link_id"])] = token
        # Stored as the idempotent response: without the token.
        return chat_pb2.CreateShareLinkResponse(share_link=_share_link(row))

    response = await deps.idempotent(request, chat_pb2.CreateShareLinkResponse, work, user_id=user_id)
    response.token = issued.get(response.share_link.id, "")
    return response


async def list_share_links(deps: Deps, request: chat_pb2.ListShareLinksRequest) -> chat_pb2.ListShareLinksResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    session_id = v.uuid("session_id", request.session_id, required=False)
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed
    limit = page_size(request.page_size)
    filters = {"user_id": str(user_id), "session_id": str(session_id) if session_id else None}
    tokens = await deps.page_tokens()
    cursor = tokens.open(request.page_token, "ListShareLinks", filters)

    async def work(conn: Conn) -> list[dict[str, Any]]:
        await load_live_user(conn, user_id)
        if session_id is not None:
            await load_session(conn, user_id, session_id)
        params = {
            "user_id": user_id,
            "session_id": session_id,
            **keyset(cursor, "after_created after_share_link_id", limit),
        }
        return await fetch_all(conn, "list_chat_share_links", params)

    rows = await deps.transaction(work, acting=acting_for(user_id))
    rows, next_token = tokens.page(
        rows,
        limit,
        "ListShareLinks",
        filters,
        lambda last: [last["created_at"].isoformat(), str(last["share_link_id"])],
    )
    return chat_pb2.ListShareLinksResponse(share_links=[_share_link(r) for r in rows], next_page_token=next_token)


async def update_share_link(deps: Deps, request: chat_pb2.UpdateShareLinkRequest) -> chat_pb2.UpdateShareLinkResponse:
    paths = mask_paths("update_mask", list(request.update_mask.paths), _UPDATABLE_PATHS)
    given = request.share_link
    v = Violations()
    user_id = v.uuid("share_link.user_id", given.user_id)
    link_id = v.uuid("share_link.id", given.id)
    expire_at = None
    if "expire_time" in paths and given.HasField("expire_time"):
        expire_at = _expire_at(v, "share_link.expire_time", given.expire_time)
    v.raise_if_any()
    assert user_id is not None and link_id is not None  # raise_if_any() passed
    params = {
        "user_id": user_id,
        "share_link_id": link_id,
        "set_expire": "expire_time" in paths,
        "expire_at": expire_at,
        "move_snapshot": "snapshot_sequence_number" in paths,
    }

    async def work(conn: Conn) -> chat_pb2.UpdateShareLinkResponse:
        row = await fetch_one(conn, "update_chat_share_link", params)
        if row is None:
            raise share_link_not_found()
        summary = {"fields": sorted(paths), "snapshot_sequence_number": row["snapshot_sequence_number"]}
        await _audit_link(conn, "chat.UpdateShareLink", row, summary)
        return chat_pb2.UpdateShareLinkResponse(share_link=_share_link(row))

    return await deps.idempotent(request, chat_pb2.UpdateShareLinkResponse, work, user_id=user_id)


async def revoke_share_link(deps: Deps, request: chat_pb2.RevokeShareLinkRequest) -> chat_pb2.RevokeShareLinkResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    link_id = v.uuid("share_link_id", request.share_link_id)
    v.raise_if_any()
    assert user_id is not None and link_id is not None  # raise_if_any() passed

    async def work(conn: Conn) -> chat_pb2.RevokeShareLinkResponse:
        row = await fetch_one(conn, "revoke_chat_share_link", {"user_id": user_id, "share_link_id": link_id})
        if row is None:
            raise share_link_not_found()
        await _audit_link(conn, "chat.RevokeShareLink", row, {})
        return chat_pb2.RevokeShareLinkResponse(share_link=_share_link(row))

    return await deps.idempotent(request, chat_pb2.RevokeShareLinkResponse, work, user_id=user_id)


def _presented_digest(token: str) -> bytes:
    """The digest of a presented share token; INVALID_ARGUMENT only when it is empty."""
    v = Violations()
    if not token:
        v.add("token", "is required")
    v.raise_if_any()
    return token_digest(token)


async def _open_link(conn: Conn, digest: bytes) -> dict[str, Any]:
    """Names the token for the policies, then reads its live link; the one NOT_FOUND otherwise."""
    await execute(conn, "name_share_token", {"token_digest_hex": digest.hex()})
    link = await fetch_one(conn, "open_shared_chat_link", {"token_digest": digest})
    if link is None:
        raise share_link_not_found()
    return link


async def get_shared_session(
    deps: Deps, request: chat_pb2.GetSharedSessionRequest
) -> chat_pb2.GetSharedSessionResponse:
    digest = _presented_digest(request.token)
    link = await deps.transaction(lambda conn: _open_link(conn, digest), acting=_TOKEN_PATH)
    session = chat_pb2.SharedSession(
        title=link["title"],
        model_id=link["model_id"],
        scope=_SCOPE_FROM_DB[link["scope"]],
        create_time=convert.timestamp(link["created_at"]),
        snapshot_time=convert.timestamp(link["snapshot_at"]),
    )
    if link["expire_at"] is not None:
        session.expire_time.CopyFrom(convert.timestamp(link["expire_at"]))
    return chat_pb2.GetSharedSessionResponse(session=session)


async def list_shared_messages(
    deps: Deps, request: chat_pb2.ListSharedMessagesRequest
) -> chat_pb2.ListSharedMessagesResponse:
    v = Violations()
    if not request.token:
        v.add("token", "is required")
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    v.raise_if_any()
    digest = token_digest(request.token)
    limit = page_size(request.page_size)
    # Bound to the share token (through its digest), so a page_token of another link is refused.
    filters = {"share_token_digest": digest.hex()}
    tokens = await deps.page_tokens()
    cursor = tokens.open(request.page_token, "ListSharedMessages", filters)
    after = int(cursor[0]) if cursor else 0

    async def work(conn: Conn) -> list[dict[str, Any]]:
        link = await _open_link(conn, digest)
        keys = {"user_id": link["user_id"], "session_id": link["session_id"]}
        before = link["snapshot_sequence_number"] + 1
        if link["scope"] == "all":
            params = {**keys, "after": after, "before": before, "limit": limit + 1}
            return await fetch_all(conn, "list_chat_messages_ascending", params)
        if link["leaf_sequence_number"] == 0:
            return []
        return await _branch_ascending(conn, {**keys, "start": link["leaf_sequence_number"]}, after, before, limit + 1)

    rows = await deps.transaction(work, acting=_TOKEN_PATH)
    budget = response_budget(deps.settings)
    taken: list[chat_pb2.SharedMessage] = []
    used = 0
    more = len(rows) > limit
    for row in rows[:limit]:
        shared = _shared_message(row)
        # Each repeated element costs its size plus a tag and a length prefix (<= 6 bytes).
        cost = shared.ByteSize() + 6
        if taken and used + cost > budget:
            more = True
            break
        taken.append(shared)
        used += cost
    next_token = tokens.seal("ListSharedMessages", filters, [taken[-1].sequence_number]) if more else ""
    return chat_pb2.ListSharedMessagesResponse(messages=taken, next_page_token=next_token)
