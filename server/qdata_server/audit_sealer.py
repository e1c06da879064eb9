"""The audit sealer: chains audit events after their transactions commit (migration 0017).

Writers only append events (audit_append); `seal` runs audit_seal (db/functions/audit.sql) in
short transactions of up to `batch` events each until the backlog is gone. Every worker of every
server runs it every QDATA_AUDIT_SEAL_SECONDS (app.py, through background.every); the database's
seal lock lets one sealer work at a time, and the others' rounds return at once. A failure (a
read-only database, a missing head) is logged by background.every and leaves health alone: the
writes go on, the backlog grows, and verify-audit reports it ("stale" beyond the bound).
`python -m qdata_server seal-audit` runs one `seal_all` as the owner.
"""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from qdata_server.db import transactions
from qdata_server.db.connection import Conn, Pool
from qdata_server.db.sql import fetch_row

# Events per sealing transaction: enough to amortize a round, few enough that the transaction
# stays short (it writes, so while it runs it holds back ListAuditEvents' horizon, see 0012, and
# it holds the heads' row locks, which only a writer of a build before 0017 would wait for).
BATCH = 500


async def _seal_batch(conn: Conn, batch: int) -> int:
    sealed: int = (await fetch_row(conn, "audit_seal", {"limit": batch}))["sealed"]
    return sealed


async def seal(pool: Pool, *, batch: int = BATCH) -> int:
    """Seals the events whose transactions have ended, batch by batch; returns how many.

    Stops at the first batch that is not full (the backlog is gone, or another sealer is at work).
    """
    total = 0

    async def one_batch(conn: Conn) -> int:
        return await _seal_batch(conn, batch)

    while True:
        sealed = await transactions.run(pool, one_batch, acting=transactions.ACTING_FOR_ALL_USERS)
        total += sealed
        if sealed < batch:
            return total


async def seal_all(conninfo: str, *, batch: int = BATCH) -> int:
    """Seals on one connection to conninfo (the seal-audit command); returns how many."""
    total = 0
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
        while True:
            sealed = await _seal_batch(conn, batch)
            total += sealed
            if sealed < batch:
                return total
