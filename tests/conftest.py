"""Shared fixtures: one PostgreSQL per session, one database and gRPC server per test module.

The database server is QDATA_TEST_DATABASE_URL when set, else a private embedded PostgreSQL in a
temporary directory. The schema is migrated once into a template database. Each test module gets
a database cloned from it (CREATE DATABASE ... TEMPLATE) and one in-process server on a free
port; before every test that asks for `api`, the database goes back to its freshly migrated state
(tests/support/database.py's FreshState: one TRUNCATE, the seeded rows restored), so tests are
isolated and can run in any order without paying for a server each. Tests that need a database of
their own (they change the schema, stop the database, restart servers with other settings) take
`database_url`, a clone of their own, as before. Tests call the server over a real channel with
the generated stubs; the helpers they share are in tests/support/.
"""

from __future__ import annotations

import os

# Tests fork helper processes (grpcurl, the server under test) while gRPC threads run; gRPC's
# fork handlers are not needed for that and only print a warning line.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import dataclasses
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from qdata_server.clock import Clock
from qdata_server.db import migrate, roles
from tests.support.server import (
    SERVICE_LOGIN,
    SERVICE_PASSWORD,
    TEMPLATE_DB,
    TEST_SETTINGS,
    Api,
    ModuleServer,
    create_database,
    drop_database,
    start_api,
    stop_api,
    with_database,
)

__all__ = ["TEMPLATE_DB", "start_api", "stop_api", "with_database"]  # tests/integration/test_migrations.py


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
    url = create_database(postgres_url, "qdata_test")
    yield url
    drop_database(postgres_url, url)


@pytest.fixture
def empty_database_url(postgres_url: str) -> Iterator[str]:
    """A database with no schema at all, for migration tests."""
    url = create_database(postgres_url, "qdata_empty", template=None)
    yield url
    drop_database(postgres_url, url)


@pytest.fixture(scope="module")
async def module_server(postgres_url: str, template_url: str) -> AsyncIterator[ModuleServer]:
    """This module's database (a clone of the template) and its running server."""
    shared = ModuleServer(create_database(postgres_url, "qdata_module"))
    try:
        yield shared
    finally:
        await shared.close()
        drop_database(postgres_url, shared.database_url)


@pytest.fixture
async def api(module_server: ModuleServer) -> Api:
    """The module's server over the module's database, freshly migrated again for this test."""
    return await module_server.api()


@pytest.fixture
def api_with(module_server: ModuleServer) -> Callable[..., Awaitable[Api]]:
    """`await api_with(hold_sweep_seconds=0)`: the module's server with these settings changed
    (a new one when the running server's differ), over the module's database made fresh again."""

    async def serve(**changes: Any) -> Api:
        return await module_server.api(dataclasses.replace(TEST_SETTINGS, **changes))

    return serve


@pytest.fixture
def clock(module_server: ModuleServer, api: Api) -> Iterator[Clock]:
    """The budgets' clock of `api`'s server (qdata_server/clock.py), for the test to move:
    `clock.now = datetime(..., tzinfo=UTC)`; None (the start) is the database's time."""
    yield module_server.clock
    module_server.clock.now = None


@pytest.fixture
async def fresh_api(database_url: str) -> AsyncIterator[Api]:
    """A server of this test's own over a database of its own (a test that changes the schema or
    the statistics, or needs a server started for it alone)."""
    running = await start_api(database_url)
    try:
        yield running
    finally:
        await stop_api(running)
