"""Background upkeep of usage data: folding queued records into the rollups, partitions ahead.

Every worker process runs `run` (app.py); the database keeps it single-writer (usage_fold takes
a transaction-level advisory lock and returns at once if another process holds it), so more
workers or replicas only add idle attempts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from qdata_server import background
from qdata_server.db.sql import fetch_row
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS, ACTING_FOR_NO_USER
from qdata_server.deps import Deps

if TYPE_CHECKING:
    from qdata_server.deps import Deps

log = logging.getLogger("qdata.usage")

# Queued rows folded per transaction; the folder loops until the queue is drained.
FOLD_BATCH = 20_000
PARTITION_CHECK_SECONDS = 3600.0


async def fold(deps: Deps, *, batch: int = FOLD_BATCH) -> int:
    """Folds queued usage into the rollups until the queue is empty; returns the rows folded."""
    total = 0
    while True:
        # The folder moves every user's queued usage into the rollups: a cross-user path.
        row = await deps.transaction(
            lambda conn: fetch_row(conn, "usage_fold", {"limit": batch}), acting=ACTING_FOR_ALL_USERS
        )
        folded: int = row["folded"]
        total += folded
        if folded < batch:
            return total


async def ensure_partitions(deps: Deps) -> int:
    """Creates the missing monthly partitions of usage_records up to the configured months ahead."""
    months = deps.settings.usage_partition_months_ahead
    row = await deps.transaction(
        lambda conn: fetch_row(conn, "usage_ensure_partitions", {"months_ahead": months}), acting=ACTING_FOR_NO_USER
    )
    created: int = row["created"]
    return created


class Upkeep:
    """One round of upkeep: partitions ahead (checked hourly), then the fold."""

    def __init__(self, deps: Deps):
        self.deps = deps
        self._next_partition_check = 0.0

    def interval(self) -> float:
        """Seconds between rounds: usage_fold_seconds, or a minute when folding is off."""
        fold_seconds = self.deps.settings.usage_fold_seconds
        return fold_seconds if fold_seconds > 0 else 60.0

    async def round(self) -> None:
        if time.monotonic() >= self._next_partition_check:
            # A failed check (say, lock_timeout behind long transactions) retries in a minute.
            self._next_partition_check = time.monotonic() + 60.0
            created = await ensure_partitions(self.deps)
            self._next_partition_check = time.monotonic() + PARTITION_CHECK_SECONDS
            if created:
                log.info("created usage partitions", extra={"partitions": created})
        if self.deps.settings.usage_fold_seconds > 0:
            await fold(self.deps)


async def run(deps: Deps, is_serving: Callable[[], bool]) -> None:
    """Folds every usage_fold_seconds (0: never) and checks partitions hourly, while serving."""
    upkeep = Upkeep(deps)
    await background.every(
        upkeep.interval, upkeep.round, log=log, failure="usage maintenance failed", when=is_serving, wait_first=False
    )
