"""BudgetService's reads: GetBudget, ListBudgets (each budget with its current period's
consumption, budget_usage in db/functions/budget_enforcement.sql) and the alert feed.

ListBudgetAlerts lists alerts in commit order: (written_xid, alert_id) ascending, only alerts of
transactions that have ended (queries/budgets.sql says which and why), so a notifier that keeps
the cursor of its last page and comes back with it later gets every alert once. The cursor is
sealed in the page token and bound to the user_id filter; the token is never empty: after the
last alert listed, or the request's own cursor when none was (an empty first page seals the
cursor before every alert).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qdata.v1 import budget_pb2
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server.budgets import convert
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_all
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS, NO_USER_ID, acting_for
from qdata_server.errors import NotFound
from qdata_server.pagination import keyset, page_size
from qdata_server.validation import Violations

if TYPE_CHECKING:
    from qdata_server.deps import Deps

LIST_BUDGETS_PAGE = 20
LIST_BUDGETS_MAX = 100
LIST_ALERTS_PAGE = 100
LIST_ALERTS_MAX = 1000
# The page token scope of the alert feed; the suffix names the cursor's shape.
LIST_BUDGET_ALERTS_PAGES = "ListBudgetAlerts/written-order"
# The cursor before every alert: no transaction id is 0.
_FEED_START: list[Any] = [0, str(NO_USER_ID)]


def budget_not_found() -> NotFound:
    """The one answer for a budget that does not exist or belongs to another user."""
    return NotFound("budget not found", reason=ErrorReason.ERROR_REASON_BUDGET_NOT_FOUND)


async def get_budget(deps: Deps, request: budget_pb2.GetBudgetRequest) -> budget_pb2.GetBudgetResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    budget_id = v.uuid("budget_id", request.budget_id)
    v.raise_if_any()
    assert user_id is not None and budget_id is not None  # raise_if_any() passed
    row = await deps.statement_row(
        "get_budget", {"user_id": user_id, "budget_id": budget_id}, acting=acting_for(user_id)
    )
    if row is None:
        raise budget_not_found()
    return budget_pb2.GetBudgetResponse(budget=convert.budget(row))


async def list_budgets(deps: Deps, request: budget_pb2.ListBudgetsRequest) -> budget_pb2.ListBudgetsResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed
    limit = page_size(request.page_size, default=LIST_BUDGETS_PAGE, maximum=LIST_BUDGETS_MAX)
    filters = {"user_id": str(user_id)}
    tokens = await deps.page_tokens()
    cursor = tokens.open(request.page_token, "ListBudgets", filters)
    params = {"user_id": user_id, **keyset(cursor, "after_created after_budget_id", limit)}
    rows = await deps.statement("list_budgets", params, acting=acting_for(user_id))
    rows, next_token = tokens.page(
        rows, limit, "ListBudgets", filters, lambda last: [last["created_at"].isoformat(), str(last["budget_id"])]
    )
    return budget_pb2.ListBudgetsResponse(budgets=[convert.budget(r) for r in rows], next_page_token=next_token)


async def list_budget_alerts(
    deps: Deps, request: budget_pb2.ListBudgetAlertsRequest
) -> budget_pb2.ListBudgetAlertsResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id, required=False)
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    v.raise_if_any()
    limit = page_size(request.page_size, default=LIST_ALERTS_PAGE, maximum=LIST_ALERTS_MAX)
    filters = {"user_id": str(user_id) if user_id else None}
    tokens = await deps.page_tokens()
    cursor = tokens.open(request.page_token, LIST_BUDGET_ALERTS_PAGES, filters) or _FEED_START
    params = {"user_id": user_id, "after_xid": int(cursor[0]), "after_alert_id": cursor[1], "limit": limit}

    async def work(conn: Conn) -> list[dict[str, Any]]:
        if user_id is None:
            return await fetch_all(conn, "list_budget_alerts", params)
        return await fetch_all(conn, "list_user_budget_alerts", params)

    # Every user's alerts (empty user_id) is a cross-user path, guarded by budgets.alerts.read.
    rows = await deps.transaction(work, acting=ACTING_FOR_ALL_USERS if user_id is None else acting_for(user_id))
    if rows:
        cursor = [rows[-1]["written_xid"], str(rows[-1]["alert_id"])]
    return budget_pb2.ListBudgetAlertsResponse(
        alerts=[convert.alert(r) for r in rows],
        next_page_token=tokens.seal(LIST_BUDGET_ALERTS_PAGES, filters, cursor),
    )
