"""Builds and runs one grpc.aio server: services, health, reflection, pool and lifecycle.

The composition root: one `QdataServer` lives in each worker process (created after the fork);
`start` loads what it was not given (inputs.py), opens the pool, builds the Deps (deps.py) and
the servicers, checks the key ring (gates.py), serves and starts the background jobs
(background.py: the health monitor of health.py, the expired-hold sweeper, the idempotency purge,
the audit sealer, the usage upkeep; with metrics on, the pool sampler and, in worker 0, the
database-derived gauges; in worker 0, the scheduled verification when
QDATA_VERIFY_INTERVAL_SECONDS is set); `stop` enters graceful shutdown, which refuses new calls
with UNAVAILABLE, drains, cancels what the grace period leaves running and closes every database
connection.
With TLS configured the port is served with TLS (mutual TLS with a client CA); an optional second,
plaintext server on QDATA_HEALTH_LISTEN_ADDRESS serves only the same health servicer, for probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from qdata.v1 import budget_pb2_grpc, chat_pb2_grpc, ledger_pb2_grpc, usage_pb2_grpc, user_pb2_grpc
from qdata_server import audit_sealer, background, idempotency, inputs, metrics_database, metrics_hooks, reflection
from qdata_server.auth import Authenticator
from qdata_server.budgets.service import BudgetServicer
from qdata_server.chat.service import ChatServicer
from qdata_server.clock import Clock
from qdata_server.config import ConfigError, Settings
from qdata_server.db.pool import QdataPool, open_pool
from qdata_server.deps import Deps
from qdata_server.gates import KeyRingGate, RoleGate
from qdata_server.health import SERVICE_NAMES, DatabaseHealth, set_status
from qdata_server.interceptor import ServiceInterceptor
from qdata_server.ledger import operations as ledger_operations
from qdata_server.ledger.service import LedgerServicer
from qdata_server.startup import StartupError
from qdata_server.usage import maintenance as usage_maintenance
from qdata_server.usage.service import UsageServicer
from qdata_server.users.passwords import PasswordHasher
from qdata_server.users.service import UserServicer
from qdata_server.verify_schedule import ScheduledVerification

if TYPE_CHECKING:
    from qdata_server.metrics_qdata import QdataMetrics

__all__ = ["SERVICE_NAMES", "Deps", "QdataServer"]

log = logging.getLogger("qdata.server")

# How long calls cancelled at the end of the grace period get to roll back and return their
# connections before the pool closes them anyway.
CANCEL_WAIT_SECONDS = 5.0
# How often each worker copies its pool's state into the metrics (metrics_qdata.sample_pool).
POOL_SAMPLE_SECONDS = 1.0


class QdataServer:
    """One gRPC server with its pool; `start` serves, `stop` drains and closes."""

    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        runtime_inputs: inputs.RuntimeInputs | None = None,
        *,
        worker_index: int = 0,
        clock: Clock | None = None,
    ):
        self.settings = settings
        # The budgets' clock (clock.py): None, database time, except in tests that move it.
        self.clock = clock
        self.conninfo = conninfo
        # This server's worker number (serve.py); worker 0 also runs the jobs one worker does for
        # the whole server: the scheduled verification and the database-derived gauges.
        self.worker_index = worker_index
        # The files' contents to serve with (serve.py reads them once, before the fork); None: read at start.
        self.runtime_inputs = runtime_inputs
        self.health = HealthServicer()
        self.server: aio.Server | None = None
        # The plaintext health-only server (QDATA_HEALTH_LISTEN_ADDRESS) and its port.
        self.health_server: aio.Server | None = None
        self.health_port: int = 0
        self.pool: QdataPool | None = None
        self.deps: Deps | None = None
        self.port: int = 0
        self._database_health: DatabaseHealth | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._interceptor: ServiceInterceptor | None = None
        self._metrics: QdataMetrics | None = None

    def _serving(self) -> bool:
        return bool(self._database_health and self._database_health.serving)

    def _background(self, name: str, interval: float, job: Callable[[], Awaitable[object]], failure: str) -> None:
        """Runs job every interval seconds while serving (see background.py)."""
        task = background.every(lambda: interval, job, log=log, failure=failure, when=self._serving)
        self._tasks.append(asyncio.create_task(task, name=name))

    async def start(self, address: str | None = None, *, reuse_port: bool = False) -> int:
        """Starts serving on address (NOT_SERVING until the database is ready); returns the port.

        Raises ConfigError when no way to authenticate is configured (before anything is opened)
        and StartupError when the files it reads are unusable or the key ring lacks versions
        stored API keys need.
        """
        settings = self.settings
        authenticator = Authenticator.from_settings(settings)
        if authenticator.insecure:
            log.warning("QDATA_ALLOW_INSECURE: no caller tokens; every call is accepted as 'anonymous'")
        await set_status(self.health, False)
        if self.runtime_inputs is None:
            try:
                self.runtime_inputs = inputs.load(settings)
            except ConfigError as exc:
                raise StartupError(f"configuration error: {exc}") from None
        tls = self.runtime_inputs.tls
        key_ring = self.runtime_inputs.key_ring
        # The pool connects in the background: a database that is down at start leaves the
        # server up and NOT_SERVING until the health monitor reaches it.
        pool = self.pool = await open_pool(settings, self.conninfo, wait=False)
        pool.clock = self.clock
        passwords = await PasswordHasher.create(settings)
        deps = self.deps = Deps(settings=settings, pool=pool, passwords=passwords, key_ring=key_ring)
        key_ring_gate = KeyRingGate(key_ring)
        try:
            await key_ring_gate.check_at_start(pool, wait_seconds=min(2.0, settings.pool_timeout_seconds))
        except StartupError:
            await pool.close()
            raise
        database_health = self._database_health = DatabaseHealth(
            self.health, settings, self.conninfo, pool, key_ring_gate, RoleGate(settings.allow_insecure)
        )

        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
        server_metrics = None
        if settings.metrics_listen_address:
            from qdata_server.metrics import ServerMetrics
            from qdata_server.metrics_qdata import QdataMetrics

            server_metrics = ServerMetrics()
            self._metrics = QdataMetrics(settings.ledger_currencies)
            metrics_hooks.install(self._metrics)
        self._interceptor = ServiceInterceptor(authenticator, server_metrics)
        server = aio.server(interceptors=[self._interceptor], options=options)
        user_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(deps), server)
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server(LedgerServicer(deps), server)
        chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(deps), server)
        usage_pb2_grpc.add_UsageServiceServicer_to_server(UsageServicer(deps), server)
        budget_pb2_grpc.add_BudgetServiceServicer_to_server(BudgetServicer(deps), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if settings.reflection:
            reflection.enable((*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
        address = address or settings.listen_address
        if tls is None:
            self.port = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(tls.private_key, tls.cert_chain)],
                root_certificates=tls.client_ca,
                require_client_auth=tls.client_ca is not None,
            )
            self.port = server.add_secure_port(address, credentials)
            log.info("tls", extra={"mutual": tls.client_ca is not None})
        if settings.health_listen_address:
            # Health only (anything else answers UNIMPLEMENTED), plaintext, same servicer: its
            # status is the main server's. No interceptor: health needs no caller identity.
            health_server = aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, health_server)
            self.health_port = health_server.add_insecure_port(settings.health_listen_address)
            await health_server.start()
            self.health_server = health_server
        await server.start()
        self.server = server
        await database_health.check()
        # The monitor probes whatever the status (it is what turns it back to SERVING).
        monitor = background.every(
            database_health.interval, database_health.check, log=log, failure="health probe failed"
        )
        self._tasks.append(asyncio.create_task(monitor, name="qdata-health"))
        if settings.hold_sweep_seconds > 0:
            self._background("qdata-hold-sweeper", settings.hold_sweep_seconds, self._sweep_holds, "hold sweep failed")
        if settings.idempotency_purge_seconds > 0 and settings.idempotency_retention_hours > 0:
            self._background(
                "qdata-idempotency-purge",
                settings.idempotency_purge_seconds,
                self._purge_request_ids,
                "idempotency purge failed",
            )
        if settings.audit_seal_seconds > 0:
            self._background("qdata-audit-sealer", settings.audit_seal_seconds, self._seal_audit, "audit seal failed")
        # Folds recorded usage into the statistics rollups and keeps usage partitions ahead.
        self._tasks.append(asyncio.create_task(usage_maintenance.run(deps, self._serving), name="qdata-usage-upkeep"))
        if self._metrics is not None:
            self._start_metrics_jobs(self._metrics)
        if settings.verify_interval_seconds > 0 and self.worker_index == 0:
            verification = ScheduledVerification(deps, self._metrics)
            self._background(
                "qdata-verify", settings.verify_interval_seconds, verification.run, "scheduled verification failed"
            )
        return self.port

    def _start_metrics_jobs(self, metrics: QdataMetrics) -> None:
        """Samples the pool into the metrics every POOL_SAMPLE_SECONDS; worker 0 also reads the
        database-derived gauges (metrics_database.py)."""
        pool, deps = self.pool, self.deps
        assert pool is not None and deps is not None

        async def sample_pool() -> None:
            metrics.sample_pool(pool)

        sampler = background.every(
            lambda: POOL_SAMPLE_SECONDS, sample_pool, log=log, failure="pool sample failed", wait_first=False
        )
        self._tasks.append(asyncio.create_task(sampler, name="qdata-pool-metrics"))
        if self.worker_index == 0:
            self._background(
                "qdata-database-gauges",
                metrics_database.REFRESH_SECONDS,
                lambda: metrics_database.refresh(deps, metrics),
                "database gauges failed",
            )

    async def check_health(self) -> bool:
        """Probes the database now; sets and returns the serving status (see health.py)."""
        if self._database_health is None:
            raise RuntimeError("the server has not started")
        return await self._database_health.check()

    async def _sweep_holds(self) -> None:
        """Resolves expired holds (requests also sweep the accounts they touch)."""
        assert self.deps is not None
        swept = await ledger_operations.sweep_expired_holds(self.deps)
        if swept:
            log.info("swept expired holds", extra={"accounts": swept})

    async def _purge_request_ids(self) -> None:
        """Forgets idempotency records older than the retention."""
        assert self.pool is not None
        purged = await idempotency.purge_expired(self.pool, self.settings.idempotency_retention_hours * 3600)
        if purged:
            log.info("purged idempotency records", extra={"records": purged})

    async def _seal_audit(self) -> None:
        """Chains the audit events of ended transactions (audit_sealer.py)."""
        assert self.pool is not None
        await audit_sealer.seal(self.pool)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown; afterwards no call runs and no database connection is left open.

        New calls get UNAVAILABLE (SHUTTING_DOWN) from the moment stop begins, health turns
        NOT_SERVING, and running calls get the grace period to finish. Then the transport stops
        (grpc.aio's server.stop: new connections are refused, and gRPC ends the calls still open
        with UNAVAILABLE), the calls still running are cancelled (psycopg cancels their statements
        in the server), and the pool closes every connection, including any still lent out.
        """
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        loop = asyncio.get_running_loop()
        ends = loop.time() + grace
        in_flight = self._interceptor.in_flight if self._interceptor else None
        if in_flight:
            in_flight.refuse_new()
        for task in self._tasks:
            await background.cancel(task)
        self._tasks.clear()
        await self.health.enter_graceful_shutdown()
        if self._metrics is not None:
            self._metrics.health_serving.set(0)
        if in_flight:
            await in_flight.drain(max(0.0, ends - loop.time()))
        if self.server:
            await self.server.stop(max(0.0, ends - loop.time()))
        if in_flight:
            cancelled = await in_flight.cancel(CANCEL_WAIT_SECONDS)
            if cancelled:
                log.warning("cancelled the calls still running after the grace period", extra={"calls": cancelled})
        if self.health_server:
            await self.health_server.stop(0)
        if self._database_health:
            await self._database_health.close()
        if self.pool:
            if self._metrics is not None:
                self._metrics.sample_pool(self.pool)  # the last counts, before the pool goes
            lent = await self.pool.close_all()
            if lent:
                log.warning("closed database connections still lent out at shutdown", extra={"connections": lent})
        if self._metrics is not None and metrics_hooks.active is self._metrics:
            metrics_hooks.install(None)
        log.info("stopped")
