"""Audit records, written by every mutation inside its own transaction.

The summary names what changed (field names, non-personal values); callers must never put a
password, secret or personal value (email, name) in it, so the trail stays pseudonymous after a
user is deleted.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.types.json import Jsonb

from qdata_server import callctx
from qdata_server.db.connection import Conn
from qdata_server.db.sql import execute


def author() -> tuple[str, str]:
    """The actor and request_id an event of the running RPC carries ("cli" and "" outside one)."""
    ctx = callctx.current()
    return (ctx.actor, ctx.request_id) if ctx else ("cli", "")


def params(action: str, summary: dict[str, Any]) -> dict[str, Any]:
    """An event of the running RPC as the SQL functions that append their own take it
    (audit_actor, audit_action, audit_request_id, audit_summary; target and user are theirs)."""
    actor, request_id = author()
    return {
        "audit_actor": actor,
        "audit_action": action,
        "audit_request_id": request_id,
        "audit_summary": Jsonb(summary),
    }


async def record(
    conn: Conn,
    *,
    action: str,
    target_type: str,
    target_id: str,
    user_id: uuid.UUID | None,
    summary: dict[str, Any] | None = None,
) -> None:
    """Appends one audit event; actor and request_id come from the running RPC."""
    actor, request_id = author()
    await execute(
        conn,
        "insert_audit_event",
        {
            "actor": actor,
            "user_id": user_id,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
            "request_id": request_id,
            "summary": Jsonb(summary or {}),
        },
    )
