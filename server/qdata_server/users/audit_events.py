"""ListAuditEvents: the audit trail, newest first, filtered and paginated.

Pages are keyset cursors on (written_xid, audit_event_id), sealed and bound to the filters they
were issued for. Only events below the reader's snapshot horizon are listed, so an event that
appears later always sorts above the events already listed: a reader paging or polling newest
first cannot skip one (0012_listing_commit_order.sql says why and what it costs).
The permission to read the trail is checked by the caller-authentication layer, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qdata.v1 import user_pb2
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_all
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS
from qdata_server.pagination import page_size
from qdata_server.users import convert
from qdata_server.validation import SINCE_EPOCH, Violations

if TYPE_CHECKING:
    from qdata_server.deps import Deps

MAX_FILTER_LENGTH = 200
# The scope page tokens are sealed for; the suffix names the cursor's shape, so a token from before
# the (written_xid, id) order is refused as INVALID_ARGUMENT rather than misread.
LIST_AUDIT_EVENTS_PAGES = "ListAuditEvents/written-order"


def _text(v: Violations, field: str, value: str) -> str | None:
    return v.text(field, value, MAX_FILTER_LENGTH) or None


def event(row: dict[str, Any]) -> user_pb2.AuditEvent:
    return user_pb2.AuditEvent(
        id=row["audit_event_id"],
        event_time=convert.timestamp(row["occurred_at"]),
        actor=row["actor"],
        user_id=str(row["user_id"]) if row["user_id"] is not None else "",
        action=row["action"],
        target_type=row["target_type"],
        target_id=row["target_id"],
        request_id=row["request_id"],
        summary_json=row["summary_text"],
    )


async def list_audit_events(deps: Deps, request: user_pb2.ListAuditEventsRequest) -> user_pb2.ListAuditEventsResponse:
    limit = page_size(request.page_size)
    v = Violations()
    user_id = v.uuid("user_id", request.user_id, required=False)
    actor = _text(v, "actor", request.actor)
    action = _text(v, "action", request.action)
    start = v.timestamp("start_time", request.start_time, SINCE_EPOCH) if request.HasField("start_time") else None
    end = v.timestamp("end_time", request.end_time, SINCE_EPOCH) if request.HasField("end_time") else None
    if start is not None and end is not None and end <= start:
        v.add("end_time", "must be after start_time")
    v.raise_if_any()
    filters = {
        "user_id": str(user_id) if user_id else None,
        "actor": actor,
        "action": action,
        "start_time": start.isoformat() if start else None,
        "end_time": end.isoformat() if end else None,
    }
    tokens = await deps.page_tokens()
    cursor = tokens.open(request.page_token, LIST_AUDIT_EVENTS_PAGES, filters)

    async def work(conn: Conn) -> list[dict[str, Any]]:
        return await fetch_all(
            conn,
            "list_audit_events",
            {
                "user_id": user_id,
                "actor": actor,
                "action": action,
                "start_time": start,
                "end_time": end,
                "before_order": int(cursor[0]) if cursor else None,
                "before_id": int(cursor[1]) if cursor else None,
                "limit": limit + 1,
            },
        )

    # The audit trail of every user (filtered or not) is a cross-user read; audit.read guards it.
    rows = await deps.transaction(work, acting=ACTING_FOR_ALL_USERS)
    rows, next_token = tokens.page(
        rows, limit, LIST_AUDIT_EVENTS_PAGES, filters, lambda last: [last["written_order"], last["audit_event_id"]]
    )
    return user_pb2.ListAuditEventsResponse(events=[event(r) for r in rows], next_page_token=next_token)
