"""Shared fixtures: one PostgreSQL per session, a fresh database and gRPC server per test.

The database server is QDATA_TEST_DATABASE_URL when set, else a private embedded PostgreSQL in a
temporary directory. The schema is migrated once into a template database; every test gets its
own database cloned from it (CREATE DATABASE ... TEMPLATE), so tests are isolated and can run in
any order. The gRPC server runs in-process on a free port and tests call it over a real channel
with the generated stubs.
"""

from __future__ import annotations

import os

# Tests fork helper processes (grpcurl, the server under test) while gRPC threads run; gRPC's
# fork handlers are not needed for that and only print a warning line.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import dataclasses
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from qdata.v1 import chat_pb2_grpc, ledger_pb2_grpc, usage_pb2_grpc, user_pb2_grpc
from qdata_server.app import QdataServer
from qdata_server.config import Settings
from qdata_server.db import migrate, roles

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
)


def with_database(conninfo: str, dbname: str) -> str:
    params = conninfo_to_dict(conninfo)
    params["dbname"] = dbname
    return make_conninfo(**params)


def serving_url(owner_url: str) -> str:
    """The same database, as the serving login role (row-level security applies to it)."""
    return make_conninfo(owner_url, user=SERVICE_LOGIN, password=SERVICE_PASSWORD)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The maintenance database URL of the session's PostgreSQL server."""
    url = os.environ.get("QDATA_TEST_DATABASE_URL")
    if not url:
        from qdata_server import embedded

        # Its own directory outside pytest's tmp tree (which concurrent pytest runs prune), removed
        # with the data when this process exits.
        data_dir = Path(tempfile.mkdtemp(prefix="qdata-test-pg-")) / "data"
        url = embedded.start(str(data_dir), database="postgres", delete_on_exit=True)
    roles.ensure_service_login(url, SERVICE_LOGIN, password=SERVICE_PASSWORD)
    yield url


@pytest.fixture(scope="session")
def template_url(postgres_url: str) -> str:
    """A freshly migrated template database, created once per session."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    url = with_database(postgres_url, TEMPLATE_DB)
    migrate.migrate(url)
    return url


@pytest.fixture
def database_url(postgres_url: str, template_url: str) -> Iterator[str]:
    """A database of this test's own, cloned from the migrated template."""
    name = f"qdata_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE_DB))
        )
    yield with_database(postgres_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def empty_database_url(postgres_url: str) -> Iterator[str]:
    """A database with no schema at all, for migration tests."""
    name = f"qdata_empty_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_database(postgres_url, name)
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


async def start_api(database_url: str, settings: Settings = TEST_SETTINGS, *, serve_through: str | None = None) -> Api:
    """Serves database_url as SERVICE_LOGIN (or through serve_through, e.g. a pooler in front of it)."""
    server = QdataServer(settings, serve_through or serving_url(database_url))
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
    )


async def stop_api(api: Api) -> None:
    await api.channel.close()
    await api.server.stop(grace=1.0)


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    """The service on a free port over this test's database."""
    running = await start_api(database_url)
    try:
        yield running
    finally:
        await stop_api(running)
