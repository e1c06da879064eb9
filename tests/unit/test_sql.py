"""The named-SQL parser and the shipped query files."""

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
