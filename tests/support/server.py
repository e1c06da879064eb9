"""Servers under test: the settings tests run with, databases cloned from the template, an
in-process QdataServer with stubs over one real channel, and the module-wide server that the
`api` fixture hands to each test after putting its database back to the freshly migrated state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from qdata.v1 import budget_pb2_grpc, chat_pb2_grpc, ledger_pb2_grpc, usage_pb2_grpc, user_pb2_grpc
from qdata_server.app import QdataServer
from qdata_server.clock import Clock
from qdata_server.config import Settings
from tests.support.database import FreshState

TEMPLATE_DB = "qdata_test_template"
# The servers under test serve as this login role (a member of qdata_service, owning nothing), as
# in production; fixtures and assertions that inspect the database connect as the owner.
SERVICE_LOGIN = "qdata_test_app"
SERVICE_PASSWORD = "qdata-test-app"

# Test settings: a low bcrypt cost keeps the suite fast (configuration, not a test-only path).
# Authentication is off here (QDATA_ALLOW_INSECURE, every call as "anonymous") so that tests
# calling with grpcurl or the client library stay as they are; tests/api/test_auth.py runs the
# same server with tokens and proves every RPC refuses calls without the right one.
TEST_SETTINGS = Settings(
    allow_insecure=True,
    database_url="(per test)",
    pool_min_size=1,
    pool_max_size=8,
    pool_timeout_seconds=5.0,
    bcrypt_cost=4,
    lockout_threshold=3,
    lockout_seconds=60,
    health_probe_seconds=0.2,
    shutdown_grace_seconds=2.0,
    # No background audit sealer: tests that compare audit rows before and after a call would see
    # it chain them meanwhile. Tests seal with tests.support.audit.seal (or turn it on).
    audit_seal_seconds=0,
)


def with_database(conninfo: str, dbname: str) -> str:
    params = conninfo_to_dict(conninfo)
    params["dbname"] = dbname
    return make_conninfo(**params)


def serving_url(owner_url: str) -> str:
    """The same database, as the serving login role (row-level security applies to it)."""
    return make_conninfo(owner_url, user=SERVICE_LOGIN, password=SERVICE_PASSWORD)


def create_database(postgres_url: str, prefix: str, *, template: str | None = TEMPLATE_DB) -> str:
    """A new database (a clone of the migrated template unless template is None); returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(statement)
    return with_database(postgres_url, name)


def drop_database(postgres_url: str, url: str) -> None:
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclasses.dataclass
class Api:
    """A running server and stubs for each service over one real channel."""

    server: QdataServer
    channel: grpc.aio.Channel
    address: str
    # The test's database as its owner (for direct checks); the server itself serves as
    # SERVICE_LOGIN (serving_url(database_url)).
    database_url: str
    users: user_pb2_grpc.UserServiceStub
    ledger: ledger_pb2_grpc.LedgerServiceStub
    chat: chat_pb2_grpc.ChatServiceStub
    usage: usage_pb2_grpc.UsageServiceStub
    budgets: budget_pb2_grpc.BudgetServiceStub


async def start_api(
    database_url: str,
    settings: Settings = TEST_SETTINGS,
    *,
    serve_through: str | None = None,
    clock: Clock | None = None,
) -> Api:
    """Serves database_url as SERVICE_LOGIN (or through serve_through, e.g. a pooler in front of it);
    clock: the budgets' clock the server is built with (qdata_server/clock.py)."""
    server = QdataServer(settings, serve_through or serving_url(database_url), clock=clock)
    port = await server.start("127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address)
    return Api(
        server=server,
        channel=channel,
        address=address,
        database_url=database_url,
        users=user_pb2_grpc.UserServiceStub(channel),
        ledger=ledger_pb2_grpc.LedgerServiceStub(channel),
        chat=chat_pb2_grpc.ChatServiceStub(channel),
        usage=usage_pb2_grpc.UsageServiceStub(channel),
        budgets=budget_pb2_grpc.BudgetServiceStub(channel),
    )


async def stop_api(api: Api) -> None:
    await api.channel.close()
    await api.server.stop(grace=1.0)


@contextlib.asynccontextmanager
async def serving(database_url: str, settings: Settings = TEST_SETTINGS, **changes: Any) -> AsyncIterator[Api]:
    """A server of this block's own over database_url, with some settings changed
    (e.g. hold_sweep_seconds=0)."""
    running = await start_api(database_url, dataclasses.replace(settings, **changes) if changes else settings)
    try:
        yield running
    finally:
        await stop_api(running)


async def still_serving(api: Api) -> bool:
    """Whether the server answers health with SERVING (a test may have stopped it or broken it)."""
    try:
        reply = await health_pb2_grpc.HealthStub(api.channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


class ModuleServer:
    """One database and one running server for all the tests of a module.

    `api(settings)` returns the running server once the database is back to its freshly migrated
    state (FreshState.restore); a test asking for other settings than the running server's gets a
    new server with them (the old one stops). Tests that need a database of their own (they
    change the schema, stop the database, restart servers) keep the per-test `database_url`.
    """

    def __init__(self, database_url: str):
        self.database_url = database_url
        self.fresh = FreshState.take(database_url)
        self._running: Api | None = None
        # The budgets' clock of the module's servers: database time (now None) unless a test
        # moves it (the `clock` fixture); every test starts with it at database time.
        self.clock = Clock()

    async def api(self, settings: Settings = TEST_SETTINGS) -> Api:
        running = self._running
        if running is not None and (running.server.settings != settings or not await still_serving(running)):
            self._running = None
            await stop_api(running)
        await self.fresh.restore(self.database_url)
        self.clock.now = None
        if self._running is None:
            self._running = await start_api(self.database_url, settings, clock=self.clock)
        return self._running

    async def close(self) -> None:
        if self._running is not None:
            running, self._running = self._running, None
            await stop_api(running)
