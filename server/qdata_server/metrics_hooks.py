"""Where server code reports to qdata's own metrics; each report does nothing while metrics are off.

A leaf: it imports neither prometheus-client nor any server module, so the database layer, the
ledger and the health monitor can report without depending on the metrics (metrics_qdata.py).
The worker's `QdataMetrics` is installed here by app.py when QDATA_METRICS_LISTEN_ADDRESS is set;
until then (and always with metrics off) `active` is None and every function below returns after
one comparison. There is one per process, like prometheus-client's multiprocess files (one set per
pid). docs/operations.md "Metrics" lists what they count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qdata_server.metrics_qdata import QdataMetrics

active: QdataMetrics | None = None


def install(metrics: QdataMetrics | None) -> None:
    """Makes metrics this process's (None: off again)."""
    global active
    active = metrics


def database_error(sqlstate_class: str) -> None:
    """A database error failed a transaction attempt (db/transactions.py)."""
    if active is not None:
        active.database_error(sqlstate_class)


def transaction_retry(method: str) -> None:
    """A transaction is run again after a serialization failure or deadlock (db/transactions.py)."""
    if active is not None:
        active.transaction_retry(method)


def money_moved(kind: str, currency: str, micros: int) -> None:
    """A committed ledger transaction of this kind moved micros (never called for a replay)."""
    if active is not None:
        active.money_moved(kind, currency, micros)


def usage_recorded(currency: str, billed_micros: int) -> None:
    """A usage record was committed (billed_micros 0 when it was not billed); never for a replay."""
    if active is not None:
        active.usage_recorded(currency, billed_micros)


def health(*, database_up: bool, serving: bool) -> None:
    """The health monitor's latest probe result and the status this worker reports."""
    if active is not None:
        active.health(database_up=database_up, serving=serving)
