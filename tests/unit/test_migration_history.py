"""How the migration runner judges an applied history against the shipped files."""

import pytest

from qdata_server.db.migrate import (
    AppliedMigration,
    Migration,
    MigrationError,
    load_migrations,
    newer_than_build,
    pending,
)

FILES = [Migration(1, "first", "CREATE TABLE a (x int);"), Migration(2, "second", "CREATE TABLE b (y int);")]


def applied(migration: Migration, checksum: str | None = None) -> AppliedMigration:
    return AppliedMigration(migration.version, migration.name, checksum or migration.checksum, "fp")


def test_nothing_applied_means_everything_pending():
    assert pending(FILES, []) == FILES


def test_applied_prefix_leaves_the_rest():
    assert pending(FILES, [applied(FILES[0])]) == [FILES[1]]


def test_edited_applied_migration_is_a_loud_error():
    with pytest.raises(MigrationError, match="was edited after it was applied"):
        pending(FILES, [applied(FILES[0], checksum="0" * 64)])


def test_missing_applied_migration_is_a_loud_error():
    # Version 2 was applied but this build ships 1 and 3 only: history and files disagree.
    files = [FILES[0], Migration(3, "third", "CREATE TABLE c (z int);")]
    with pytest.raises(MigrationError, match="missing from this build"):
        pending(files, [applied(FILES[0]), applied(FILES[1])])


def test_migrations_newer_than_the_build_are_tolerated_during_a_rolling_update():
    newer = AppliedMigration(3, "from_the_next_release", "f" * 64, "fp")
    history = [applied(FILES[0]), applied(FILES[1]), newer]
    assert pending(FILES, history) == []
    assert newer_than_build(FILES, history) == [newer]


def test_shipped_files_are_numbered_from_one_without_gaps():
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))
