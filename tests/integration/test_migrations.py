"""Migrations and current source against a real database: apply, re-apply, run concurrently, verify,
refuse drift, run a migration outside a transaction."""

from __future__ import annotations

import asyncio
import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

import psycopg
import pytest
from grpc_health.v1 import health_pb2
from psycopg import sql

from qdata_server.chat import tree
from qdata_server.db import migrate
from tests.conftest import TEMPLATE_DB, start_api, stop_api, with_database


def applied_versions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def shipped_labels() -> list[str]:
    return [m.label for m in migrate.load_migrations()] + [s.label for s in migrate.load_sources()]


def test_migrate_applies_everything_once_and_verifies(empty_database_url):
    shipped = [m.version for m in migrate.load_migrations()]
    assert migrate.status(empty_database_url) == [*migrate.load_migrations(), *migrate.load_sources()]
    first = migrate.migrate(empty_database_url)
    # Migrations in version order, then the current source in name order.
    assert first == shipped_labels()
    assert migrate.migrate(empty_database_url) == []
    assert applied_versions(empty_database_url) == shipped
    assert migrate.verify(empty_database_url) == []
    assert migrate.status(empty_database_url) == []


def test_concurrent_migrations_apply_each_file_once(empty_database_url):
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: migrate.migrate(empty_database_url), range(4)))
    assert sorted(label for r in results for label in r) == sorted(shipped_labels())
    assert applied_versions(empty_database_url) == [m.version for m in migrate.load_migrations()]


def test_verify_detects_a_schema_changed_by_hand(database_url):
    assert migrate.verify(database_url) == []
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE users ADD COLUMN nickname text")
    problems = migrate.verify(database_url)
    assert len(problems) == 1 and "live schema differs" in problems[0]


# Database code changed by hand, each of which verify must report.
CODE_DRIFTS = {
    "changed function": "CREATE OR REPLACE FUNCTION qdata_acting_for_all_users() RETURNS boolean"
    " LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT true $$",
    "dropped function": "DROP FUNCTION ledger_sweep_expired_holds(integer)",
    "unpinned search path": "ALTER FUNCTION audit_seal(integer) RESET search_path",
    "dropped policy": "DROP POLICY chat_messages_acting_users ON chat_messages",
    "row security off": "ALTER TABLE ledger_accounts DISABLE ROW LEVEL SECURITY",
}


@pytest.mark.parametrize("drift", CODE_DRIFTS.values(), ids=CODE_DRIFTS.keys())
def test_verify_detects_database_code_changed_by_hand(database_url, drift):
    assert migrate.verify(database_url) == []
    with psycopg.connect(database_url) as conn:
        conn.execute(drift)
    problems = migrate.verify(database_url)
    assert len(problems) == 1 and "live database code" in problems[0] and "changed by hand" in problems[0]


def test_a_database_of_builds_before_the_code_fingerprint_is_checked_from_its_next_step(database_url, tmp_path):
    with psycopg.connect(database_url) as conn:
        # As a database whose tracking tables and steps builds before the code fingerprint made.
        conn.execute("ALTER TABLE schema_migrations DROP COLUMN code_fingerprint")
        conn.execute("ALTER TABLE schema_current_source DROP COLUMN code_fingerprint")
    assert migrate.migrate(database_url) == []
    # The column is back, empty in the old rows: nothing to compare the code with, no false alarm.
    assert migrate.verify(database_url) == []
    migrations = copy_of(shipped("migrations"), tmp_path / "migrations")
    following = f"{migrate.load_migrations()[-1].version + 1:04d}_following"
    (migrations / f"{following}.sql").write_text("CREATE TABLE following_probe (id bigint PRIMARY KEY);\n")
    assert migrate.migrate(database_url, migrations=migrations) == [following]
    assert migrate.verify(database_url, migrations=migrations) == []
    with psycopg.connect(database_url) as conn:
        conn.execute(CODE_DRIFTS["changed function"])
    [problem] = migrate.verify(database_url, migrations=migrations)
    assert "live database code" in problem


def test_an_edited_applied_migration_is_refused(database_url):
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 1")
    with pytest.raises(migrate.MigrationError, match="edited after it was applied"):
        migrate.migrate(database_url)
    with pytest.raises(migrate.MigrationError, match="edited after it was applied"):
        migrate.status(database_url)
    assert "edited after it was applied" in migrate.verify(database_url)[0]


async def test_server_is_not_serving_until_migrations_are_applied(empty_database_url):
    api = await start_api(empty_database_url)
    try:
        assert await api.server.check_health() is False
        probe = await api.server.health.Check(health_pb2.HealthCheckRequest(), None)
        assert probe.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await asyncio.to_thread(migrate.migrate, empty_database_url)
        assert await api.server.check_health() is True
        probe = await api.server.health.Check(health_pb2.HealthCheckRequest(), None)
        assert probe.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await stop_api(api)


async def test_server_refuses_to_serve_an_edited_history(database_url):
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 1")
    api = await start_api(database_url)
    try:
        assert await api.server.check_health() is False
    finally:
        await stop_api(api)


async def test_server_waits_not_serving_for_a_database_that_is_not_there_yet(postgres_url, template_url):
    name = f"qdata_late_{uuid.uuid4().hex[:12]}"
    url = with_database(postgres_url, name)
    api = await start_api(url)
    try:
        assert await api.server.check_health() is False
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE_DB))
            )
        for _ in range(100):
            if await api.server.check_health():
                break
            await asyncio.sleep(0.2)
        probe = await api.server.health.Check(health_pb2.HealthCheckRequest(), None)
        assert probe.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await stop_api(api)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_0009_keeps_forever_the_records_of_money_accepted_before_it(empty_database_url):
    """Ledger rows written before 0009 carry no key: their requests' records must outlive the purge."""
    files = migrate.load_migrations()
    assert files[8].name == "ledger_request_keys"
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(migrate._CREATE_TRACKING)
        for migration in files[:8]:
            conn.execute(migration.sql.encode("utf-8"))
        user = conn.execute(
            "INSERT INTO users (email, username, password_hash) VALUES ('a@example.com', 'a', 'h') RETURNING user_id"
        ).fetchone()[0]
        # The previous release's calls: a deposit, and the charge of a billed usage record.
        conn.execute("SELECT ledger_deposit(%s, 5, 'USD', 'promotion', '', '', 'deposit-1')", (user,))
        conn.execute("SELECT ledger_charge(%s, 2, 'USD', '', '', 'usage-billed')", (user,))
        methods = {
            "deposit-1": "/qdata.v1.LedgerService/Deposit",
            "release-1": "/qdata.v1.LedgerService/ReleaseHold",
            "usage-billed": "/qdata.v1.UsageService/RecordUsage",
            "usage-unbilled": "/qdata.v1.UsageService/RecordUsage",
            "session-1": "/qdata.v1.ChatService/CreateSession",
        }
        for request_id, method in methods.items():
            conn.execute(
                "INSERT INTO idempotency_keys (user_id, actor, request_id, method, request_hash, response)"
                " VALUES (%s, 'gateway', %s, %s, '\\x00', '')",
                (user, request_id, method),
            )
        conn.execute(files[8].sql.encode("utf-8"))
        kept = dict(conn.execute("SELECT request_id, kept_forever FROM idempotency_keys").fetchall())
        keyed = conn.execute("SELECT count(*) FROM ledger_transactions WHERE request_actor IS NOT NULL").fetchone()[0]
    assert kept == {
        "deposit-1": True,
        "release-1": True,
        "usage-billed": True,
        "usage-unbilled": False,
        "session-1": False,
    }
    assert keyed == 0


def test_0011_places_the_messages_that_existed_before_it(empty_database_url):
    """The backfill gives existing messages the depth and jump pointer an append would have."""
    before = [m for m in migrate.load_migrations() if m.version < 11]
    [branch_jumps] = [m for m in migrate.load_migrations() if m.version == 11]
    rng = random.Random(11)
    expected: dict[tuple[uuid.UUID, int], tree.Place] = {}
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(migrate._CREATE_TRACKING)  # 0007 grants on it
        for migration in before:
            conn.execute(migration.sql.encode("utf-8"))
        [user_id] = conn.execute(
            "INSERT INTO users (email, username, password_hash) VALUES ('a@example.com', 'a', 'x') RETURNING user_id"
        ).fetchone()
        for _ in range(2):
            [session_id] = conn.execute(
                "INSERT INTO chat_sessions (user_id) VALUES (%s) RETURNING session_id", (user_id,)
            ).fetchone()
            # A long branch with edits, regenerations, a second root and deleted messages.
            places = {0: tree.ABOVE_ROOTS}
            rows = []
            for number in range(1, 400):
                choice = rng.random()
                parent = number - 1 if choice < 0.8 else (0 if choice > 0.98 else rng.randrange(1, number))
                [places[number]] = tree.chain_places(parent, places, number, 1)
                expected[(session_id, number)] = places[number]
                deleted = rng.random() < 0.1
                rows.append((user_id, session_id, number, parent, "" if deleted else f"m{number}", deleted))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO chat_messages (user_id, session_id, sequence_number, parent_sequence_number, role,"
                    " content, deleted_at) VALUES (%s, %s, %s, %s, 'user', %s, CASE WHEN %s THEN now() END)",
                    # Not in number order: the backfill must not depend on the order rows were written.
                    sorted(rows, key=lambda r: -r[2]),
                )
        conn.execute(branch_jumps.sql.encode("utf-8"))
        found = {
            (session_id, number): tree.Place(number, depth, jump, jump_depth)
            for session_id, number, depth, jump, jump_depth in conn.execute(
                "SELECT session_id, sequence_number, depth, jump_sequence_number, jump_depth FROM chat_messages"
            )
        }
    assert found == expected


def copy_of(folder: Traversable, into: Path) -> Path:
    """A writable copy of a shipped folder (migrations or functions), to plant changes in."""
    into.mkdir()
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            (into / entry.name).write_text(entry.read_text("utf-8"))
    return into


def shipped(name: str) -> Traversable:
    return resources.files("qdata_server.db").joinpath(name)


def source_history(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT name, checksum FROM schema_current_source ORDER BY applied_at, name").fetchall()


def test_a_changed_source_file_is_applied_again_and_an_older_build_leaves_it(database_url, tmp_path):
    functions = copy_of(shipped("functions"), tmp_path / "functions")
    ledger = functions / "ledger.sql"
    # A newer build changes one function (same signature); only its file is applied again.
    ledger.write_text(
        ledger.read_text().replace(
            "-- Raises a business rejection", "-- (changed by the next release)\n-- Raises a business rejection"
        )
    )
    assert migrate.status(database_url, sources=functions) == [migrate.SourceFile("ledger.sql", ledger.read_text())]
    assert migrate.migrate(database_url, sources=functions) == ["functions/ledger.sql"]
    assert migrate.migrate(database_url, sources=functions) == []
    assert migrate.verify(database_url, sources=functions) == []
    assert source_history(database_url)[-1] == (
        "ledger.sql",
        migrate.SourceFile("ledger.sql", ledger.read_text()).checksum,
    )
    # This (older) build ships the text the database ran before: it leaves the later one in place
    # and is not pending (health stays SERVING), but verify names the difference.
    assert migrate.status(database_url) == []
    assert migrate.migrate(database_url) == []
    [problem] = migrate.verify(database_url)
    assert "functions/ledger.sql: the database runs a later text" in problem


def test_verify_takes_a_later_text_beside_a_newer_release_migration_for_that_release(database_url, tmp_path):
    functions = copy_of(shipped("functions"), tmp_path / "functions")
    ledger = functions / "ledger.sql"
    ledger.write_text(
        ledger.read_text().replace(
            "-- Raises a business rejection", "-- (next release)\n-- Raises a business rejection"
        )
    )
    migrations = copy_of(shipped("migrations"), tmp_path / "migrations")
    (migrations / "9999_next_release.sql").write_text("ALTER TABLE users ADD COLUMN next_release_note text NULL;\n")
    # A newer release migrates the database: a migration and a later text of a file.
    assert migrate.migrate(database_url, migrations=migrations, sources=functions) == [
        "9999_next_release",
        "functions/ledger.sql",
    ]
    # This build, still serving next to it, finds the database as that release left it.
    assert migrate.status(database_url) == []
    assert migrate.verify(database_url) == []
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE users ADD COLUMN by_hand text NULL")
    [problem] = migrate.verify(database_url)
    assert "the live schema differs" in problem


async def test_a_source_file_the_database_never_ran_is_pending_for_health(database_url):
    api = await start_api(database_url)
    try:
        assert await api.server.check_health() is True
        with psycopg.connect(database_url) as conn:
            # As if this build shipped a new text of usage.sql: the database never ran it.
            conn.execute("UPDATE schema_current_source SET checksum = repeat('0', 64) WHERE name = 'usage.sql'")
        assert [s.label for s in migrate.status(database_url)] == ["functions/usage.sql"]
        assert await api.server.check_health() is False
        assert migrate.migrate(database_url) == ["functions/usage.sql"]
        assert await api.server.check_health() is True
    finally:
        await stop_api(api)


def test_a_failing_source_file_leaves_no_trace(database_url, tmp_path):
    functions = copy_of(shipped("functions"), tmp_path / "functions")
    (functions / "zz_broken.sql").write_text(
        "CREATE OR REPLACE FUNCTION qdata_probe() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n"
        "CREATE OR REPLACE FUNCTION qdata_probe_broken() RETURNS int LANGUAGE sql AS $$ SELECT nope $$;\n"
    )
    with pytest.raises(psycopg.errors.UndefinedColumn):
        migrate.migrate(database_url, sources=functions)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regproc('qdata_probe')").fetchone()[0] is None
    assert [name for name, _ in source_history(database_url)] == [s.name for s in migrate.load_sources()]


def test_a_no_transaction_migration_creates_an_index_concurrently(database_url, tmp_path):
    migrations = copy_of(shipped("migrations"), tmp_path / "migrations")
    # The next two version numbers after the shipped ones.
    first, second = (migrate.load_migrations()[-1].version + step for step in (1, 2))
    (migrations / f"{first:04d}_users_display_name_index.sql").write_text(
        f"{migrate.NO_TRANSACTION}\n"
        "-- Each statement commits on its own: written so that a rerun after a failure completes it.\n"
        "DROP INDEX CONCURRENTLY IF EXISTS users_display_name_idx_invalid;\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_display_name_idx ON users (display_name);\n"
    )
    # Fails half-way: the first statement stays done, the bookkeeping row is not written.
    (migrations / f"{second:04d}_broken.sql").write_text(
        f"{migrate.NO_TRANSACTION}\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_last_login_idx ON users (last_login_at);\n"
        "CREATE INDEX CONCURRENTLY no_such_idx ON no_such_table (x);\n"
    )
    with pytest.raises(psycopg.errors.UndefinedTable):
        migrate.migrate(database_url, migrations=migrations)
    assert applied_versions(database_url)[-1] == first
    with psycopg.connect(database_url) as conn:
        valid = dict(
            conn.execute(
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE c.relname IN ('users_display_name_idx', 'users_last_login_idx')"
            ).fetchall()
        )
    assert valid == {"users_display_name_idx": True, "users_last_login_idx": True}
    # Corrected, the whole file runs again (its statements are re-runnable) and is recorded.
    (migrations / f"{second:04d}_broken.sql").write_text(
        f"{migrate.NO_TRANSACTION}\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_last_login_idx ON users (last_login_at);\n"
    )
    assert migrate.migrate(database_url, migrations=migrations) == [f"{second:04d}_broken"]
    assert migrate.verify(database_url, migrations=migrations) == []


def changed_security_source(tmp_path: Path) -> Path:
    """The shipped functions with security.sql changed by a comment: migrate applies it again."""
    functions = copy_of(shipped("functions"), tmp_path / "functions")
    security = functions / "security.sql"
    security.write_text("-- (changed by the next release)\n" + security.read_text())
    return functions


def test_a_source_file_that_deadlocks_with_a_serving_transaction_is_rolled_back_and_applied_again(
    database_url, tmp_path
):
    # security.sql re-creates the policies of every user-owned table, users first and
    # ledger_holds later. A serving transaction holds ledger_holds, migrate locks users and then
    # waits for ledger_holds, and the transaction then reads users: a cycle, which PostgreSQL breaks
    # by aborting migrate's transaction (the older waiter checks first).
    functions = changed_security_source(tmp_path)
    with psycopg.connect(database_url) as serving, ThreadPoolExecutor(1) as pool:
        serving.execute("LOCK TABLE ledger_holds IN ROW EXCLUSIVE MODE")
        migrating = pool.submit(migrate.migrate, database_url, sources=functions)
        with psycopg.connect(database_url, autocommit=True) as watcher:
            waiting = "SELECT 1 FROM pg_locks WHERE relation = 'ledger_holds'::regclass AND NOT granted"
            while not watcher.execute(waiting).fetchall():
                assert not migrating.done(), migrating.result()
        # The serving transaction's next read closes the cycle; it goes through (migrate gave way).
        serving.execute("SELECT count(*) FROM users").fetchall()
        serving.commit()
        assert migrating.result(timeout=60) == ["functions/security.sql"]
    assert migrate.verify(database_url, sources=functions) == []


def test_a_source_file_waits_for_a_lock_only_so_long_and_tries_again(database_url, tmp_path, monkeypatch):
    # A long transaction on a table the file must lock: every later query of that table would
    # queue behind the file's waiting lock request, so the file gives up after LOCK_TIMEOUT,
    # rolls back, and tries again later; it lands once the long transaction is over.
    monkeypatch.setattr(migrate, "LOCK_TIMEOUT", "100ms")
    functions = changed_security_source(tmp_path)
    with psycopg.connect(database_url) as long_running, ThreadPoolExecutor(1) as pool:
        long_running.execute("LOCK TABLE ledger_holds IN ROW EXCLUSIVE MODE")
        migrating = pool.submit(migrate.migrate, database_url, sources=functions)
        with psycopg.connect(database_url, autocommit=True) as reader:
            waiting = "SELECT 1 FROM pg_locks WHERE relation = 'ledger_holds'::regclass AND NOT granted"
            while not reader.execute(waiting).fetchall():
                assert not migrating.done(), migrating.result()
            # Meanwhile other transactions read users, which the file locked before it began to
            # wait: none is stuck behind the file for longer than its lock timeout.
            reader.execute("SET statement_timeout = '10s'")
            for _ in range(3):
                reader.execute("SELECT count(*) FROM users").fetchall()
        long_running.commit()
        assert migrating.result(timeout=60) == ["functions/security.sql"]
    assert migrate.verify(database_url, sources=functions) == []
