"""qdata's own metrics beyond the gRPC ones: the pool, database errors, retries, health, money, usage.

Imported only when QDATA_METRICS_LISTEN_ADDRESS is set (app.py), after the fork, with
PROMETHEUS_MULTIPROC_DIR already exported (metrics.py): every worker writes its own files and the
parent's scrape aggregates them. How each kind aggregates over the workers:

- counters are summed (prometheus-client always sums them);
- the pool gauges are `livesum`: the server's pool is the sum of its workers' pools, and an exited
  worker's share disappears with it (metrics.mark_dead);
- `qdata_database_up` and `qdata_health_serving` are `livemin`: the server is up (serving) only if
  every live worker is. SO_REUSEPORT spreads new connections over all workers, so one worker that
  cannot reach the database fails a share of the calls; the minimum is the answer a caller would
  get from the server, where a sum or a maximum would hide that worker;
- the database-derived gauges (usage fold lag, active holds) and the verification gauges have one
  writer, worker 0 (see verify_schedule.py and metrics_database.py), and are created only there:
  a gauge made in every worker would write a 0 per worker that the aggregate would mix in. They are
  `live` modes too, so nothing stale outlives the worker that wrote it.

Label children are bound once and cached (at most a dict lookup and an increment per report);
the ones whose label values are known in advance are bound at start, so every family exists from
the first scrape (dashboards and alert rules see 0, not "no data").
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    from qdata_server.db.pool import QdataPool

# The ledger's transaction kinds (ledger_transactions_kind_valid).
LEDGER_KINDS = ("deposit", "charge", "refund", "transfer", "hold_capture", "opening_balance")
# SQLSTATE classes the database error mapping names (db/errors.py), bound at start.
KNOWN_SQLSTATE_CLASSES = ("08", "23", "25", "40", "53", "55", "57", "58")


class QdataMetrics:
    """One worker's qdata_* metrics (made after the fork, with PROMETHEUS_MULTIPROC_DIR set)."""

    def __init__(self, currencies: tuple[str, ...] = ("USD",)) -> None:
        def pool_gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, registry=None, multiprocess_mode="livesum")

        self.pool_size = pool_gauge("qdata_db_pool_size", "Open database connections, over the workers' pools.")
        self.pool_max = pool_gauge("qdata_db_pool_max", "Most database connections the workers' pools may open.")
        self.pool_idle = pool_gauge("qdata_db_pool_idle", "Open connections waiting in the pools, unused.")
        self.pool_in_use = pool_gauge("qdata_db_pool_in_use", "Connections lent out to running work.")
        self.pool_waiting = pool_gauge(
            "qdata_db_pool_waiting", "Requests queued for a connection (none was idle) at the last sample."
        )
        self.pool_requests = Counter("qdata_db_pool_requests_total", "Requests for a pooled connection.", registry=None)
        self.pool_wait_seconds = Counter(
            "qdata_db_pool_wait_seconds_total",
            "Seconds requests spent queued for a pooled connection (psycopg_pool's requests_wait_ms).",
            registry=None,
        )
        self.pool_timeouts = Counter(
            "qdata_db_pool_timeouts_total",
            "Requests that gave up waiting for a pooled connection (the call answered UNAVAILABLE).",
            registry=None,
        )
        self.pool_connection_errors = Counter(
            "qdata_db_pool_connection_errors_total",
            "Failed attempts of the pools to open a database connection (psycopg_pool's connections_errors).",
            registry=None,
        )
        self.db_errors = Counter(
            "qdata_db_errors_total",
            "Database errors that failed a transaction attempt, by SQLSTATE class (two characters).",
            ("sqlstate_class",),
            registry=None,
        )
        self.retries = Counter(
            "qdata_transaction_retries_total",
            "Transactions run again after a serialization failure or deadlock, by method ('' outside a call).",
            ("grpc_method",),
            registry=None,
        )
        self.database_up = Gauge(
            "qdata_database_up",
            "1 if the health monitor's last probe reached the database, else 0 (minimum over the workers).",
            registry=None,
            multiprocess_mode="livemin",
        )
        self.health_serving = Gauge(
            "qdata_health_serving",
            "1 if the worker reports SERVING, else 0 (minimum over the workers).",
            registry=None,
            multiprocess_mode="livemin",
        )
        self.money = Counter(
            "qdata_money_moved_micros_total",
            "Micro-units moved by committed ledger transactions, by kind and currency (replays not counted).",
            ("kind", "currency"),
            registry=None,
        )
        self.usage_records = Counter(
            "qdata_usage_records_total", "Usage records committed (replays not counted).", registry=None
        )
        self.usage_billed = Counter(
            "qdata_usage_billed_micros_total",
            "Micro-units billed for committed usage records, by currency (replays not counted).",
            ("currency",),
            registry=None,
        )
        self._sqlstate_classes: dict[str, Any] = {c: self.db_errors.labels(c) for c in KNOWN_SQLSTATE_CLASSES}
        self._retries: dict[str, Any] = {"": self.retries.labels("")}
        self._money: dict[tuple[str, str], Any] = {
            (kind, currency): self.money.labels(kind, currency) for kind in LEDGER_KINDS for currency in currencies
        }
        self._billed: dict[str, Any] = {currency: self.usage_billed.labels(currency) for currency in currencies}
        self._database_gauges: DatabaseGauges | None = None
        self._verify_gauges: VerifyGauges | None = None

    def database_error(self, sqlstate_class: str) -> None:
        child = self._sqlstate_classes.get(sqlstate_class)
        if child is None:
            child = self._sqlstate_classes[sqlstate_class] = self.db_errors.labels(sqlstate_class)
        child.inc()

    def transaction_retry(self, method: str) -> None:
        child = self._retries.get(method)
        if child is None:
            child = self._retries[method] = self.retries.labels(method)
        child.inc()

    def money_moved(self, kind: str, currency: str, micros: int) -> None:
        child = self._money.get((kind, currency))
        if child is None:
            child = self._money[(kind, currency)] = self.money.labels(kind, currency)
        child.inc(micros)

    def usage_recorded(self, currency: str, billed_micros: int) -> None:
        self.usage_records.inc()
        if billed_micros:
            child = self._billed.get(currency)
            if child is None:
                child = self._billed[currency] = self.usage_billed.labels(currency)
            child.inc(billed_micros)

    def health(self, *, database_up: bool, serving: bool) -> None:
        self.database_up.set(1 if database_up else 0)
        self.health_serving.set(1 if serving else 0)

    def sample_pool(self, pool: QdataPool) -> None:
        """Copies the pool's state into the gauges and its counts since the last sample into the counters.

        psycopg_pool's pop_stats() hands over (and resets) its counters; requests and timeouts come
        from QdataPool's own counts, since psycopg_pool's count every slice of a wait that
        QdataPool.getconn splits (see there) as a request, and each empty-handed slice as an error.
        """
        stats = pool.pop_stats()
        size = stats.get("pool_size", 0)
        idle = stats.get("pool_available", 0)
        self.pool_size.set(size)
        self.pool_max.set(stats.get("pool_max", pool.max_size))
        self.pool_idle.set(idle)
        self.pool_in_use.set(max(0, size - idle))
        self.pool_waiting.set(stats.get("requests_waiting", 0))
        self.pool_wait_seconds.inc(stats.get("requests_wait_ms", 0) / 1000.0)
        self.pool_connection_errors.inc(stats.get("connections_errors", 0))
        requests, timeouts = pool.pop_request_counts()
        self.pool_requests.inc(requests)
        self.pool_timeouts.inc(timeouts)

    def database_gauges(self) -> DatabaseGauges:
        """The database-derived gauges, created on first use (by their one writer, worker 0)."""
        if self._database_gauges is None:
            self._database_gauges = DatabaseGauges()
        return self._database_gauges

    def verify_gauges(self) -> VerifyGauges:
        """The scheduled verification's gauges, created on first use (by worker 0)."""
        if self._verify_gauges is None:
            self._verify_gauges = VerifyGauges()
        return self._verify_gauges


class DatabaseGauges:
    """Gauges read from the database on a schedule by one worker (metrics_database.py)."""

    def __init__(self) -> None:
        self.fold_lag = Gauge(
            "qdata_usage_fold_lag_seconds",
            "Age of the oldest usage record not yet folded into the statistics (0 when none).",
            registry=None,
            multiprocess_mode="livemax",
        )
        self.holds_active = Gauge(
            "qdata_holds_active", "Active (unexpired, unresolved) holds.", registry=None, multiprocess_mode="livemax"
        )
        self.holds_active_micros = Gauge(
            "qdata_holds_active_micros",
            "Micro-units reserved by active holds, by currency.",
            ("currency",),
            registry=None,
            multiprocess_mode="livemax",
        )
        self._currencies: set[str] = set()
        self.budget_alerts = Gauge(
            "qdata_budget_alerts",
            "Budget alerts the database holds, by threshold percent (listable ones: their transactions ended).",
            ("threshold",),
            registry=None,
            multiprocess_mode="livemax",
        )
        # Where the count of budget alerts has got to in the feed's order (metrics_database.py
        # counts only the alerts after it, a bounded number per round), and the counts so far.
        self.budget_alerts_cursor: tuple[int, str] = (0, "00000000-0000-0000-0000-000000000000")
        self._budget_alerts: dict[int, int] = {}

    def count_budget_alerts(self, counts: dict[int, int], cursor: tuple[int, str] | None) -> None:
        """Adds the alerts counted after budget_alerts_cursor and moves it (None: none were new)."""
        for threshold, alerts in counts.items():
            self._budget_alerts[threshold] = self._budget_alerts.get(threshold, 0) + alerts
            self.budget_alerts.labels(str(threshold)).set(self._budget_alerts[threshold])
        if cursor is not None:
            self.budget_alerts_cursor = cursor

    def set(self, *, fold_lag_seconds: float, holds: int, held_micros: dict[str, int]) -> None:
        self.fold_lag.set(fold_lag_seconds)
        self.holds_active.set(holds)
        # A currency seen before and without active holds now shows 0, not its last value.
        self._currencies |= set(held_micros)
        for currency in self._currencies:
            self.holds_active_micros.labels(currency).set(held_micros.get(currency, 0))


class VerifyGauges:
    """The scheduled verification's results (verify_schedule.py)."""

    def __init__(self) -> None:
        self.discrepancies = Gauge(
            "qdata_ledger_verify_discrepancies",
            "Discrepancies VerifyLedger's checks found in the last completed scheduled run.",
            registry=None,
            multiprocess_mode="livemax",
        )
        self.audit_ok = Gauge(
            "qdata_audit_verify_ok",
            "1 if the last completed scheduled audit chain verification found no broken link, else 0.",
            registry=None,
            multiprocess_mode="livemin",
        )
        self.last_success = Gauge(
            "qdata_verify_last_success_timestamp_seconds",
            "Unix time the last scheduled verification run completed (a failed run leaves it as it was).",
            registry=None,
            multiprocess_mode="livemax",
        )

    def completed(self, *, discrepancies: int, audit_ok: bool, now: float | None = None) -> None:
        self.discrepancies.set(discrepancies)
        self.audit_ok.set(1 if audit_ok else 0)
        self.last_success.set(time.time() if now is None else now)
