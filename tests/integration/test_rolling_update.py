"""A rolling update: a newer replica's migration lands under a warmed, older server.

The server prepares statements (the default): psycopg prepares a query after its 5th use on a
connection. A column that a newer release adds must not break what this one already prepared
(PostgreSQL refuses "cached plan must not change result type" when a prepared statement's result
shape changes, which a `*` column list makes it do). And the previous release itself, taken from
git (tests/support/releases.py), keeps answering and stays SERVING while this release's
migrations and current source land under it, then serves next to this release's server. And when
0017 moves the audit hash chain off the write path, the events a release before it chained in its
trigger and the ones the new sealer chains make one verifiable trail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qdata.v1 import (
    budget_pb2,
    budget_pb2_grpc,
    chat_pb2,
    chat_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
)
from qdata_server import audit_chain
from qdata_server.db import migrate
from tests.support import releases
from tests.support.audit import seal
from tests.support.calls import create_user, rid
from tests.support.database import sql
from tests.support.ledger import deposit
from tests.support.processes import ServerProcess, server_env
from tests.support.releases import PREVIOUS_RELEASE, Release
from tests.support.server import TEST_SETTINGS, Api, start_api, stop_api
from tests.support.usage import create_model, usage

USD = 1_000_000
# Two connections, so that each one sees every query more than 5 times in a round.
SETTINGS = dataclasses.replace(TEST_SETTINGS, prepared_statements=True, pool_min_size=2, pool_max_size=2)
CALLS_PER_ROUND = 14
# Where a release tree (tests/support/releases.py) keeps its migrations.
MIGRATIONS_IN_TREE = Path("server/qdata_server/db/migrations")

# What a newer release's migration might do: add nullable columns, no default (no table
# rewrite), and record itself under a version this build does not ship.
ADDITIVE_MIGRATION = [
    "ALTER TABLE ledger_transactions ADD COLUMN rolling_note text NULL",
    "ALTER TABLE ledger_holds ADD COLUMN rolling_note text NULL",
    "ALTER TABLE users ADD COLUMN rolling_note text NULL",
    "ALTER TABLE chat_sessions ADD COLUMN rolling_note text NULL",
    "ALTER TABLE chat_messages ADD COLUMN rolling_note text NULL",
    "ALTER TABLE usage_records ADD COLUMN rolling_note text NULL",
    "ALTER TABLE models ADD COLUMN rolling_note text NULL",
    "INSERT INTO schema_migrations (version, name, checksum, fingerprint)"
    " VALUES (9999, 'rolling_note', repeat('0', 64), repeat('0', 64))",
]


Calls = dict[str, Callable[[], Awaitable[object]]]


async def warm_up(api: Api | Remote) -> Calls:
    """A call of every kind the server prepares statements for, on rows it creates first."""
    user = await create_user(api)
    deposit = await api.ledger.Deposit(
        ledger_pb2.DepositRequest(
            request_id=rid(),
            user_id=user.id,
            amount_micros=1000 * USD,
            currency_code="USD",
            source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
        )
    )
    hold = await api.ledger.CreateHold(
        ledger_pb2.CreateHoldRequest(request_id=rid(), user_id=user.id, amount_micros=USD, currency_code="USD")
    )
    session = (await api.chat.CreateSession(chat_pb2.CreateSessionRequest(request_id=rid(), user_id=user.id))).session
    message = chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_USER, content="hello")
    model = (await create_model(api)).model

    return {
        "CreateUser": lambda: create_user(api),
        "GetUser": lambda: api.users.GetUser(user_pb2.GetUserRequest(id=user.id)),
        "ListUsers": lambda: api.users.ListUsers(user_pb2.ListUsersRequest(page_size=5)),
        "Deposit": lambda: api.ledger.Deposit(
            ledger_pb2.DepositRequest(
                request_id=rid(),
                user_id=user.id,
                amount_micros=USD,
                currency_code="USD",
                source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
            )
        ),
        "GetBalance": lambda: api.ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=user.id, currency_code="USD")),
        "GetTransaction": lambda: api.ledger.GetTransaction(
            ledger_pb2.GetTransactionRequest(user_id=user.id, transaction_id=deposit.transaction.id)
        ),
        "ListTransactions": lambda: api.ledger.ListTransactions(
            ledger_pb2.ListTransactionsRequest(user_id=user.id, page_size=10)
        ),
        "GetHold": lambda: api.ledger.GetHold(ledger_pb2.GetHoldRequest(user_id=user.id, hold_id=hold.hold.id)),
        "AppendMessages": lambda: api.chat.AppendMessages(
            chat_pb2.AppendMessagesRequest(request_id=rid(), user_id=user.id, session_id=session.id, messages=[message])
        ),
        "GetSession": lambda: api.chat.GetSession(chat_pb2.GetSessionRequest(user_id=user.id, session_id=session.id)),
        "ListMessages": lambda: api.chat.ListMessages(
            chat_pb2.ListMessagesRequest(user_id=user.id, session_id=session.id, page_size=10)
        ),
        "RecordUsage": lambda: api.usage.RecordUsage(usage(user.id, model.id)),
        "GetModel": lambda: api.usage.GetModel(usage_pb2.GetModelRequest(model_id=model.id)),
        "ListModels": lambda: api.usage.ListModels(usage_pb2.ListModelsRequest(page_size=10)),
    }


async def round_of_calls(calls: Calls) -> list[str]:
    """Every call CALLS_PER_ROUND times; the failures, by call."""
    errors = []
    for name, call in calls.items():
        for _ in range(CALLS_PER_ROUND):
            try:
                await call()
            except grpc.aio.AioRpcError as error:
                errors.append(f"{name}: {error.code().name} {error.details()}")
    return errors


async def assert_serving(api: Api) -> None:
    """The replica stays in rotation: its own health check and the Health service say so."""
    assert await api.server.check_health()
    health = health_pb2_grpc.HealthStub(api.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_warmed_server_keeps_serving_while_an_additive_migration_lands(database_url):
    api = await start_api(database_url, SETTINGS)
    try:
        calls = await warm_up(api)
        assert await round_of_calls(calls) == []  # warmed: every query above is now prepared
        async with await psycopg.AsyncConnection.connect(api.database_url) as owner, owner.transaction():
            for statement in ADDITIVE_MIGRATION:
                await owner.execute(statement)
        assert await round_of_calls(calls) == []
        # And this (older) replica stays in rotation next to the newer schema.
        await assert_serving(api)
    finally:
        await stop_api(api)


def unpacked_release(commit: str, tmp_path_factory: pytest.TempPathFactory) -> Release:
    """A release's server and client from git (skips the test without the history)."""
    reason = releases.unavailable(commit)
    if reason:
        pytest.skip(f"the release {commit[:12]} cannot be taken from git: {reason}")
    release = releases.materialize(commit, tmp_path_factory.mktemp("releases"))
    # Its own code is what runs, not this checkout's (installed editable in the venv).
    imported = release.python("import qdata, qdata_server; print(qdata_server.__file__); print(qdata.__file__)")
    assert imported.splitlines() == [
        str(release.root / "server" / "qdata_server" / "__init__.py"),
        str(release.root / "clients" / "python" / "qdata" / "__init__.py"),
    ]
    return release


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """The previous release's server and client, unpacked once per session."""
    return unpacked_release(PREVIOUS_RELEASE, tmp_path_factory)


# The last release whose audit trigger chained events in the write's transaction (before 0017).
RELEASE_BEFORE_0017 = "c6f838b7aacf440c07eaf88940c123aa8a09122e"


@pytest.fixture(scope="session")
def release_before_0017(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """The release before the sealer, unpacked once per session."""
    return unpacked_release(RELEASE_BEFORE_0017, tmp_path_factory)


@dataclasses.dataclass
class Remote:
    """Stubs over one channel to a server process (what warm_up and round_of_calls use of an Api)."""

    channel: grpc.aio.Channel
    users: user_pb2_grpc.UserServiceStub
    ledger: ledger_pb2_grpc.LedgerServiceStub
    chat: chat_pb2_grpc.ChatServiceStub
    usage: usage_pb2_grpc.UsageServiceStub

    @classmethod
    def of(cls, server: ServerProcess) -> Remote:
        # A connection of its own (channels to one address otherwise share one), which the
        # kernel hands to one of the server's workers.
        channel = grpc.aio.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
        return cls(
            channel,
            user_pb2_grpc.UserServiceStub(channel),
            ledger_pb2_grpc.LedgerServiceStub(channel),
            chat_pb2_grpc.ChatServiceStub(channel),
            usage_pb2_grpc.UsageServiceStub(channel),
        )

    async def serving(self) -> bool:
        health = health_pb2_grpc.HealthStub(self.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        return reply.status == health_pb2.HealthCheckResponse.SERVING


@dataclasses.dataclass
class Workload:
    """Warmed calls over channels that reach every worker of one server."""

    remotes: list[Remote]
    calls: Calls

    @classmethod
    async def over(cls, server: ServerProcess) -> Workload:
        remotes: list[Remote] = []
        calls: Calls = {}
        # A connection goes to a worker by a hash of its address: channels until every worker
        # logged a call of one (its "rpc" log line names its pid).
        while len({line["pid"] for line in server.lines() if line.get("message") == "rpc"}) < server.serving_processes:
            assert len(remotes) < 32, server.output()
            remote = Remote.of(server)
            remotes.append(remote)
            warmed = await warm_up(remote)
            calls.update({f"{name} (channel {len(remotes)})": call for name, call in warmed.items()})
        return cls(remotes, calls)

    async def serving(self) -> bool:
        return all([await remote.serving() for remote in self.remotes])

    async def close(self) -> None:
        for remote in self.remotes:
            await remote.channel.close()


# The settings of the previous test, as a served process's environment: two workers.
PROCESS_SETTINGS = {
    "QDATA_WORKERS": "2",
    "QDATA_PREPARED_STATEMENTS": "true",
    "QDATA_POOL_MIN_SIZE": "2",
    "QDATA_POOL_MAX_SIZE": "2",
}


# A release's `verify` up to c6f838b named each current-source file whose text a newer release
# changed ("the database runs a later text than this build ships") and exited 1, although it kept
# serving that database; from 879b048 on, `verify` tolerates those texts beside migrations newer
# than its build. True only while PREVIOUS_RELEASE is c6f838b or older.
PREVIOUS_VERIFY_NAMES_NEWER_TEXTS = False


def check(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def previous_verify(release: Release, owner: dict[str, str]) -> list[str]:
    """The problems the previous release's `verify` reports (its exit status agreeing)."""
    done = release.run("verify", env=owner)
    problems = [line.removeprefix("problem: ") for line in done.stdout.splitlines() if line.startswith("problem: ")]
    assert done.returncode == (1 if problems else 0), f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return problems


def expected_previous_verify(release: Release) -> list[str]:
    """What previous_verify reports on a database this release migrated: see PREVIOUS_VERIFY_NAMES_NEWER_TEXTS."""
    if not PREVIOUS_VERIFY_NAMES_NEWER_TEXTS:
        return []
    theirs = {s.name: s.checksum for s in migrate.load_sources(release.root / "server/qdata_server/db/functions")}
    return [
        f"current source functions/{s.name}: the database runs a later text than this build ships "
        "(a newer release migrated it; or this build reverts a change: see docs/database.md)"
        for s in migrate.load_sources()
        if s.name in theirs and theirs[s.name] != s.checksum
    ]


async def test_the_previous_release_keeps_serving_and_verifying_while_this_one_migrates(
    empty_database_url: str, previous_release: Release, tmp_path: Path
) -> None:
    owner = {"QDATA_OWNER_DATABASE_URL": empty_database_url}
    check(previous_release.run("migrate", env=owner))
    old = previous_release.serve(server_env(empty_database_url, **PROCESS_SETTINGS), tmp_path / "previous.log")
    new: ServerProcess | None = None
    workloads: list[Workload] = []
    try:
        old.wait_serving()
        to_old = await Workload.over(old)
        workloads.append(to_old)
        assert await round_of_calls(to_old.calls) == []  # warmed: every query above is now prepared
        assert await to_old.serving()

        # This release's migrate, under a round of the previous release's calls.
        migrating = asyncio.create_task(asyncio.to_thread(migrate.migrate, empty_database_url))
        assert await round_of_calls(to_old.calls) == []
        applied = await migrating
        # Every migration the previous release does not ship, in order.
        known = {m.label for m in migrate.load_migrations(previous_release.root / MIGRATIONS_IN_TREE)}
        newer = [m.label for m in migrate.load_migrations()]
        assert [label for label in applied if not label.startswith("functions/")] == [
            name for name in newer if name not in known
        ]
        assert await round_of_calls(to_old.calls) == []
        assert await to_old.serving()
        assert previous_verify(previous_release, owner) == expected_previous_verify(previous_release)

        # This release starts next to it on the same database; both serve.
        new = ServerProcess(server_env(empty_database_url, **PROCESS_SETTINGS), tmp_path / "this.log")
        new.wait_serving()
        to_new = await Workload.over(new)
        workloads.append(to_new)
        assert await asyncio.gather(round_of_calls(to_old.calls), round_of_calls(to_new.calls)) == [[], []]
        assert await to_old.serving() and await to_new.serving()
        assert migrate.verify(empty_database_url) == []
        assert previous_verify(previous_release, owner) == expected_previous_verify(previous_release)

        # A budget made through this release binds the previous one's calls too (the triggers run
        # in the database); its refusal, a reason it does not know, reaches its caller as INTERNAL
        # with nothing changed (docs/services/budgets.md, "Rolling out").
        old_remote, new_remote = to_old.remotes[0], to_new.remotes[0]
        user = await create_user(new_remote)
        await deposit(new_remote, user.id, 10 * USD)
        await budget_pb2_grpc.BudgetServiceStub(new_remote.channel).CreateBudget(
            budget_pb2.CreateBudgetRequest(
                request_id=rid(),
                user_id=user.id,
                budget=budget_pb2.Budget(limit_micros=USD, period=budget_pb2.BUDGET_PERIOD_DAILY),
            )
        )
        over = ledger_pb2.ChargeRequest(request_id=rid(), user_id=user.id, amount_micros=2 * USD)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await old_remote.ledger.Charge(over)
        assert refused.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await new_remote.ledger.Charge(over)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        balance = await old_remote.ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=user.id))
        assert balance.balance.available_micros == 10 * USD
    finally:
        for workload in workloads:
            await workload.close()
        for server in (old, new):
            if server is not None:
                server.stop()


async def test_events_chained_by_the_release_before_0017_and_by_the_sealer_make_one_trail(
    empty_database_url: str, release_before_0017: Release, tmp_path: Path
) -> None:
    url = empty_database_url
    owner = {"QDATA_OWNER_DATABASE_URL": url}
    # The release before 0017, migrated and serving: its audit trigger chains every event.
    check(release_before_0017.run("migrate", env=owner))
    old = release_before_0017.serve(server_env(url, **PROCESS_SETTINGS), tmp_path / "previous.log")
    remote: Remote | None = None
    try:
        old.wait_serving()
        remote = Remote.of(old)
        users = [await create_user(remote) for _ in range(3)]
        await asyncio.gather(*(deposit(remote, u.id, 1000) for u in users))
        assert await sql(url, "SELECT count(*) AS n FROM audit_events WHERE chain_seq IS NULL") == [{"n": 0}]
        # A writer of that release is in the middle of a transaction (its trigger holds a chain
        # head) when this release's migration starts: 0017 waits for it.
        async with await psycopg.AsyncConnection.connect(url) as writer:
            await writer.execute("SELECT audit_append('old', NULL, 'test.Old', 't', '1', 'r', '{}'::jsonb)")
            migrating = asyncio.create_task(asyncio.to_thread(migrate.migrate, url))
            waiting = "SELECT 1 FROM pg_locks WHERE relation = 'audit_events'::regclass AND NOT granted"
            while not await sql(url, waiting):
                assert not migrating.done(), migrating.result()
                await asyncio.sleep(0.01)
            # Writes that come now queue behind the migration's lock, and go through after it.
            queued = asyncio.gather(*(deposit(remote, u.id, 1000) for u in users[:2]))
            await writer.commit()
        assert "0017_audit_sealer" in await migrating
        await queued
        # The old release's server goes on writing, now unsealed, and stays in rotation.
        # (Transaction ids, hence chains, go round: more than 32 writes continue every chain.)
        for _ in range(3 * CALLS_PER_ROUND):
            await deposit(remote, users[0].id, 1)
        assert await remote.serving()
        unsealed = (await sql(url, "SELECT count(*) AS n FROM audit_events WHERE chain_seq IS NULL"))[0]["n"]
        assert unsealed >= 3 * CALLS_PER_ROUND
        # This release's sealer continues the chains the old trigger left.
        assert await seal(url) == unsealed
        report = await audit_chain.verify(url, batch_size=5, max_unsealed_seconds=3600)
        assert report.ok, report.problems
        events = (await sql(url, "SELECT count(*) AS n FROM audit_events"))[0]["n"]
        assert (report.checked, report.unsealed) == (events, 0)
        assert events > unsealed  # both kinds are in the trail
    finally:
        if remote is not None:
            await remote.channel.close()
        old.stop()
