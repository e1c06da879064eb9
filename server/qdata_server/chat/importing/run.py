"""ImportSession: parse and check the export off the event loop, then store it in one transaction.

The transaction share-locks the user (a concurrent DeleteUser either sees the session or makes
the import fail), claims the source conversation in chat_imports (a second upload of the same
conversation, concurrent or later, finds the claim and answers with the first one's session),
creates the session with its counters set, inserts every message in one statement (arrays,
so 10,000 messages are one round trip) and writes the audit event.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from qdata.v1 import chat_pb2
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server.chat import convert
from qdata_server.chat.importing import chatgpt, librechat, open_webui
from qdata_server.chat.importing.model import DATA_HEADROOM_BYTES, BadExport, Conversation
from qdata_server.chat.importing.tree import Plan, plan
from qdata_server.chat.sessions import audit_session, load_session
from qdata_server.db.connection import Conn
from qdata_server.db.sql import execute, fetch_one, fetch_row
from qdata_server.errors import FieldViolation, InvalidArgument
from qdata_server.users.accounts import user_not_found
from qdata_server.validation import Violations

if TYPE_CHECKING:
    from qdata_server.deps import Deps

Parser = Callable[[Any, str], Conversation]
# Format -> (chat_imports.source_format, parser).
FORMATS: dict[int, tuple[str, Parser]] = {
    chat_pb2.IMPORT_FORMAT_CHATGPT: ("chatgpt", chatgpt.parse),
    chat_pb2.IMPORT_FORMAT_LIBRECHAT: ("librechat", librechat.parse),
    chat_pb2.IMPORT_FORMAT_OPEN_WEBUI: ("open_webui", open_webui.parse),
}


def max_data_bytes(max_message_bytes: int) -> int:
    """The largest data ImportSession takes: the gRPC maximum less room for the other fields."""
    return max_message_bytes - DATA_HEADROOM_BYTES


def read(data: bytes, parse: Parser, *, max_content_bytes: int, now: datetime.datetime) -> Plan:
    """The rows for one uploaded conversation, or BadExport naming where it breaks its format."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadExport("data", f"is not UTF-8 (byte {exc.start})") from None

    def reject(constant: str) -> None:
        raise BadExport("data", f"is not JSON: {constant} is not a JSON value")

    try:
        doc = json.loads(text, parse_constant=reject)
    except json.JSONDecodeError as exc:
        raise BadExport("data", f"is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadExport("data", "nests JSON deeper than the server parses") from None
    if isinstance(doc, list):
        if len(doc) != 1:
            where = "[1]" if doc else "data"
            raise BadExport(where, "must hold exactly one conversation (import each in its own call)")
        conversation = parse(doc[0], "[0]")
    else:
        conversation = parse(doc, "")
    return plan(conversation, max_content_bytes=max_content_bytes, now=now)


async def import_session(deps: Deps, request: chat_pb2.ImportSessionRequest) -> chat_pb2.ImportSessionResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    if request.format not in FORMATS:
        v.add("format", "must be IMPORT_FORMAT_CHATGPT, IMPORT_FORMAT_LIBRECHAT or IMPORT_FORMAT_OPEN_WEBUI")
    limit = max_data_bytes(deps.settings.max_message_bytes)
    too_large = len(request.data) > limit
    if too_large:
        v.add("data", f"takes {len(request.data)} bytes; at most {limit}")
    elif not request.data:
        v.add("data", "is required")
    if v:
        raise InvalidArgument(v.items, reason=ErrorReason.ERROR_REASON_CONTENT_TOO_LARGE if too_large else None)
    assert user_id is not None  # no violations
    source_format, parse = FORMATS[request.format]
    try:
        rows = await asyncio.to_thread(
            read,
            request.data,
            parse,
            max_content_bytes=deps.settings.chat_max_content_bytes,
            now=datetime.datetime.now(datetime.UTC),
        )
    except BadExport as bad:
        raise InvalidArgument(
            [FieldViolation(bad.path, bad.description)],
            reason=ErrorReason.ERROR_REASON_CONTENT_TOO_LARGE if bad.too_large else None,
        ) from None

    async def work(conn: Conn) -> chat_pb2.ImportSessionResponse:
        return await _store(conn, user_id, source_format, rows)

    return await deps.idempotent(request, chat_pb2.ImportSessionResponse, work, user_id=user_id)


async def _store(conn: Conn, user_id: uuid.UUID, source_format: str, rows: Plan) -> chat_pb2.ImportSessionResponse:
    if await fetch_one(conn, "share_live_chat_user", {"user_id": user_id}) is None:
        raise user_not_found()
    source = {"user_id": user_id, "source_format": source_format, "source_id": rows.source_id}
    session_id = uuid.uuid4()
    if await fetch_one(conn, "claim_chat_import", {**source, "session_id": session_id, "digest": rows.digest}) is None:
        earlier = await fetch_row(conn, "get_chat_import", source)
        session = await load_session(conn, user_id, earlier["session_id"])
        return chat_pb2.ImportSessionResponse(
            session=convert.session(session),
            already_imported=True,
            source_differs=bytes(earlier["digest"]) != rows.digest,
        )
    keys = {"user_id": user_id, "session_id": session_id}
    session = await fetch_row(
        conn,
        "insert_imported_chat_session",
        {
            **keys,
            "model_id": rows.model_id,
            "title": rows.title,
            "metadata": Jsonb({"import.format": source_format, "import.source_id": rows.source_id}),
            "current_leaf": rows.current_leaf,
            "count": rows.count,
            "input_tokens": 0,
            "output_tokens": 0,
            "last_activity_at": rows.last_activity_at,
            "created_at": rows.created_at,
        },
    )
    if rows.count:
        await execute(conn, "insert_imported_chat_messages", {**keys, **rows.columns})
    summary = {
        "format": source_format,
        "messages": rows.count,
        "skipped_nodes": rows.skipped,
        "current_leaf_sequence_number": rows.current_leaf,
    }
    await audit_session(conn, "chat.ImportSession", user_id, session_id, summary)
    return chat_pb2.ImportSessionResponse(
        session=convert.session(session), imported_message_count=rows.count, skipped_node_count=rows.skipped
    )
