"""Gauges read from the database on a schedule: the usage fold's lag, the active holds and the
budget alerts.

Read by one worker only (worker 0, started by app.py when metrics are on) every REFRESH_SECONDS,
never on a call's path: three bounded statements in one short transaction on the cross-user path
(db/queries/metrics.sql says what bounds each and which index makes the holds cheap), within a
deadline of REFRESH_SECONDS. The gauges are created by this worker alone (metrics_qdata.py says
why). The budget alerts are counted incrementally: each round counts at most
BUDGET_ALERTS_PER_ROUND alerts after the last one counted (in the alert feed's order), so after a
start the gauge catches up with a long history over a few rounds instead of scanning it at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qdata_server import background
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_all, fetch_row
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS

if TYPE_CHECKING:
    from qdata_server.deps import Deps
    from qdata_server.metrics_qdata import QdataMetrics

REFRESH_SECONDS = 5.0
BUDGET_ALERTS_PER_ROUND = 10_000


async def refresh(deps: Deps, metrics: QdataMetrics) -> None:
    """Reads the fold lag, the active holds and the new budget alerts and sets their gauges."""
    gauges = metrics.database_gauges()
    after_xid, after_alert_id = gauges.budget_alerts_cursor

    async def read(conn: Conn) -> tuple[float, dict[str, tuple[int, int]], list[dict[str, Any]]]:
        lag = await fetch_row(conn, "metrics_usage_fold_lag")
        holds = await fetch_all(conn, "metrics_active_holds")
        alerts = await fetch_all(
            conn,
            "metrics_budget_alerts_after",
            {"after_xid": after_xid, "after_alert_id": after_alert_id, "limit": BUDGET_ALERTS_PER_ROUND},
        )
        by_currency = {row["currency_code"]: (row["holds"], row["held_micros"]) for row in holds}
        return float(lag["lag_seconds"]), by_currency, alerts

    # Every user's holds, queued usage and alerts: the cross-user path.
    with background.deadline(REFRESH_SECONDS, "metrics-database-gauges"):
        lag, holds, alerts = await deps.transaction(read, acting=ACTING_FOR_ALL_USERS)
    gauges.count_budget_alerts(
        {row["threshold_percent"]: row["alerts"] for row in alerts},
        (alerts[0]["last_xid"], str(alerts[0]["last_alert_id"])) if alerts else None,
    )
    gauges.set(
        fold_lag_seconds=lag,
        holds=sum(count for count, _ in holds.values()),
        held_micros={currency: micros for currency, (_, micros) in holds.items()},
    )
