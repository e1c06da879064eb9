"""Versioned plain-SQL migrations and the current source of database code: apply, check, verify.

Two kinds of files, applied in this order by `migrate`, all under one advisory lock held on a
dedicated connection (so two replicas starting at once apply each file once):

- migrations/NNNN_name.sql: tables, indexes and data changes, applied once each in version
  order. Each file and its bookkeeping row commit in one transaction, unless its first line is
  `-- qdata: no-transaction` (for CREATE INDEX CONCURRENTLY): then each of its statements runs on
  its own and the bookkeeping row is written once they all succeeded. schema_migrations records
  version, name, SHA-256 of the file and, after each file, fingerprints of the live schema and of
  the live database code (functions, row-level security and its policies). An applied file that
  was edited or removed is a loud error: landed migrations are never edited, a new one is added.
- functions/*.sql: the current text of every function, trigger and row-security policy, one file
  per domain, in name order. A file is applied (in one transaction) when the database has not
  run its text yet, and re-applied whenever its text changes; schema_current_source records
  each text applied (name, SHA-256, both fingerprints, time). A text the database ran before another
  one is never re-applied over it: that is an older build during a rolling update (see
  docs/database.md for reverting a change).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import re
import time
from collections.abc import Iterable
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import tuple_row

log = logging.getLogger("qdata.migrate")

# Any fixed 64-bit number distinct from other advisory locks used on the database.
_MIGRATION_LOCK_KEY = 0x7164_6174_615F_6D67  # "qdata_mg"
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_SOURCE_NAME = re.compile(r"^[a-z0-9_]+\.sql$")
# The first line of a migration that runs outside a transaction (as sqlx's `-- no-transaction`).
NO_TRANSACTION = "-- qdata: no-transaction"
Folder = Traversable | Path

# Added to the tracking tables of databases that builds before it created. Only when missing: ALTER
# TABLE would take the table's exclusive lock on every start, and wait behind any long reader of it
# (a pg_dump) with every health probe queued behind it.
_ADD_CODE_FINGERPRINT = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute
                    WHERE attrelid = '{table}'::regclass AND attname = 'code_fingerprint' AND NOT attisdropped) THEN
        ALTER TABLE {table} ADD COLUMN code_fingerprint text;
    END IF;
END;
$$;
"""

_CREATE_TRACKING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     NOT NULL PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    fingerprint text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
""" + _ADD_CODE_FINGERPRINT.format(table="schema_migrations")

# One row per text of a current-source file the database ran; the newest per name is in force.
# Created after the migrations (0007 creates the serving role that may read it, as health does).
_CREATE_SOURCE_TRACKING = """
CREATE TABLE IF NOT EXISTS schema_current_source (
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    fingerprint text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schema_current_source_pkey PRIMARY KEY (name, checksum)
);
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'qdata_service') THEN
        GRANT SELECT ON schema_current_source TO qdata_service;
    END IF;
END;
$$;
""" + _ADD_CODE_FINGERPRINT.format(table="schema_current_source")

# code_fingerprint is NULL in the rows of builds from before it existed (they name their columns,
# so they keep writing rows beside a newer build during a rolling update).
_RECORD_MIGRATION = (
    "INSERT INTO schema_migrations (version, name, checksum, fingerprint, code_fingerprint) VALUES (%s, %s, %s, %s, %s)"
)
_RECORD_SOURCE = (
    "INSERT INTO schema_current_source (name, checksum, fingerprint, code_fingerprint) VALUES (%s, %s, %s, %s)"
)

# A digest of the user-visible schema: tables, columns, constraints, indexes and triggers (not
# the tracking tables, so that creating schema_current_source changed no recorded fingerprint).
_FINGERPRINT = """
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) AS fingerprint FROM (
    SELECT format('column %s.%s %s %s %s', c.table_name, c.column_name, c.data_type,
                  c.is_nullable, coalesce(c.column_default, '')) AS item
      FROM information_schema.columns c
     WHERE c.table_schema = current_schema() AND c.table_name NOT IN ('schema_migrations', 'schema_current_source')
    UNION ALL
    SELECT format('constraint %s %s', con.conname, pg_get_constraintdef(con.oid))
      FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
     WHERE n.nspname = current_schema() AND con.conrelid IS DISTINCT FROM to_regclass('schema_current_source')
    UNION ALL
    SELECT format('index %s', indexdef) FROM pg_indexes
     WHERE schemaname = current_schema() AND tablename NOT IN ('schema_migrations', 'schema_current_source')
    UNION ALL
    SELECT format('trigger %s %s', t.tgname, pg_get_triggerdef(t.oid))
      FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid JOIN pg_namespace n ON n.oid = r.relnamespace
     WHERE n.nspname = current_schema() AND NOT t.tgisinternal
) items
"""


# A digest of the database code: every function and procedure of the schema (as
# pg_get_functiondef prints it, search_path and SECURITY DEFINER included), each table's row-level
# security switches and every policy. Kept apart from _FINGERPRINT, whose formula databases in
# service recorded before this one existed (and which builds of that time still compare). Grants
# are left out: a restore as another owner (pg_restore --no-owner --role) rewrites who granted them.
_CODE_FINGERPRINT = """
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) AS code_fingerprint FROM (
    SELECT format('function %s %s', p.oid::regprocedure, pg_get_functiondef(p.oid)) AS item
      FROM pg_proc p
     WHERE p.pronamespace = current_schema()::regnamespace AND p.prokind IN ('f', 'p')
       AND NOT EXISTS (SELECT FROM pg_depend d
                        WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
    UNION ALL
    SELECT format('row security %s %s %s', c.relname, c.relrowsecurity, c.relforcerowsecurity)
      FROM pg_class c
     WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
       AND c.relname NOT IN ('schema_migrations', 'schema_current_source')
    UNION ALL
    SELECT format('policy %s %s %s %s %s %s %s', pol.tablename, pol.policyname, pol.permissive, pol.roles,
                  pol.cmd, coalesce(pol.qual, ''), coalesce(pol.with_check, ''))
      FROM pg_policies pol
     WHERE pol.schemaname = current_schema()
) items
"""


class MigrationError(RuntimeError):
    """The database's migration history disagrees with the shipped files."""


class _SqlText:
    """A shipped SQL file, known to the tracking tables by the SHA-256 of its text."""

    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Migration(_SqlText):
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    @property
    def transactional(self) -> bool:
        """False for a migration whose first line is NO_TRANSACTION."""
        return self.sql.split("\n", 1)[0].strip() != NO_TRANSACTION


@dataclasses.dataclass(frozen=True)
class SourceFile(_SqlText):
    """A current-source file of db/functions: applied whenever its text is new to the database."""

    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"functions/{self.name}"


@dataclasses.dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class AppliedSource:
    name: str
    checksum: str
    fingerprint: str


def _package_folder(name: str) -> Traversable:
    return resources.files("qdata_server.db").joinpath(name)


def load_migrations(folder: Folder | None = None) -> list[Migration]:
    """The migration files (the shipped ones unless folder is given), in version order."""
    folder = folder or _package_folder("migrations")
    migrations = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            migrations.append(Migration(int(match["version"]), match["name"], entry.read_text("utf-8")))
        elif entry.name.endswith(".sql"):
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


def load_sources(folder: Folder | None = None) -> list[SourceFile]:
    """The current-source files (the shipped db/functions unless folder is given), in name order."""
    folder = folder or _package_folder("functions")
    sources = []
    for entry in folder.iterdir():
        if _SOURCE_NAME.match(entry.name):
            sources.append(SourceFile(entry.name, entry.read_text("utf-8")))
        elif entry.name.endswith(".sql"):
            raise MigrationError(f"current-source file {entry.name!r} is not named name.sql (lower case)")
    return sorted(sources, key=lambda s: s.name)


def newer_than_build(files: list[Migration], applied: list[AppliedMigration]) -> list[AppliedMigration]:
    """Applied migrations newer than every shipped file: a newer release migrated the database.

    During a rolling update the old pods keep serving next to them (migrations are written to be
    backward compatible for one release), so these are reported, not refused.
    """
    newest = max((m.version for m in files), default=0)
    return [row for row in applied if row.version > newest]


def pending(files: list[Migration], applied: list[AppliedMigration]) -> list[Migration]:
    """The files still to apply; raises MigrationError if history and files disagree.

    An applied migration that was edited, or that is missing from the shipped files while newer
    ones are shipped, is an error; applied migrations newer than the whole build are tolerated
    (see newer_than_build).
    """
    by_version = {m.version: m for m in files}
    newest = max(by_version, default=0)
    for row in applied:
        shipped = by_version.get(row.version)
        if shipped is None and row.version > newest:
            continue
        if shipped is None:
            raise MigrationError(
                f"applied migration {row.version:04d}_{row.name} is missing from this build "
                "(is the server older than the database?)"
            )
        if shipped.checksum != row.checksum:
            raise MigrationError(
                f"applied migration {row.version:04d}_{row.name} was edited after it was applied "
                f"(checksum {row.checksum[:12]}… in the database, {shipped.checksum[:12]}… in the file); "
                "add a new migration instead of editing a landed one"
            )
    done = {row.version for row in applied}
    return [m for m in files if m.version not in done]


def pending_sources(files: list[SourceFile], applied: list[AppliedSource]) -> list[SourceFile]:
    """The current-source files whose text the database has never run.

    applied is the history in the order it was applied. A file whose shipped text was applied
    before some later text is not pending (superseded_sources: a newer build applied the later
    one); files the database knows but this build does not ship are left alone.
    """
    ran = {(row.name, row.checksum) for row in applied}
    return [f for f in files if (f.name, f.checksum) not in ran]


def superseded_sources(files: list[SourceFile], applied: list[AppliedSource]) -> list[SourceFile]:
    """Shipped files whose text the database ran, but another text of the same file after it."""
    latest = {row.name: row.checksum for row in applied}
    ran = {(row.name, row.checksum) for row in applied}
    return [f for f in files if (f.name, f.checksum) in ran and latest[f.name] != f.checksum]


def _scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    """The first column of the one row query returns."""
    row = conn.execute(query).fetchone()
    if row is None:
        raise MigrationError(f"no row from {query!r}")
    return row[0]


_APPLIED_MIGRATIONS = "SELECT version, name, checksum, fingerprint FROM schema_migrations ORDER BY version"


def _applied(conn: psycopg.Connection[Any]) -> list[AppliedMigration]:
    if not _scalar(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return []
    return [AppliedMigration(*row) for row in conn.execute(_APPLIED_MIGRATIONS).fetchall()]


_APPLIED_SOURCES = "SELECT name, checksum, fingerprint FROM schema_current_source ORDER BY applied_at, name"


def _applied_sources(conn: psycopg.Connection[Any]) -> list[AppliedSource]:
    if not _scalar(conn, "SELECT to_regclass('schema_current_source') IS NOT NULL"):
        return []
    return [AppliedSource(*row) for row in conn.execute(_APPLIED_SOURCES).fetchall()]


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def split_statements(text: str) -> list[str]:
    """The SQL statements of text, split at top-level semicolons.

    Quotes ('...', "...", $tag$...$tag$) and comments (--, /* */) are skipped over, so a
    semicolon inside them does not split (backslash escapes of E'...' strings are not understood).
    Comment-only pieces are dropped.
    """
    statements: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif c in "'\"":
            end = i + 1
            while True:
                end = text.find(c, end)
                if end < 0 or not text.startswith(c, end + 1):
                    break
                end += 2  # a doubled quote stands for itself
            i = n if end < 0 else end + 1
        elif c == "$" and (tag := _DOLLAR_TAG.match(text, i)):
            end = text.find(tag.group(0), i + len(tag.group(0)))
            i = n if end < 0 else end + len(tag.group(0))
        elif c == ";":
            statements.append(text[start : i + 1])
            start = i = i + 1
        else:
            i += 1
    statements.append(text[start:])
    return [s.strip() for s in statements if _code(s)]


def _code(statement: str) -> str:
    """statement without its comments and semicolons (empty for a comment-only piece)."""
    return re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.DOTALL).strip(" \n\t;")


def _fingerprint(conn: psycopg.Connection[Any]) -> str:
    return str(_scalar(conn, _FINGERPRINT))


def _code_fingerprint(conn: psycopg.Connection[Any]) -> str:
    return str(_scalar(conn, _CODE_FINGERPRINT))


def _fingerprints(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """The live schema's and database code's fingerprints, as a step's bookkeeping row records them."""
    return _fingerprint(conn), _code_fingerprint(conn)


# Migrations and current-source files run while earlier replicas serve (docs/operations.md,
# "Upgrades"). Their DDL takes ACCESS EXCLUSIVE locks table after table (security.sql alone
# re-creates the policies of every user-owned table), and two things go wrong under traffic: a
# lock request that waits queues every later query of that table behind it, and a serving
# transaction that holds one table and then reads one the file has already locked closes a cycle
# that PostgreSQL breaks by aborting the file (it is the older waiter, so its deadlock check runs
# first). So a file waits at most LOCK_TIMEOUT for any one lock, and a file that lost a lock wait
# or a deadlock is rolled back and tried again, up to LOCK_ATTEMPTS times with jittered backoff:
# what it did is undone, and the serving transaction it collided with goes through meanwhile.
LOCK_TIMEOUT = "2s"
LOCK_ATTEMPTS = 8


def _apply(conn: psycopg.Connection[Any], label: str, sql_text: str, record: str, values: tuple[object, ...]) -> None:
    """Runs sql_text and its bookkeeping row (values, then the resulting fingerprints) in one
    transaction, again after a lost lock wait or deadlock (see LOCK_TIMEOUT)."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                conn.execute(sql_text.encode("utf-8"))
                conn.execute(record, (*values, *_fingerprints(conn)))
            return
        except (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected) as exc:
            if attempt == LOCK_ATTEMPTS:
                raise
            pause = min(5.0, 0.2 * 2**attempt) * random.uniform(0.5, 1.0)
            log.warning(
                "%s: %s (attempt %d of %d); rolled back, trying again in %.1f s",
                label,
                type(exc).__name__,
                attempt,
                LOCK_ATTEMPTS,
                pause,
            )
            time.sleep(pause)


def _apply_migration(conn: psycopg.Connection[Any], migration: Migration) -> None:
    values = (migration.version, migration.name, migration.checksum)
    if migration.transactional:
        _apply(conn, migration.label, migration.sql, _RECORD_MIGRATION, values)
        return
    # Autocommit, one statement at a time (several in one query string would form one implicit
    # transaction, which CREATE INDEX CONCURRENTLY refuses); recorded once all succeeded.
    for statement in split_statements(migration.sql):
        conn.execute(statement.encode("utf-8"))
    conn.execute(_RECORD_MIGRATION, (*values, *_fingerprints(conn)))


def migrate(conninfo: str, *, migrations: Folder | None = None, sources: Folder | None = None) -> list[str]:
    """Applies pending migrations, then pending current-source files; returns their labels.

    Safe to run concurrently. migrations and sources name other folders than the shipped ones
    (for tests).
    """
    files = load_migrations(migrations)
    source_files = load_sources(sources)
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # A session-level lock on this dedicated connection; released in finally (and at close).
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        try:
            conn.execute(_CREATE_TRACKING)
            for migration in pending(files, _applied(conn)):
                _apply_migration(conn, migration)
                applied_now.append(migration.label)
                log.info("applied migration %s", migration.label)
            with conn.transaction():
                conn.execute(_CREATE_SOURCE_TRACKING)
            history = _applied_sources(conn)
            for source in superseded_sources(source_files, history):
                log.warning(
                    "left %s as the database has it: it ran a later text of it than this build ships "
                    "(a newer release migrated it)",
                    source.label,
                )
            for source in pending_sources(source_files, history):
                _apply(conn, source.label, source.sql, _RECORD_SOURCE, (source.name, source.checksum))
                applied_now.append(source.label)
                log.info("applied current source %s", source.label)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return applied_now


def status(
    conninfo: str, *, migrations: Folder | None = None, sources: Folder | None = None
) -> list[Migration | SourceFile]:
    """What migrate would apply; raises MigrationError for an edited or missing applied migration."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        todo: list[Migration | SourceFile] = list(pending(load_migrations(migrations), _applied(conn)))
        return todo + pending_sources(load_sources(sources), _applied_sources(conn))


def verify(conninfo: str, *, migrations: Folder | None = None, sources: Folder | None = None) -> list[str]:
    """Checks history, pending files and the live schema; returns a list of problems (empty = ok)."""
    problems: list[str] = []
    source_files = load_sources(sources)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        applied = _applied(conn)
        files = load_migrations(migrations)
        try:
            todo = pending(files, applied)
        except MigrationError as exc:
            return [str(exc)]
        history = _applied_sources(conn)
        problems += [f"migration {m.label} is not applied" for m in todo]
        problems += [f"current source {s.label} is not applied" for s in pending_sources(source_files, history)]
        # Beside migrations newer than this build, a later text is that newer release's (a rolling
        # update: this build keeps serving next to it), as pending() tolerates its migrations.
        if not newer_than_build(files, applied):
            problems += [
                f"current source {s.label}: the database runs a later text than this build ships "
                "(a newer release migrated it; or this build reverts a change: see docs/database.md)"
                for s in superseded_sources(source_files, history)
            ]
        if applied and not problems:
            problems += _drift(conn)
    return problems


# The fingerprints recorded by whatever was applied last: a migration or a source file.
_LAST_FINGERPRINTS = """
SELECT fingerprint, code_fingerprint FROM (
    SELECT fingerprint, code_fingerprint, applied_at FROM schema_migrations
    UNION ALL SELECT fingerprint, code_fingerprint, applied_at FROM schema_current_source
) steps ORDER BY applied_at DESC LIMIT 1
"""


def _drift(conn: psycopg.Connection[Any]) -> list[str]:
    """What differs between the live database and what its last applied step recorded."""
    row = conn.cursor(row_factory=tuple_row).execute(_LAST_FINGERPRINTS).fetchone()
    schema, code = row if row else (None, None)
    problems = []
    if _fingerprint(conn) != schema:
        problems.append(
            "the live schema differs from the one the migrations produced "
            "(changed by hand?); compare it with the migration files"
        )
    # None: the last step was recorded by a build from before the code fingerprint (the next
    # step this build applies records one).
    if code is not None and _code_fingerprint(conn) != code:
        problems.append(
            "the live database code (functions, row-level security, policies) differs from the one "
            "the migrations and the current source produced (changed by hand?); compare it with db/functions"
        )
    return problems


async def pending_count(conn: psycopg.AsyncConnection[Any]) -> int:
    """Pending migrations and current-source files, for the health check.

    Raises MigrationError on a bad migration history.
    """
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        "SELECT to_regclass('schema_migrations') IS NOT NULL, to_regclass('schema_current_source') IS NOT NULL"
    )
    present = await cur.fetchone()
    migrations_present, sources_present = present if present else (False, False)
    applied: list[AppliedMigration] = []
    if migrations_present:
        await cur.execute(_APPLIED_MIGRATIONS)
        applied = [AppliedMigration(*row) for row in await cur.fetchall()]
    history: list[AppliedSource] = []
    if sources_present:
        await cur.execute(_APPLIED_SOURCES)
        history = [AppliedSource(*row) for row in await cur.fetchall()]
    return len(pending(load_migrations(), applied)) + len(pending_sources(load_sources(), history))


def labels(items: Iterable[Migration | SourceFile]) -> str:
    """The items' labels, comma-separated, or "none"."""
    return ", ".join(item.label for item in items) or "none"
