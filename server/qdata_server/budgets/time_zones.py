"""Which time zone names a budget may have: the names of PostgreSQL's tz database, exactly.

PostgreSQL does the period arithmetic, so its tz database is the one that decides. Reading it
(pg_timezone_names) takes about 70 ms of the database's CPU, as the view reads every zone file:
too much for every CreateBudget, and a burst of them would hold the pool's connections. So each
server process reads the list once and keeps it; a name it does not find makes it read the list
again, at most once a minute (the database may have been upgraded to a newer tz database since).
Names match exactly: PostgreSQL itself would also take "europe/berlin", an abbreviation ("PST") or a
POSIX rule ("UTC+3"), none of which name a calendar the way a tz database name does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from qdata_server.db.transactions import ACTING_FOR_NO_USER

if TYPE_CHECKING:
    from qdata_server.deps import Deps

# Seconds before a name not on the list makes this process read the list again.
REFRESH_AFTER_SECONDS = 60.0

_names: frozenset[str] = frozenset()
_read_at: float | None = None


async def known(deps: Deps, name: str) -> bool:
    """True if PostgreSQL's tz database has a zone of exactly this name."""
    global _names, _read_at
    stale = _read_at is None or time.monotonic() - _read_at >= REFRESH_AFTER_SECONDS
    if name not in _names and stale:
        rows = await deps.statement("time_zone_names", {}, acting=ACTING_FOR_NO_USER)
        _names = frozenset(row["name"] for row in rows)
        _read_at = time.monotonic()
    return name in _names
