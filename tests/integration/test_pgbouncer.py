"""The server behind a real PgBouncer in transaction mode (the 1.18 Debian ships).

psycopg prepares a query after its 5th use on a connection; PgBouncer before 1.21 (or without
max_prepared_statements) hands each transaction to whichever server connection is free, where
that statement is missing (26000) or another client's of the same name exists (42P05). The
server must say so (UNAVAILABLE, PREPARED_STATEMENTS_UNSUPPORTED, one ERROR line with the fix,
health NOT_SERVING), never INTERNAL; with QDATA_PREPARED_STATEMENTS=false it serves normally.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from qdata.v1 import ledger_pb2, user_pb2
from tests.support.calls import create_user, error_info
from tests.support.server import SERVICE_LOGIN, SERVICE_PASSWORD, TEST_SETTINGS, Api, start_api, stop_api

PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
pytestmark = pytest.mark.skipif(
    PGBOUNCER is None, reason="the pgbouncer binary is not installed (apt-get install pgbouncer; .ci/run installs it)"
)

# More client connections than PgBouncer has server connections, so transactions change hands.
CLIENT_CONNECTIONS = 4
SERVER_CONNECTIONS = 2
CALLS = 40
# Rounds of CALLS in the test without prepared statements.
ROUNDS = 6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as(socket_dir: str | None) -> str | None:
    """The user PgBouncer runs as: it refuses root, and must reach a unix socket's directory."""
    if os.geteuid() != 0:
        return None
    if socket_dir:
        owner = pwd.getpwuid(os.stat(socket_dir).st_uid).pw_name
        if owner != "root":
            return owner
    return "nobody"


@dataclasses.dataclass(frozen=True)
class Bouncer:
    host: str
    port: int

    def url(self, database_url: str) -> str:
        """The test's database through PgBouncer, as the serving login."""
        return make_conninfo(
            host=self.host,
            port=str(self.port),
            dbname=conninfo_to_dict(database_url)["dbname"],
            user=SERVICE_LOGIN,
            password=SERVICE_PASSWORD,
        )


@pytest.fixture
def bouncer(postgres_url: str) -> Iterator[Bouncer]:
    """PgBouncer in transaction mode in front of the session's PostgreSQL (TCP or unix socket)."""
    target = conninfo_to_dict(postgres_url)
    host = str(target.get("host") or "localhost")
    socket_dir = host if host.startswith("/") else None
    user = _run_as(socket_dir)
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="qdata-pgbouncer-"))
    owner_user = str(target.get("user") or "postgres")
    users = {SERVICE_LOGIN: SERVICE_PASSWORD, owner_user: str(target.get("password") or "")}
    (folder / "users.txt").write_text("".join(f'"{name}" "{password}"\n' for name, password in users.items()))
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={host} port={target.get('port') or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {SERVER_CONNECTIONS}\n"
        f"logfile = {folder / 'pgbouncer.log'}\n"
    )
    if user is not None:
        uid = pwd.getpwnam(user).pw_uid
        for path in (folder, *folder.iterdir()):
            os.chown(path, uid, -1)
    command = [PGBOUNCER, *(["-u", user] if user else []), str(folder / "pgbouncer.ini")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = folder / "pgbouncer.log"
                    raise RuntimeError(f"pgbouncer did not start: {log.read_text() if log.exists() else ''}") from None
                time.sleep(0.05)
        yield Bouncer("127.0.0.1", port)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


async def _serve_through(bouncer: Bouncer, database_url: str, *, prepared_statements: bool) -> Api:
    settings = dataclasses.replace(
        TEST_SETTINGS,
        prepared_statements=prepared_statements,
        pool_min_size=CLIENT_CONNECTIONS,
        pool_max_size=CLIENT_CONNECTIONS,
    )
    return await start_api(database_url, settings, serve_through=bouncer.url(database_url))


async def _health(api: Api) -> int:
    stub = health_pb2_grpc.HealthStub(api.channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status


async def _calls(api: Api) -> list[tuple[str, str]]:
    """CALLS reads and writes; the (code, reason) of each one that failed."""
    user = await create_user(api)
    failures = []
    for i in range(CALLS):
        call = (
            api.users.GetUser(user_pb2.GetUserRequest(id=user.id))
            if i % 2
            else api.ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=user.id, currency_code="USD"))
        )
        try:
            await call
        except grpc.aio.AioRpcError as error:
            failures.append((error.code().name, error_info(error).reason))
    return failures


async def test_prepared_statements_behind_an_old_pgbouncer_are_unavailable_with_the_fix_logged(
    bouncer, database_url, caplog
):
    caplog.set_level(logging.INFO, logger="qdata.db")
    api = await _serve_through(bouncer, database_url, prepared_statements=True)
    try:
        assert await _health(api) == health_pb2.HealthCheckResponse.SERVING
        failures = await _calls(api)
        assert failures, "no prepared statement was lost: the test did not reproduce the problem"
        assert set(failures) == {("UNAVAILABLE", "PREPARED_STATEMENTS_UNSUPPORTED")}
        fixes = [
            r for r in caplog.records if r.levelno == logging.ERROR and "QDATA_PREPARED_STATEMENTS=false" in r.message
        ]
        assert len(fixes) == 1
        await api.server.check_health()
        assert await _health(api) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await stop_api(api)


async def test_without_prepared_statements_the_same_pgbouncer_serves(bouncer, database_url):
    api = await _serve_through(bouncer, database_url, prepared_statements=False)
    try:
        # Rounds of calls while the health probe and the background upkeep use connections too:
        # with pipelined transactions PgBouncer 1.18 sometimes kept a server connection linked to
        # an idle client, and every later call hung (seen in about one run in three).
        async with asyncio.timeout(60):
            for _ in range(ROUNDS):
                assert await _calls(api) == []
        await api.server.check_health()
        assert await _health(api) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await stop_api(api)
