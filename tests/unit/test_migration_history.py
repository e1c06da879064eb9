"""How the migration runner judges an applied history against the shipped files (and splits them)."""

import re

import pytest

from qdata_server.db.migrate import (
    NO_TRANSACTION,
    AppliedMigration,
    AppliedSource,
    Migration,
    MigrationError,
    SourceFile,
    load_migrations,
    load_sources,
    newer_than_build,
    pending,
    pending_sources,
    split_statements,
    superseded_sources,
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


# SHA-256 of every landed migration. Databases in service recorded these checksums: an edited file
# would be refused there ("edited after it was applied"). Add the next migration's line when it
# lands; never change one.
LANDED = {
    "0001_users_audit_idempotency": "08115a8fa11228d929128511b2e04747a27a3d8878298effff18ef21d0a7c56d",
    "0002_chat": "2e2f05fc64048fd6566de933c5df9936754137f7eb6f38f5b5ab96442e255a6c",
    "0003_ledger": "ab37813975a19568bc19d6ab785db9b0afcb7f1f1072601820f3144b6c3f0b03",
    "0004_usage": "a9e4e2353da28785c6cea635ec70cbc886342e9ce45bcdedf369d0df4fa10d1d",
    "0005_api_keys": "a33538f9d1e8b72b517a5bcc4420e316c114a1db1447dd6f306833e49649cee7",
    "0006_audit_chain": "7dab104e2f2e711143e08dd68fff25d773ba4a9eaba693c5194ce6155829a7a1",
    "0007_service_role_row_security": "be05746dbb7fa0fdb468caead50907f6da0f316b18271a482e60a0680332b9ab",
    "0008_ledger_live_user_lock": "74cbdfe3d86babf796e32ef64b85497c9b2d4e5003adef4c5264f016d39e89ad",
    "0009_ledger_request_keys": "ab7b780ffdb296e07a1c71e71b1d9b63966558544ee524a881b594ece43c8e00",
    "0010_login_lockout_reservations": "013034ceaae985e90ffe08ae12681e635da84cd49d81edffbda88c07da33aa03",
    "0011_chat_branch_jumps": "0d4df065a106f0d0842ba7b2a23d03fe6d961022862a10dbdae9da8f436ead76",
    "0012_listing_commit_order": "3a801927276153b0350d3d45864e9e03f5cb26aa626ad34a6da5f9ea0610f2c8",
    "0013_import": "89c4fbacf83c65a1baeb23eee0b40735eb0499e6fd12d4ff61d8629ee8b33ba7",
    "0014_restorable_range_checks": "9763b3dfef6fa390bf7ff62627b3aa77ccff669ad17e6c94dc0aedb8eb97f3c1",
    "0015_chat_share_links": "b57ba1fc336c296ee171f5af1cda5b41ee2bfe2429218e3aeda011dfe431b285",
    "0016_chat_import": "d25351680dd5d15c6df8d94fc7cb930633c32b79f58149dca510e5a0909a16bb",
    "0017_audit_sealer": "0b558a68d02d8f1d7ae2449ce9d74b6d6cf5d0bd41866b10075e5afc4d6e4b3d",
    "0018_budgets": "9dbdd9fe197c150bc80202e490d4287199b39ce303d5e76696daa92500a01d63",
}


def test_landed_migrations_are_never_edited():
    shipped = {m.label: m.checksum for m in load_migrations()}
    assert {label: shipped.get(label) for label in LANDED} == LANDED


def source(name: str, text: str) -> SourceFile:
    return SourceFile(name, text)


def ran(file: SourceFile) -> AppliedSource:
    return AppliedSource(file.name, file.checksum, "fp")


V1, V2 = source("ledger.sql", "-- v1"), source("ledger.sql", "-- v2")


def test_a_source_file_is_pending_until_its_text_ran():
    assert pending_sources([V1], []) == [V1]
    assert pending_sources([V1], [ran(V1)]) == []


def test_a_changed_source_file_is_pending_again():
    assert pending_sources([V2], [ran(V1)]) == [V2]
    assert superseded_sources([V2], [ran(V1)]) == []


def test_an_older_build_leaves_a_later_text_in_place():
    # A rolling update: this (older) build ships V1; the newer one applied V2 after it.
    history = [ran(V1), ran(V2)]
    assert pending_sources([V1], history) == []
    assert superseded_sources([V1], history) == [V1]
    assert superseded_sources([V2], history) == []


def test_source_files_the_build_does_not_ship_are_left_alone():
    assert pending_sources([V1], [ran(V1), ran(source("newer.sql", "-- from the next release"))]) == []


def test_shipped_source_files_hold_only_replaceable_code():
    sources = load_sources()
    assert [s.name for s in sources] == sorted(s.name for s in sources) and sources
    for file in sources:
        for statement in split_statements(file.sql):
            code = re.sub(r"^(\s*--[^\n]*\n)+", "", statement)
            head = " ".join(code.split()[:4]).upper()
            # Tables, indexes and data belong in migrations; functions and triggers are replaced in
            # place, policies dropped and created again (inside DO blocks), grants restated.
            assert head.startswith(
                ("CREATE OR REPLACE FUNCTION", "CREATE OR REPLACE TRIGGER", "DO $$", "GRANT ", "REVOKE ")
            ), f"{file.name}: {head}"


def test_no_transaction_is_the_first_line_only():
    assert not Migration(13, "concurrently", f"{NO_TRANSACTION}\nCREATE INDEX CONCURRENTLY i ON t (a);").transactional
    assert Migration(13, "plain", f"CREATE TABLE t (a int);\n{NO_TRANSACTION}\n").transactional


def test_statements_split_at_top_level_semicolons_only():
    text = """-- qdata: no-transaction
-- a comment; with a semicolon
CREATE INDEX CONCURRENTLY IF NOT EXISTS a_idx ON a (x);
/* block; comment */
COMMENT ON INDEX a_idx IS 'it''s; fine';
DO $body$ BEGIN PERFORM 1; END; $body$;
SELECT "odd;name" FROM t;
-- trailing comment only
"""
    assert split_statements(text) == [
        "-- qdata: no-transaction\n-- a comment; with a semicolon\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS a_idx ON a (x);",
        "/* block; comment */\nCOMMENT ON INDEX a_idx IS 'it''s; fine';",
        "DO $body$ BEGIN PERFORM 1; END; $body$;",
        'SELECT "odd;name" FROM t;',
    ]
