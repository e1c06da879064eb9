"""Gauges read from the database on a schedule: the usage fold's lag and the active holds.

Read by one worker only (worker 0, started by app.py when metrics are on) every REFRESH_SECONDS,
never on a call's path: two bounded statements in one short transaction on the cross-user path
(db/queries/metrics.sql says what bounds each and which index makes the holds cheap), within a
deadline of REFRESH_SECONDS. The gauges are created by this worker alone (metrics_qdata.py says
why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qdata_server import background
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_all, fetch_row
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS

if TYPE_CHECKING:
    from qdata_server.deps import Deps
    from qdata_server.metrics_qdata import QdataMetrics

REFRESH_SECONDS = 5.0


async def refresh(deps: Deps, metrics: QdataMetrics) -> None:
    """Reads the fold lag and the active holds and sets their gauges."""

    async def read(conn: Conn) -> tuple[float, dict[str, tuple[int, int]]]:
        lag = await fetch_row(conn, "metrics_usage_fold_lag")
        holds = await fetch_all(conn, "metrics_active_holds")
        return float(lag["lag_seconds"]), {row["currency_code"]: (row["holds"], row["held_micros"]) for row in holds}

    # Every user's holds and queued usage: the cross-user path.
    with background.deadline(REFRESH_SECONDS, "metrics-database-gauges"):
        lag, holds = await deps.transaction(read, acting=ACTING_FOR_ALL_USERS)
    metrics.database_gauges().set(
        fold_lag_seconds=lag,
        holds=sum(count for count, _ in holds.values()),
        held_micros={currency: micros for currency, (_, micros) in holds.items()},
    )
