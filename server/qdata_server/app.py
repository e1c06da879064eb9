"""Builds and runs one grpc.aio server: services, health, reflection, pool and lifecycle.

One `QdataServer` lives in each worker process (created after the fork). Health starts
NOT_SERVING, turns SERVING once the database answers the health probe (on a connection of its
own, not a pooled one), accepts writes and has no pending migration, goes back to NOT_SERVING
while the database is unreachable or read-only (and for good once prepared statements turn out
to be lost by a pooler: a configuration change, see db/transactions.py), and enters graceful
shutdown on stop, which refuses new calls with UNAVAILABLE, drains, cancels what the grace period
leaves running and closes every database connection (see QdataServer.stop).
With TLS configured the port is served with TLS (mutual TLS with a client CA); an optional second,
plaintext server on QDATA_HEALTH_LISTEN_ADDRESS serves only the same health servicer, for probes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import grpc
import psycopg
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from psycopg.rows import dict_row

from qdata.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
)
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import idempotency
from qdata_server.auth import Authenticator
from qdata_server.chat.service import ChatServicer
from qdata_server.config import ConfigError, Settings, check_tls
from qdata_server.db import migrate, transactions
from qdata_server.db.connection import Conn, Pool
from qdata_server.db.pool import QdataPool, open_pool
from qdata_server.db.sql import query
from qdata_server.errors import Unavailable
from qdata_server.interceptor import ServiceInterceptor
from qdata_server.ledger import operations as ledger_operations
from qdata_server.ledger.service import LedgerServicer
from qdata_server.pagination import PageTokens
from qdata_server.usage import maintenance as usage_maintenance
from qdata_server.usage.service import UsageServicer
from qdata_server.users import api_keys, vault
from qdata_server.users.passwords import PasswordHasher
from qdata_server.users.service import UserServicer

log = logging.getLogger("qdata.server")
# Probe interval while the database is out of reach (QDATA_HEALTH_PROBE_SECONDS if shorter).
UNREACHABLE_PROBE_SECONDS = 0.5
# At most one "connection pool saturated" line per this many seconds.
SATURATION_LOG_SECONDS = 60.0
R = TypeVar("R", bound=Message)
T = TypeVar("T")

SERVICE_NAMES = (
    user_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,
    ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
    chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
    usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
)


@dataclasses.dataclass
class Deps:
    """What service code needs from the runtime: settings, pool and shared helpers."""

    settings: Settings
    pool: Pool
    passwords: PasswordHasher
    _page_tokens: PageTokens | None = None
    # The API key vault's key ring; None when none is configured (VAULT_NOT_CONFIGURED).
    key_ring: vault.KeyRing | None = None

    async def transaction(
        self,
        work: Callable[[Conn], Awaitable[T]],
        *,
        acting: transactions.Acting,
        snapshot: bool = False,
    ) -> T:
        """Runs work(conn) in one transaction acting for `acting` (see db/transactions.py)."""
        return await transactions.run(
            self.pool, work, acting=acting, retries=self.settings.transaction_retries, snapshot=snapshot
        )

    async def idempotent(
        self,
        request: Message,
        response_type: type[R],
        work: Callable[[Conn], Awaitable[R]],
        *,
        user_id: uuid.UUID | None = None,
        acting: transactions.Acting | None = None,
        secret_fields: Iterable[str] = (),
        canonical: Message | None = None,
        key: idempotency.RequestKey | None = None,
        remembered: Callable[[Conn], Awaitable[R]] | None = None,
    ) -> R:
        """Runs a mutation once per request_id; see qdata_server.idempotency.

        The request_id is scoped to user_id; the transaction acts for user_id (or for nobody)
        unless `acting` says otherwise (a transfer acts for both of its users). A money-moving
        request passes its key and how to answer it from the ledger once its record is purged.
        """
        return await idempotency.run_idempotent(
            self.pool,
            request,
            response_type,
            work,
            user_id=user_id,
            acting=acting or transactions.acting_for(user_id),
            secret_fields=secret_fields,
            canonical=canonical,
            key=key,
            remembered=remembered,
            retries=self.settings.transaction_retries,
        )

    async def replayed(self, request: Message, *, user_id: uuid.UUID | None = None) -> bool:
        """True if request's request_id already holds a committed response."""
        return await idempotency.was_recorded(self.pool, request, user_id=user_id)

    async def page_tokens(self) -> PageTokens:
        """The page token sealer, keyed by the secret stored in the database (read once)."""
        if self._page_tokens is None:

            async def read(conn: Conn) -> bytes:
                cur = await conn.execute(query("get_server_secret"), {"name": "page_token_key"})
                row = await cur.fetchone()
                if row is None:
                    raise Unavailable("the schema is not migrated", reason=ErrorReason.ERROR_REASON_SCHEMA_NOT_READY)
                return bytes(row["secret"])

            self._page_tokens = PageTokens(await self.transaction(read, acting=transactions.ACTING_FOR_NO_USER))
        return self._page_tokens


async def _cancel(task: asyncio.Task) -> None:
    """Cancels a background task and waits for it to end.

    The cancellation is repeated: a CancelledError that lands inside a library's own wait (the
    pool's connection checkout) can be absorbed there, and a single cancel would then leave stop()
    waiting forever on a task that keeps running.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled():
        task.exception()  # retrieved: a background task's failure was already logged by the task


# How long calls cancelled at the end of the grace period get to roll back and return their
# connections before the pool closes them anyway.
CANCEL_WAIT_SECONDS = 5.0


class QdataServer:
    """One gRPC server with its pool; `start` serves, `stop` drains and closes."""

    def __init__(self, settings: Settings, conninfo: str):
        self.settings = settings
        self.conninfo = conninfo
        self.health = HealthServicer()
        self.server: aio.Server | None = None
        # The plaintext health-only server (QDATA_HEALTH_LISTEN_ADDRESS) and its port.
        self.health_server: aio.Server | None = None
        self.health_port: int = 0
        self.pool: QdataPool | None = None
        self.deps: Deps | None = None
        self.port: int = 0
        self._monitor: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self._usage_upkeep: asyncio.Task | None = None
        self._purger: asyncio.Task | None = None
        self._interceptor: ServiceInterceptor | None = None
        self._stopping = False
        self._serving: bool | None = None
        # The health probe's own connection (see _probe), and whether the last probe reached it.
        self._probe_conn: psycopg.AsyncConnection | None = None
        self._reachable = True
        self._probe_lost = False
        self._health_lock = asyncio.Lock()
        self._saturation_logged_at = -SATURATION_LOG_SECONDS
        self._key_ring_checked = False
        # Whether the role check (see _role_is_confined) has already logged its finding.
        self._role_warned = False

    async def start(self, address: str | None = None, *, reuse_port: bool = False) -> int:
        """Starts serving on address (NOT_SERVING until the database is ready); returns the port."""
        settings = self.settings
        # Refuses (ConfigError) before anything is opened when no way to authenticate is configured.
        authenticator = Authenticator.from_settings(settings)
        if authenticator.insecure:
            log.warning("QDATA_ALLOW_INSECURE: no caller tokens; every call is accepted as 'anonymous'")
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        # The pool connects in the background: a database that is down at start leaves the
        # server up and NOT_SERVING until the health monitor reaches it.
        try:
            tls = check_tls(settings)
            key_ring = vault.load_key_ring(settings)
        except ConfigError as exc:
            raise SystemExit(f"configuration error: {exc}") from None
        self.pool = await open_pool(settings, self.conninfo, wait=False)
        passwords = await PasswordHasher.create(settings)
        self.deps = Deps(settings=settings, pool=self.pool, passwords=passwords, key_ring=key_ring)
        await self._refuse_missing_key_versions()

        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
        self._interceptor = ServiceInterceptor(authenticator)
        server = aio.server(interceptors=[self._interceptor], options=options)
        user_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(self.deps), server)
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server(LedgerServicer(self.deps), server)
        chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(self.deps), server)
        usage_pb2_grpc.add_UsageServiceServicer_to_server(UsageServicer(self.deps), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if settings.reflection:
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
                server,
            )
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
        await self.check_health()
        self._monitor = asyncio.create_task(self._watch_database(), name="qdata-health")
        if settings.hold_sweep_seconds > 0:
            self._sweeper = asyncio.create_task(self._sweep_holds(), name="qdata-hold-sweeper")
        if settings.idempotency_purge_seconds > 0 and settings.idempotency_retention_hours > 0:
            self._purger = asyncio.create_task(self._purge_request_ids(), name="qdata-idempotency-purge")
        # Folds recorded usage into the statistics rollups and keeps usage partitions ahead.
        self._usage_upkeep = asyncio.create_task(
            usage_maintenance.run(self.deps, lambda: bool(self._serving)), name="qdata-usage-upkeep"
        )
        return self.port

    async def _refuse_missing_key_versions(self) -> None:
        """Exits if stored API keys need KEK versions the key ring lacks (see users/vault.py).

        Checked here, in each worker, because only the worker has a pool; a database that is down
        or not migrated yet defers the check to the health monitor, which keeps the server
        NOT_SERVING while the check fails.
        """
        ring = self.deps.key_ring
        if ring is None:
            return
        try:
            async with (
                self.pool.connection(timeout=min(2.0, self.settings.pool_timeout_seconds)) as conn,
                conn.transaction(),
            ):
                cur = await conn.execute(query("api_keys_table_present"))
                present = (await cur.fetchone())["present"]
                if present:
                    # Counting every user's keys by version is a cross-user read.
                    await transactions.name_acting(conn, transactions.ACTING_FOR_ALL_USERS)
                problem = await api_keys.check_ring(conn, ring) if present else None
        except Exception as exc:
            log.warning("key ring check deferred: database unreachable", extra={"error_type": type(exc).__name__})
            return
        if problem:
            await self.pool.close()
            raise SystemExit(problem)
        self._key_ring_checked = present
        log.info("key ring", extra={"versions": ring.versions, "primary": ring.primary})

    async def _role_is_confined(self, conn: psycopg.AsyncConnection) -> bool:
        """False (not serving) if the server's database role escapes row-level security.

        A superuser, a role with BYPASSRLS or the tables' owner sees every user's rows whatever
        the policies say; serving as one is allowed only with QDATA_ALLOW_INSECURE (logged once).
        """
        cur = await conn.execute(query("serving_role_confined"))
        confined = (await cur.fetchone())["confined"]
        if confined:
            return True
        if self.settings.allow_insecure:
            if not self._role_warned:
                log.warning(
                    "the database role bypasses row-level security (superuser, BYPASSRLS or table owner); "
                    "serving anyway because QDATA_ALLOW_INSECURE is set"
                )
                self._role_warned = True
            return True
        if not self._role_warned:
            log.error(
                "not serving: the database role in DATABASE_URL bypasses row-level security (superuser, "
                "BYPASSRLS or the tables' owner). Serve as a login role that is a member of qdata_service "
                "and run migrations as the owner (QDATA_OWNER_DATABASE_URL); see README"
            )
            self._role_warned = True
        return False

    async def check_health(self) -> bool:
        """Probes the database and the schema; sets and returns the serving status.

        Health answers "can this instance serve calls": the database answers on a connection of
        the probe's own (never a pooled one, so a saturated pool is not an outage), accepts
        writes, has no pending migration, and confines the serving role. A read-only database is
        NOT_SERVING: every write would fail, and taking the instance out lets traffic reach
        instances that see the primary. A database out of disk space stays SERVING (reads work;
        writes answer UNAVAILABLE DATABASE_FULL), as would every other instance on it.
        """
        # One probe at a time (the monitor and a direct caller share the probe's connection).
        async with self._health_lock:
            return await self._check_health()

    async def _check_health(self) -> bool:
        serving = False
        reachable = False
        try:
            async with asyncio.timeout(self._probe_timeout()):
                serving = await self._probe()
            reachable = True
        except migrate.MigrationError as exc:
            reachable = True
            log.error("migration history disagrees with this build: %s", exc)
        except Exception as exc:
            await self._close_probe()
            if self._serving is not False:
                log.warning("database unreachable", extra={"error_type": type(exc).__name__})
        lost, self._probe_lost = self._probe_lost, False
        if reachable and (
            lost or not self._reachable or self.pool.get_stats().get("pool_size", 0) < self.pool.min_size
        ):
            # The database is back, the probe's connection was killed (the pool's likely were too),
            # or the pool lost connections: connect now, not at the pool's next backoff step (dead
            # idle connections are dropped at checkout). Outside the probe's timeout: revive must
            # not be cut short.
            await self.pool.revive()
        self._reachable = reachable
        self._note_saturation()
        if transactions.prepared_statements_unsupported(self.pool):
            # Logged with the fix when first seen: the configuration must change (a restart).
            serving = False
        if serving != self._serving:
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", *SERVICE_NAMES):
                await self.health.set(name, status)
            self._serving = serving
            log.info("health", extra={"serving": serving})
        return serving

    def _probe_timeout(self) -> float:
        return min(2.0, self.settings.pool_timeout_seconds)

    async def _probe(self) -> bool:
        """Runs the health checks on the probe's connection, reconnecting once if it was lost.

        A connection killed since the last probe (pg_terminate_backend, a restart) says nothing
        about the database now; only a fresh connection that fails does.
        """
        while True:
            fresh = self._probe_conn is None or self._probe_conn.closed
            if fresh:
                self._probe_conn = await psycopg.AsyncConnection.connect(
                    self.conninfo,
                    autocommit=True,
                    row_factory=dict_row,
                    prepare_threshold=None,
                    connect_timeout=max(1, int(self._probe_timeout())),
                    application_name="qdata-health",
                )
            try:
                return await self._run_checks(self._probe_conn)
            except psycopg.OperationalError:
                await self._close_probe()
                if fresh:
                    raise
                self._probe_lost = True

    async def _run_checks(self, conn: psycopg.AsyncConnection) -> bool:
        async with conn.transaction():
            read_only = (await (await conn.execute(query("database_read_only"))).fetchone())["read_only"]
            migrated = await migrate.pending_count(conn) == 0
            serving = migrated and not read_only and await self._role_is_confined(conn)
            if serving and not self._key_ring_checked and self.deps.key_ring is not None:
                # Start could not check the key ring (database down or schema not migrated).
                await transactions.name_acting(conn, transactions.ACTING_FOR_ALL_USERS)
                problem = await api_keys.check_ring(conn, self.deps.key_ring)
                if problem:
                    log.error(problem)
                    serving = False
                self._key_ring_checked = not problem
        if self._serving is not False:
            if not migrated:
                log.warning("schema has pending migrations; not serving until they are applied")
            elif read_only:
                log.warning("the database is read-only (a standby, or default_transaction_read_only); not serving")
        return serving

    async def _close_probe(self) -> None:
        conn, self._probe_conn = self._probe_conn, None
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

    async def _watch_database(self) -> None:
        while not self._stopping:
            # While the database is out of reach, probe often: SERVING comes back, and the pool
            # starts connecting, soon after the database accepts connections again.
            interval = self.settings.health_probe_seconds
            if not self._reachable:
                interval = min(interval, UNREACHABLE_PROBE_SECONDS)
            await asyncio.sleep(interval)
            await self.check_health()

    async def _sweep_holds(self) -> None:
        """Resolves expired holds in the background (requests also sweep the accounts they touch)."""
        while not self._stopping:
            await asyncio.sleep(self.settings.hold_sweep_seconds)
            if not self._serving:
                continue
            try:
                swept = await ledger_operations.sweep_expired_holds(self.deps)
                if swept:
                    log.info("swept expired holds", extra={"accounts": swept})
            except Exception as exc:
                log.warning("hold sweep failed", extra={"error_type": type(exc).__name__})

    async def _purge_request_ids(self) -> None:
        """Forgets idempotency records older than the retention, in the background."""
        retention = self.settings.idempotency_retention_hours * 3600
        while not self._stopping:
            await asyncio.sleep(self.settings.idempotency_purge_seconds)
            if not self._serving:
                continue
            try:
                purged = await idempotency.purge_expired(self.pool, retention)
                if purged:
                    log.info("purged idempotency records", extra={"records": purged})
            except Exception as exc:
                log.warning("idempotency purge failed", extra={"error_type": type(exc).__name__})

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
        self._stopping = True
        for task in (self._monitor, self._sweeper, self._usage_upkeep, self._purger):
            if task:
                await _cancel(task)
        await self.health.enter_graceful_shutdown()
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
        await self._close_probe()
        if self.pool:
            lent = await self.pool.close_all()
            if lent:
                log.warning("closed database connections still lent out at shutdown", extra={"connections": lent})
        log.info("stopped")
