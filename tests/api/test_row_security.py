"""Database roles and row-level security (0007_service_role_row_security.sql).

Two users get rows in every user-owned table through the API. Then, connected as the serving role
the server runs as, a deliberately unfiltered `SELECT * FROM <table>` inside a transaction that
acts for one user returns only that user's rows, for every such table; with nobody named it
returns nothing, and only the explicit cross-user setting shows everyone. The serving role owns
nothing and cannot rewrite the append-only tables, and the server refuses to serve as a role that
escapes the policies.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from qdata.v1 import budget_pb2, chat_pb2, ledger_pb2, usage_pb2, user_pb2
from qdata_server import auth
from qdata_server.db import sql, transactions
from qdata_server.db.pool import open_pool
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS, ACTING_FOR_NO_USER, NO_USER_ID, acting_for
from tests.support.calls import rid
from tests.support.server import SERVICE_LOGIN, TEST_SETTINGS, serving_url, start_api, stop_api
from tests.support.usage import create_model, fold, funded_user, usage

# Every table holding users' rows, with the columns that name a row's user(s): the owner, and
# for a transfer and its postings also the counterparty, who sees them too.
USER_TABLES: dict[str, tuple[str, ...]] = {
    "users": ("user_id",),
    "user_preferences": ("user_id",),
    "user_api_keys": ("user_id",),
    "idempotency_keys": ("user_id",),
    "audit_events": ("user_id",),
    "chat_sessions": ("user_id",),
    "chat_messages": ("user_id",),
    "chat_imports": ("user_id",),
    "ledger_accounts": ("user_id",),
    "ledger_transactions": ("user_id", "counterparty_user_id"),
    "ledger_postings": ("user_id", "account_user_id"),
    "ledger_holds": ("user_id",),
    "ledger_positions": ("user_id",),
    "usage_records": ("user_id",),
    "usage_rollup_queue": ("user_id",),
    "usage_model_user_months": ("user_id",),
    "usage_model_user_days": ("user_id",),
    "usage_user_days": ("user_id",),
    "model_ratings": ("user_id",),
    "import_log": ("user_id",),
    "chat_share_links": ("user_id",),
    "budgets": ("user_id",),
    "budget_periods": ("user_id",),
    "budget_spend_entries": ("user_id",),
    "budget_alerts": ("user_id",),
}
SETTINGS = dataclasses.replace(
    TEST_SETTINGS,
    key_ring="1:" + base64.b64encode(os.urandom(32)).decode(),
    # No background folding: the test decides what sits in the queue and what in the rollups.
    usage_fold_seconds=3600.0,
)


async def owner_rows(url: str, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def serving_rows(url: str, table: str, acting: transactions.Acting | None) -> list[dict[str, Any]]:
    """`SELECT * FROM table`, no WHERE at all, as the serving role, acting as told (or unnamed)."""
    async with await psycopg.AsyncConnection.connect(serving_url(url), row_factory=dict_row) as conn:
        async with conn.transaction():
            if acting is not None:
                await transactions.name_acting(conn, acting)
            cur = await conn.execute(f"SELECT * FROM {table}")
            return await cur.fetchall()


async def give_rows_in_every_table(api, user_id: str, other_id: str) -> None:
    """Through the API only: a row for user_id in each of USER_TABLES."""
    await api.users.UpdatePreferences(
        user_pb2.UpdatePreferencesRequest(
            request_id=rid(),
            preferences=user_pb2.Preferences(user_id=user_id, language="en"),
            update_mask=field_mask_pb2.FieldMask(paths=["language"]),
        )
    )
    await api.users.CreateApiKey(
        user_pb2.CreateApiKeyRequest(request_id=rid(), user_id=user_id, provider="openai", secret="sk-" + rid())
    )
    session = (
        await api.chat.CreateSession(chat_pb2.CreateSessionRequest(request_id=rid(), user_id=user_id, title="t"))
    ).session
    await api.chat.AppendMessages(
        chat_pb2.AppendMessagesRequest(
            request_id=rid(),
            user_id=user_id,
            session_id=session.id,
            messages=[chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_USER, content="hello")],
        )
    )
    # An imported conversation: a chat_imports row (the export names its own id, made unique here).
    export = {
        "conversation_id": rid(),
        "mapping": {
            "n": {
                "id": "n",
                "parent": None,
                "children": [],
                "message": {"author": {"role": "user"}, "content": {"content_type": "text", "parts": ["imported"]}},
            }
        },
    }
    await api.chat.ImportSession(
        chat_pb2.ImportSessionRequest(
            request_id=rid(), user_id=user_id, format=chat_pb2.IMPORT_FORMAT_CHATGPT, data=json.dumps(export).encode()
        )
    )
    await api.chat.CreateShareLink(
        chat_pb2.CreateShareLinkRequest(
            request_id=rid(), user_id=user_id, session_id=session.id, scope=chat_pb2.SHARE_SCOPE_ALL_BRANCHES
        )
    )
    await api.ledger.CreateHold(
        ledger_pb2.CreateHoldRequest(request_id=rid(), user_id=user_id, amount_micros=1_000, description="hold")
    )
    # A transfer to the other user: the other user sees it (as its counterparty), nobody else.
    await api.ledger.Transfer(
        ledger_pb2.TransferRequest(request_id=rid(), from_user_id=user_id, to_user_id=other_id, amount_micros=5)
    )
    # A SOFT budget that the usage record below reaches 1% of: its rows in budget_periods,
    # budget_spend_entries and budget_alerts come from that spend.
    await api.budgets.CreateBudget(
        budget_pb2.CreateBudgetRequest(
            request_id=rid(),
            user_id=user_id,
            budget=budget_pb2.Budget(
                limit_micros=1_000,
                period=budget_pb2.BUDGET_PERIOD_DAILY,
                enforcement=budget_pb2.BUDGET_ENFORCEMENT_SOFT,
                alert_thresholds_percent=[1],
            ),
        )
    )
    await api.usage.RecordUsage(usage(user_id))
    await api.usage.RateModel(
        usage_pb2.RateModelRequest(request_id=rid(), user_id=user_id, model_id="openai/gpt-4o-mini", stars=4)
    )
    # No RPC writes import_log (`qdata-server import` does, through the domain functions): one row
    # as the importer writes it, in a transaction acting for the user as the serving role.
    async with await psycopg.AsyncConnection.connect(serving_url(api.database_url)) as conn, conn.transaction():
        await conn.execute("SELECT set_config('qdata.acting_users', %s, true)", ["{" + user_id + "}"])
        await conn.execute(
            "INSERT INTO import_log (user_id, request_id, step, legacy_key, legacy, response)"
            " VALUES (%s, %s, 'user', %s, '{}', '')",
            [user_id, rid(), "legacy-" + user_id],
        )


@pytest.fixture
async def populated(database_url):
    """Users a and b with rows in every user-owned table, the queue and the rollups both filled."""
    api = await start_api(database_url, SETTINGS)
    try:
        await create_model(api)
        a = await funded_user(api)
        b = await funded_user(api)
        await give_rows_in_every_table(api, a.id, b.id)
        await give_rows_in_every_table(api, b.id, a.id)
        await fold(api)
        # After the fold, one more call each, so the queue holds both users' rows as well.
        await api.usage.RecordUsage(usage(a.id))
        await api.usage.RecordUsage(usage(b.id))
        yield api, uuid.UUID(a.id), uuid.UUID(b.id)
    finally:
        await stop_api(api)


def owners_of(
    table: str, transfers: dict[tuple[uuid.UUID, uuid.UUID], uuid.UUID]
) -> Callable[[dict[str, Any]], set[uuid.UUID]]:
    """Whose row it is: its user_id, and the counterparty of the transfer it belongs to."""
    if table == "ledger_transactions":
        return lambda row: {row["user_id"], row["counterparty_user_id"]} - {None}
    if table == "ledger_postings":
        return lambda row: {row["user_id"], transfers.get((row["user_id"], row["transaction_id"]))} - {None}
    return lambda row: {row["user_id"]}


async def test_every_table_with_user_rows_is_under_row_level_security(database_url):
    tables = await owner_rows(
        database_url,
        "SELECT c.relname AS name, c.relrowsecurity AS secured"
        "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
        "   AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'user_id'"
        "               AND NOT a.attisdropped)",
    )
    # A new user-owned table must join USER_TABLES (and so this file's checks) and get policies.
    assert {t["name"] for t in tables} == set(USER_TABLES)
    assert [t["name"] for t in tables if not t["secured"]] == []


async def test_an_unfiltered_query_as_the_serving_role_sees_only_the_acting_users_rows(populated):
    api, a, b = populated
    transfers = {
        (r["user_id"], r["transaction_id"]): r["counterparty_user_id"]
        for r in await owner_rows(api.database_url, "SELECT * FROM ledger_transactions WHERE kind = 'transfer'")
    }
    for table in USER_TABLES:
        owners = owners_of(table, transfers)
        # The owner sees both users' rows: the check below has something to hide.
        everyone = await owner_rows(api.database_url, f"SELECT * FROM {table}")
        assert any(a in owners(r) for r in everyone), table
        assert any(b in owners(r) and a not in owners(r) for r in everyone), table

        for user in (a, b):
            seen = await serving_rows(api.database_url, table, acting_for(user))
            assert seen, f"{table}: the acting user's own rows are visible"
            assert all(user in owners(r) for r in seen), f"{table}: another user's row is visible"
            assert len(seen) == len([r for r in everyone if user in owners(r)]), table

        assert await serving_rows(api.database_url, table, None) == [], f"{table}: visible with nobody named"
        # Acting for nobody shows only the rows of requests made for nobody (catalog changes).
        nobody = await serving_rows(api.database_url, table, ACTING_FOR_NO_USER)
        assert all(owners(r) <= {NO_USER_ID, None} for r in nobody), table
        assert len(await serving_rows(api.database_url, table, ACTING_FOR_ALL_USERS)) == len(everyone), table


async def test_the_serving_role_cannot_write_another_users_rows(populated):
    api, a, b = populated
    async with await psycopg.AsyncConnection.connect(serving_url(api.database_url)) as conn:
        async with conn.transaction():
            await transactions.name_acting(conn, acting_for(a))
            # Rows it cannot see, it cannot change either: nothing matches.
            cur = await conn.execute("UPDATE users SET display_name = 'x' WHERE user_id = %s", (b,))
            assert cur.rowcount == 0
            cur = await conn.execute("DELETE FROM chat_sessions WHERE user_id = %s", (b,))
            assert cur.rowcount == 0
        with pytest.raises(pg_errors.InsufficientPrivilege, match="row-level security"):
            async with conn.transaction():
                await transactions.name_acting(conn, acting_for(a))
                await conn.execute(
                    "INSERT INTO model_ratings (user_id, model_id, stars) VALUES (%s, 'openai/gpt-4o-mini', 1)", (b,)
                )
    assert (await owner_rows(api.database_url, "SELECT display_name FROM users WHERE user_id = %s", (b,)))[0][
        "display_name"
    ] != "x"


# Statements the serving role must not be able to run, even on a cross-user path.
FORBIDDEN = [
    "UPDATE audit_events SET action = 'x'",
    "DELETE FROM audit_events",
    "TRUNCATE audit_events",
    "UPDATE audit_chain_heads SET last_seq = 0",
    "SELECT * FROM audit_chain_heads",
    "DELETE FROM ledger_transactions",
    "UPDATE ledger_postings SET amount_micros = 1",
    "DELETE FROM model_prices",
    "CREATE TABLE stolen (x int)",
    "DROP TABLE users",
    "ALTER TABLE users DISABLE ROW LEVEL SECURITY",
    "SELECT * FROM usage_partitions.{partition}",
]


async def test_the_serving_role_lacks_the_rights_it_does_not_need(populated):
    api, _, _ = populated
    partition = (
        await owner_rows(
            api.database_url,
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'usage_partitions' AND c.relkind = 'r' ORDER BY c.relname LIMIT 1",
        )
    )[0]["relname"]
    allowed = []
    async with await psycopg.AsyncConnection.connect(serving_url(api.database_url)) as conn:
        for statement in FORBIDDEN:
            try:
                async with conn.transaction():
                    await transactions.name_acting(conn, ACTING_FOR_ALL_USERS)
                    await conn.execute(statement.format(partition=partition))
                allowed.append(statement)
            except pg_errors.InsufficientPrivilege:
                pass
    assert allowed == []


async def test_the_serving_role_owns_nothing_and_cannot_bypass_policies(database_url):
    rows = await owner_rows(
        database_url,
        "SELECT r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,"
        "       (SELECT count(*) FROM pg_class c WHERE pg_has_role(r.oid, c.relowner, 'USAGE')) AS owned,"
        "       pg_has_role(r.oid, 'qdata_service', 'MEMBER') AS member"
        "  FROM pg_roles r WHERE r.rolname = %s",
        (SERVICE_LOGIN,),
    )
    assert rows == [
        {
            "rolsuper": False,
            "rolbypassrls": False,
            "rolcreaterole": False,
            "rolcreatedb": False,
            "owned": 0,
            "member": True,
        }
    ]


async def test_a_transfer_is_visible_to_both_of_its_users_only(populated):
    api, a, b = populated
    seen_by_a = await serving_rows(api.database_url, "ledger_transactions", acting_for(a))
    incoming = [r for r in seen_by_a if r["kind"] == "transfer" and r["user_id"] == b]
    assert len(incoming) == 1 and incoming[0]["counterparty_user_id"] == a


async def test_a_one_statement_call_sees_only_the_acting_users_rows(populated, monkeypatch):
    """transactions.statement (GetBalance, GetUser, GetTransaction, GetHold, the login's lockout
    reservation: the settings and one statement in one round trip, no BEGIN) names the acting user
    for its statement as run does, and the setting ends with it."""
    api, a, b = populated
    transfers = {
        (r["user_id"], r["transaction_id"]): r["counterparty_user_id"]
        for r in await owner_rows(api.database_url, "SELECT * FROM ledger_transactions WHERE kind = 'transfer'")
    }
    # One connection, so each statement below runs on the one the previous one used.
    pool = await open_pool(
        dataclasses.replace(SETTINGS, pool_min_size=1, pool_max_size=1), serving_url(api.database_url)
    )
    try:
        for table in USER_TABLES:
            owners = owners_of(table, transfers)
            everyone = await owner_rows(api.database_url, f"SELECT * FROM {table}")
            # A deliberately unfiltered block, run the way the one-statement reads run theirs.
            monkeypatch.setitem(sql._QUERIES, "unfiltered_for_test", f"SELECT * FROM {table}")
            for user, other in ((a, b), (b, a)):
                seen = await transactions.statement(pool, "unfiltered_for_test", {}, acting=acting_for(user))
                assert seen, f"{table}: the acting user's own rows are visible"
                assert all(user in owners(r) for r in seen), f"{table}: another user's row is visible"
                assert len(seen) == len([r for r in everyone if user in owners(r)]), table
                assert any(other in owners(r) and user not in owners(r) for r in everyone), table
            nobody = await transactions.statement(pool, "unfiltered_for_test", {}, acting=ACTING_FOR_NO_USER)
            assert all(owners(r) <= {NO_USER_ID, None} for r in nobody), table
        # The statement's transaction ended with it: the connection names nobody now, and an
        # unfiltered query on it outside any of our transactions sees nothing.
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT current_setting('qdata.acting_users', true) AS acting")
            assert (await cur.fetchone())["acting"] in (None, "")
            cur = await conn.execute("SELECT * FROM ledger_accounts")
            assert await cur.fetchall() == []
    finally:
        await pool.close()


async def health_of(api) -> int:
    stub = health_pb2_grpc.HealthStub(api.channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status


async def wait_for_health(api, wanted: int) -> int:
    status = None
    for _ in range(100):
        status = await health_of(api)
        if status == wanted:
            break
        await asyncio.sleep(0.05)
    return status


async def test_the_server_refuses_to_serve_as_a_role_that_escapes_the_policies(database_url, caplog):
    # The owner (here the test cluster's superuser) sees every row whatever the policies say.
    token = "owner-test-token"
    settings = dataclasses.replace(
        TEST_SETTINGS,
        allow_insecure=False,
        auth_tokens=auth.parse_tokens(f"tester {auth.hash_token(token)} *", "test"),
    )
    from qdata_server.app import QdataServer

    server = QdataServer(settings, database_url)
    port = await server.start("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        await asyncio.sleep(0.5)
        status = (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert any("bypasses row-level security" in r.getMessage() for r in caplog.records)
    finally:
        await channel.close()
        await server.stop(grace=0.5)


async def test_the_same_server_serves_as_the_confined_role(database_url):
    api = await start_api(database_url, dataclasses.replace(TEST_SETTINGS, allow_insecure=True))
    try:
        assert await wait_for_health(api, health_pb2.HealthCheckResponse.SERVING) == (
            health_pb2.HealthCheckResponse.SERVING
        )
    finally:
        await stop_api(api)
