"""The budgets' clock: the time the database judges budget periods by (budget_now() in
db/functions/budget_enforcement.sql).

A server is built with `clock=None` (the default, and the only production setting): every
transaction sends qdata.clock empty and the database uses its own transaction time. Tests build
a server with a `Clock` they move (`clock.now = datetime(...)`), so period boundaries are tested
without waiting for midnight; a Clock whose `now` is None also means database time. Only budgets
read it: holds still expire, and rows are still stamped, by the database's own time.
"""

from __future__ import annotations

import dataclasses
import datetime


@dataclasses.dataclass
class Clock:
    """An injectable clock; `now` None means the database's time."""

    now: datetime.datetime | None = None

    def setting(self) -> str:
        """The value of qdata.clock for a transaction that starts now ('' for database time)."""
        if self.now is None:
            return ""
        if self.now.tzinfo is None:
            raise ValueError("the clock needs an aware datetime")
        return self.now.isoformat()


def clock_setting(clock: Clock | None) -> str:
    """qdata.clock for a server built with clock (None: database time)."""
    return clock.setting() if clock is not None else ""
