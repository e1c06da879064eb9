"""A rolling update: a newer replica's migration lands under a warmed, older server.

The server prepares statements (the default): psycopg prepares a query after its 5th use on a
connection. A column that a newer release adds must not break what this one already prepared
(PostgreSQL refuses "cached plan must not change result type" when a prepared statement's result
shape changes, which a `*` column list makes it do). And a shipped migration that restates
constraints (0014) lands under a server of the release before it: that server keeps answering,
stays SERVING, and its `verify` still passes on the migrated database. And when 0017 moves the
audit hash chain off the write path, the events the release before it chained in its trigger and
the ones the new sealer chains make one verifiable trail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qdata.v1 import chat_pb2, ledger_pb2, usage_pb2, user_pb2
from qdata_server import audit_chain
from qdata_server.db import migrate
from tests.support.audit import seal
from tests.support.calls import create_user, rid
from tests.support.database import sql
from tests.support.ledger import deposit
from tests.support.server import TEST_SETTINGS, Api, start_api, stop_api
from tests.support.usage import create_model, usage

USD = 1_000_000
# Two connections, so that each one sees every query more than 5 times in a round.
SETTINGS = dataclasses.replace(TEST_SETTINGS, prepared_statements=True, pool_min_size=2, pool_max_size=2)
CALLS_PER_ROUND = 14

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


async def warm_up(api: Api) -> Calls:
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


async def test_the_previous_release_keeps_serving_and_verifying_while_0014_lands(
    empty_database_url, tmp_path, monkeypatch
):
    shipped = resources.files("qdata_server.db").joinpath("migrations")
    # The release before 0014: the same files without it (its server code is this one).
    previous = Path(tmp_path / "previous")
    shutil.copytree(str(shipped), previous)
    (previous / "0014_restorable_range_checks.sql").unlink()
    migrate.migrate(empty_database_url, migrations=previous)
    shipped_migrations = migrate.load_migrations
    # What the previous release's server knows of (its health counts pending files against these).
    monkeypatch.setattr(migrate, "load_migrations", lambda folder=None: shipped_migrations(folder or previous))
    api = await start_api(empty_database_url, SETTINGS)
    try:
        calls = await warm_up(api)
        assert await round_of_calls(calls) == []
        await assert_serving(api)  # nothing pending for the previous release
        assert migrate.migrate(empty_database_url, migrations=shipped) == ["0014_restorable_range_checks"]
        assert await round_of_calls(calls) == []
        await assert_serving(api)
        # The fingerprint 0014 recorded is the one the previous release computes, too.
        assert migrate.verify(empty_database_url, migrations=previous) == []
        assert migrate.verify(empty_database_url, migrations=shipped) == []
    finally:
        await stop_api(api)


FIXTURES = Path(__file__).parent.parent / "fixtures"


async def test_events_chained_by_the_release_before_0017_and_by_the_sealer_make_one_trail(
    empty_database_url, tmp_path, monkeypatch
):
    url = empty_database_url
    shipped = resources.files("qdata_server.db").joinpath("migrations")
    shipped_sources = resources.files("qdata_server.db").joinpath("functions")
    # The release before 0017: its migrations, and its audit.sql (which chains in the trigger).
    previous, previous_sources = tmp_path / "previous", tmp_path / "previous_functions"
    shutil.copytree(str(shipped), previous)
    for newer in previous.glob("*.sql"):
        if int(newer.name[:4]) >= 17:
            newer.unlink()
    shutil.copytree(str(shipped_sources), previous_sources)
    shutil.copy(FIXTURES / "audit_functions_before_0017.sql", previous_sources / "audit.sql")
    migrate.migrate(url, migrations=previous, sources=previous_sources)
    shipped_migrations, shipped_files = migrate.load_migrations, migrate.load_sources
    monkeypatch.setattr(migrate, "load_migrations", lambda folder=None: shipped_migrations(folder or previous))
    monkeypatch.setattr(migrate, "load_sources", lambda folder=None: shipped_files(folder or previous_sources))
    # The previous release's server (it has no sealer).
    api = await start_api(url, dataclasses.replace(SETTINGS, audit_seal_seconds=0))
    try:
        users = [await create_user(api) for _ in range(3)]
        await asyncio.gather(*(deposit(api, u.id, 1000) for u in users))
        assert await sql(api, "SELECT count(*) AS n FROM audit_events WHERE chain_seq IS NULL") == [{"n": 0}]
        # A writer of the previous release is in the middle of a transaction (its trigger holds
        # a chain head) when the new release's migration starts: 0017 waits for it.
        async with await psycopg.AsyncConnection.connect(url) as writer:
            await writer.execute("SELECT audit_append('old', NULL, 'test.Old', 't', '1', 'r', '{}'::jsonb)")
            migrating = asyncio.create_task(
                asyncio.to_thread(migrate.migrate, url, migrations=shipped, sources=shipped_sources)
            )
            waiting = "SELECT 1 FROM pg_locks WHERE relation = 'audit_events'::regclass AND NOT granted"
            while not await sql(api, waiting):
                assert not migrating.done(), migrating.result()
                await asyncio.sleep(0.01)
            # Writes that come now queue behind the migration's lock, and go through after it.
            queued = asyncio.gather(*(deposit(api, u.id, 1000) for u in users[:2]))
            await writer.commit()
        assert "0017_audit_sealer" in await migrating
        await queued
        # The previous release's server goes on writing, now unsealed, and stays in rotation.
        # (Transaction ids, hence chains, go round: more than 32 writes continue every chain.)
        for _ in range(3 * CALLS_PER_ROUND):
            await deposit(api, users[0].id, 1)
        await assert_serving(api)
        unsealed = (await sql(api, "SELECT count(*) AS n FROM audit_events WHERE chain_seq IS NULL"))[0]["n"]
        assert unsealed >= 3 * CALLS_PER_ROUND
        # The new release's sealer continues the chains the old trigger left.
        assert await seal(api) == unsealed
        report = await audit_chain.verify(url, batch_size=5, max_unsealed_seconds=3600)
        assert report.ok, report.problems
        events = (await sql(api, "SELECT count(*) AS n FROM audit_events"))[0]["n"]
        assert (report.checked, report.unsealed) == (events, 0)
        assert events > unsealed  # both kinds are in the trail
    finally:
        await stop_api(api)
