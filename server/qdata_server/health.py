"""The serving status: a probe of the database on a connection of its own, and the health servicer.

Health starts NOT_SERVING, turns SERVING once the database answers the probe (on a connection of
its own, not a pooled one), accepts writes, has no pending migration and passes the gates
(gates.py), goes back to NOT_SERVING while the database is unreachable or read-only (and for good
once prepared statements turn out to be lost by a pooler: a configuration change, see
db/transactions.py). app.py probes every QDATA_HEALTH_PROBE_SECONDS (more often while the
database is out of reach) and enters graceful shutdown on stop.
"""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from psycopg.rows import DictRow, dict_row

from qdata.v1 import budget_pb2, chat_pb2, ledger_pb2, usage_pb2, user_pb2
from qdata_server import metrics_hooks
from qdata_server.config import Settings
from qdata_server.db import migrate, transactions
from qdata_server.db.pool import QdataPool
from qdata_server.db.sql import query
from qdata_server.gates import KeyRingGate, RoleGate

log = logging.getLogger("qdata.server")
# Probe interval while the database is out of reach (QDATA_HEALTH_PROBE_SECONDS if shorter).
UNREACHABLE_PROBE_SECONDS = 0.5
# At most one "connection pool saturated" line per this many seconds.
SATURATION_LOG_SECONDS = 60.0

# The services whose status health reports (besides "", the server as a whole).
SERVICE_NAMES = (
    user_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,
    ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
    chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
    usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
    budget_pb2.DESCRIPTOR.services_by_name["BudgetService"].full_name,
)


async def set_status(servicer: HealthServicer, serving: bool) -> None:
    """Sets the server's and every service's status."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICE_NAMES):
        await servicer.set(name, status)


class DatabaseHealth:
    """Probes the database and sets the health servicer's status from the result."""

    def __init__(
        self,
        servicer: HealthServicer,
        settings: Settings,
        conninfo: str,
        pool: QdataPool,
        key_ring: KeyRingGate,
        role: RoleGate,
    ):
        self.servicer = servicer
        self.settings = settings
        self.conninfo = conninfo
        self.pool = pool
        self.key_ring = key_ring
        self.role = role
        # The last status set (None before the first probe).
        self.serving: bool | None = None
        # Whether the last probe reached the database.
        self.reachable = True
        # The probe's own connection, and whether it was found killed since the last probe.
        self._conn: psycopg.AsyncConnection[DictRow] | None = None
        self._lost = False
        self._lock = asyncio.Lock()
        self._saturation_logged_at = -SATURATION_LOG_SECONDS

    def interval(self) -> float:
        """Seconds to the next probe: often while the database is out of reach, so SERVING comes
        back (and the pool starts connecting) soon after it accepts connections again."""
        interval = self.settings.health_probe_seconds
        if not self.reachable:
            interval = min(interval, UNREACHABLE_PROBE_SECONDS)
        return interval

    async def check(self) -> bool:
        """Probes the database and the schema; sets and returns the serving status.

        Health answers "can this instance serve calls": the database answers on a connection of
        the probe's own (never a pooled one, so a saturated pool is not an outage), accepts
        writes, has no pending migration, and passes the gates. A read-only database is
        NOT_SERVING: every write would fail, and taking the instance out lets traffic reach
        instances that see the primary. A database out of disk space stays SERVING (reads work;
        writes answer UNAVAILABLE DATABASE_FULL), as would every other instance on it.
        """
        # One probe at a time (the monitor and a direct caller share the probe's connection).
        async with self._lock:
            return await self._check()

    async def _check(self) -> bool:
        serving = False
        reachable = False
        try:
            async with asyncio.timeout(self._timeout()):
                serving = await self._probe()
            reachable = True
        except migrate.MigrationError as exc:
            reachable = True
            log.error("migration history disagrees with this build: %s", exc)
        except Exception as exc:
            await self.close()
            if self.serving is not False:
                log.warning("database unreachable", extra={"error_type": type(exc).__name__})
        lost, self._lost = self._lost, False
        if reachable and (lost or not self.reachable or self.pool.get_stats().get("pool_size", 0) < self.pool.min_size):
            # The database is back, the probe's connection was killed (the pool's likely were too),
            # or the pool lost connections: connect now, not at the pool's next backoff step (dead
            # idle connections are dropped at checkout). Outside the probe's timeout: revive must
            # not be cut short.
            await self.pool.revive()
        self.reachable = reachable
        self._note_saturation()
        if transactions.prepared_statements_unsupported(self.pool):
            # Logged with the fix when first seen: the configuration must change (a restart).
            serving = False
        if serving != self.serving:
            await set_status(self.servicer, serving)
            self.serving = serving
            log.info("health", extra={"serving": serving})
        metrics_hooks.health(database_up=reachable, serving=serving)
        return serving

    def _timeout(self) -> float:
        return min(2.0, self.settings.pool_timeout_seconds)

    async def _probe(self) -> bool:
        """Runs the health checks on the probe's connection, reconnecting once if it was lost.

        A connection killed since the last probe (pg_terminate_backend, a restart) says nothing
        about the database now; only a fresh connection that fails does.
        """
        while True:
            conn = self._conn
            fresh = conn is None or conn.closed
            if conn is None or conn.closed:
                conn = self._conn = await psycopg.AsyncConnection.connect(
                    self.conninfo,
                    autocommit=True,
                    row_factory=dict_row,
                    prepare_threshold=None,
                    connect_timeout=max(1, int(self._timeout())),
                    application_name="qdata-health",
                )
            try:
                return await self._run_checks(conn)
            except psycopg.OperationalError:
                await self.close()
                if fresh:
                    raise
                self._lost = True

    async def _run_checks(self, conn: psycopg.AsyncConnection[DictRow]) -> bool:
        async with conn.transaction():
            row = await (await conn.execute(query("database_read_only"))).fetchone()
            read_only = bool(row and row["read_only"])
            migrated = await migrate.pending_count(conn) == 0
            serving = migrated and not read_only and await self.role.check(conn)
            if serving:
                serving = await self.key_ring.check(conn)
        if self.serving is not False:
            if not migrated:
                log.warning("schema has pending migrations; not serving until they are applied")
            elif read_only:
                log.warning("the database is read-only (a standby, or default_transaction_read_only); not serving")
        return serving

    async def close(self) -> None:
        """Closes the probe's connection (the next probe opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except psycopg.Error:
                pass

    def _note_saturation(self) -> None:
        """Logs (at most once a minute) that requests queue for a pool with no connection left.

        Saturation is load, not an outage: health stays as it is, and the line says how far the
        pool is behind (the pool's counters, also in pool.get_stats()).
        """
        stats = self.pool.get_stats()
        waiting = stats.get("requests_waiting", 0)
        if waiting and stats.get("pool_available", 0) == 0 and stats.get("pool_size", 0) >= self.pool.max_size:
            now = time.monotonic()
            if now - self._saturation_logged_at >= SATURATION_LOG_SECONDS:
                self._saturation_logged_at = now
                log.warning(
                    "connection pool saturated",
                    extra={"pool_size": stats.get("pool_size", 0), "requests_waiting": waiting},
                )
