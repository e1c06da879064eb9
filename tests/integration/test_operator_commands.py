"""Operator commands as real processes: they act on the database they are given, or refuse.

`QDATA_OWNER_DATABASE_URL=... python -m qdata_server migrate` without DATABASE_URL migrates that
database (it used to start the embedded PostgreSQL and migrate it instead, exit 0, leaving the
target empty); `serve` and `seed`, which need the serving login, refuse with exit 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from qdata_server.db import migrate


def run_command(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Runs `python -m qdata_server <args>` with only these qdata variables set."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("QDATA_", "DATABASE_URL"))}
    # Where an embedded PostgreSQL would put its data: the command must never create it.
    full_env["QDATA_EMBEDDED_DATA_DIR"] = str(tmp_path / "embedded" / "pgdata")
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "qdata_server", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrate_with_only_the_owner_url_migrates_that_database(empty_database_url, tmp_path):
    owner = {"QDATA_OWNER_DATABASE_URL": empty_database_url}
    assert migrate.status(empty_database_url)  # everything pending

    migrated = run_command(["migrate"], owner, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("applied: 0001_")
    assert migrate.status(empty_database_url) == []
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT to_regclass('ledger_transactions') IS NOT NULL").fetchone() == (True,)

    status = run_command(["status"], owner, tmp_path)
    assert (status.returncode, status.stdout.strip()) == (0, "pending: none")
    verified = run_command(["verify"], owner, tmp_path)
    assert (verified.returncode, verified.stdout.strip()) == (0, "schema ok"), verified.stdout
    assert not (tmp_path / "embedded").exists(), "an embedded PostgreSQL was started"


@pytest.mark.parametrize("command", ["serve", "seed"])
def test_serving_commands_with_only_the_owner_url_refuse(command, empty_database_url, tmp_path):
    refused = run_command([command], {"QDATA_OWNER_DATABASE_URL": empty_database_url}, tmp_path)
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("configuration error:")]
    assert len(errors) == 1 and "DATABASE_URL" in errors[0], refused.stderr
    assert not (tmp_path / "embedded").exists(), "an embedded PostgreSQL was started"
    assert len(migrate.status(empty_database_url)) > 0  # and nothing was done to the database
