"""Conditions a worker must meet before it serves: the key ring covers the stored API keys, and
the database role is confined by row-level security.

Both are checked by the health probe (health.py) on its own connection, so a failing gate keeps
the server NOT_SERVING; the key ring is also checked once at start, where a missing version is
fatal (StartupError: the operator must fix the ring or run rewrap-keys first).
"""

from __future__ import annotations

import logging

import psycopg
from psycopg.rows import DictRow

from qdata_server.db import transactions
from qdata_server.db.pool import QdataPool
from qdata_server.db.sql import query
from qdata_server.startup import StartupError
from qdata_server.users import api_keys
from qdata_server.users.vault import KeyRing

log = logging.getLogger("qdata.server")


class KeyRingGate:
    """Stored API keys need only KEK versions the key ring holds (see users/vault.py)."""

    def __init__(self, ring: KeyRing | None):
        self.ring = ring
        # Whether the check has passed on a migrated schema (nothing to check without a ring).
        self.passed = ring is None

    async def check_at_start(self, pool: QdataPool, wait_seconds: float) -> None:
        """Raises StartupError if stored API keys need KEK versions the ring lacks.

        Checked in each worker, because only the worker has a pool; a database that is down or
        not migrated yet defers the check to the health probe (`check`), which keeps the server
        NOT_SERVING while the check fails.
        """
        ring = self.ring
        if ring is None:
            return
        try:
            async with pool.connection(timeout=wait_seconds) as conn, conn.transaction():
                row = await (await conn.execute(query("api_keys_table_present"))).fetchone()
                present = bool(row and row["present"])
                if present:
                    # Counting every user's keys by version is a cross-user read.
                    await transactions.name_acting(conn, transactions.ACTING_FOR_ALL_USERS)
                problem = await api_keys.check_ring(conn, ring) if present else None
        except Exception as exc:
            log.warning("key ring check deferred: database unreachable", extra={"error_type": type(exc).__name__})
            return
        if problem:
            raise StartupError(problem)
        self.passed = present
        log.info("key ring", extra={"versions": ring.versions, "primary": ring.primary})

    async def check(self, conn: psycopg.AsyncConnection[DictRow]) -> bool:
        """In the probe's transaction: True once the ring covers every stored key (logs a problem)."""
        if self.passed or self.ring is None:
            return True
        # Start could not check the key ring (database down or schema not migrated).
        await transactions.name_acting(conn, transactions.ACTING_FOR_ALL_USERS)
        problem = await api_keys.check_ring(conn, self.ring)
        if problem:
            log.error(problem)
        self.passed = not problem
        return self.passed


class RoleGate:
    """The serving role must not escape row-level security (unless QDATA_ALLOW_INSECURE)."""

    def __init__(self, allow_insecure: bool):
        self.allow_insecure = allow_insecure
        # Whether the finding has been logged (once per process).
        self._warned = False

    async def check(self, conn: psycopg.AsyncConnection[DictRow]) -> bool:
        """False (not serving) if the server's database role escapes row-level security.

        A superuser, a role with BYPASSRLS or the tables' owner sees every user's rows whatever
        the policies say; serving as one is allowed only with QDATA_ALLOW_INSECURE (logged once).
        """
        row = await (await conn.execute(query("serving_role_confined"))).fetchone()
        if row is not None and row["confined"]:
            return True
        if self.allow_insecure:
            if not self._warned:
                log.warning(
                    "the database role bypasses row-level security (superuser, BYPASSRLS or table owner); "
                    "serving anyway because QDATA_ALLOW_INSECURE is set"
                )
                self._warned = True
            return True
        if not self._warned:
            log.error(
                "not serving: the database role in DATABASE_URL bypasses row-level security (superuser, "
                "BYPASSRLS or the tables' owner). Serve as a login role that is a member of qdata_service "
                "and run migrations as the owner (QDATA_OWNER_DATABASE_URL); see README"
            )
            self._warned = True
        return False
