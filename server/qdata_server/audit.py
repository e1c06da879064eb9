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
    ctx = callctx.current()
    await execute(
        conn,
        "insert_audit_event",
        {
            "actor": ctx.actor if ctx else "cli",
            "user_id": user_id,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
            "request_id": ctx.request_id if ctx else "",
            "summary": Jsonb(summary or {}),
        },
    )
