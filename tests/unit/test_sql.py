"""The named-SQL parser and the shipped query files."""

import re

import pytest

from qdata_server.db import sql


def test_parses_named_blocks_with_descriptions():
    text = """
-- name: first
-- Reads one thing.
SELECT 1;

-- name: second
-- Writes another,
-- described on two lines.
UPDATE t SET a = %(a)s
 WHERE b = %(b)s;
"""
    blocks = sql.parse_blocks(text)
    assert blocks == {"first": "SELECT 1;", "second": "UPDATE t SET a = %(a)s\n WHERE b = %(b)s;"}


def test_duplicate_name_is_an_error():
    with pytest.raises(sql.SqlError, match="duplicate"):
        sql.parse_blocks("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_empty_block_is_an_error():
    with pytest.raises(sql.SqlError, match="empty"):
        sql.parse_blocks("-- name: a\n-- only a description\n")


def test_sql_before_first_name_is_an_error():
    with pytest.raises(sql.SqlError, match="before the first"):
        sql.parse_blocks("SELECT 1;\n-- name: a\nSELECT 2;\n")


def test_shipped_queries_load_and_unknown_name_fails():
    names = sql.names()
    assert {"insert_user", "claim_request_id", "reserve_password_check"} <= set(names)
    assert all(sql.query(name).strip() for name in names)
    with pytest.raises(sql.SqlError, match="unknown query"):
        sql.query("no_such_query")


def test_shipped_queries_use_only_named_parameters():
    for name in sql.names():
        text = sql.query(name)
        # Positional placeholders would make call sites order-dependent; values are never formatted in.
        assert "%s" not in text, name
        assert "{" not in text, name


# A `*` that expands to a table's columns: `SELECT *`, `RETURNING *`, `x.*`, `(rec).*`, `a, *`.
# (count(*) and multiplication are not column lists.)
_STAR_LIST = re.compile(
    r"\b(?:SELECT|RETURNING)\s+(?:DISTINCT\s+)?\*|[\w)\"]\s*\.\s*\*|,\s*\*\s*(?=,|\bFROM\b|;|\)|$)",
    re.IGNORECASE,
)


def _star_lists(text: str) -> list[str]:
    # Comments and string literals may mention `*` freely.
    code = re.sub(r"--[^\n]*|'(?:[^']|'')*'", " ", text)
    return [m.group(0) for m in _STAR_LIST.finditer(code)]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("SELECT * FROM users", True),
        ("SELECT DISTINCT * FROM users", True),
        ("UPDATE users SET a = 1 RETURNING *;", True),
        ("SELECT t.*, now() FROM ledger_transactions t", True),
        ("SELECT (b.o_record).* FROM f() b", True),
        ("SELECT 1 AS one, * FROM users", True),
        ("SELECT count(*) AS n, ceil(total * 0.5) FROM users", False),
        ("SELECT user_id -- every column: SELECT *\n  FROM users WHERE note = 'x.*'", False),
    ],
)
def test_star_column_lists_are_recognized(text: str, found: bool) -> None:
    assert bool(_star_lists(text)) is found


def test_shipped_queries_name_their_columns() -> None:
    # With prepared statements, a `*` fixes the result shape when a statement is prepared; a
    # column that a newer replica's migration adds later makes this (older) replica's prepared
    # statement fail with "cached plan must not change result type" during a rolling update.
    offenders = {name: _star_lists(sql.query(name)) for name in sql.names()}
    assert {name: stars for name, stars in offenders.items() if stars} == {}
