"""CPU time from /proc: what a process tree (a server, PostgreSQL's cluster) used over a window.

A process's /proc/<pid>/stat holds its own user and system time (utime, stime) and the times of
the children it has waited for (cutime, cstime), in clock ticks. Summing all four over the live
processes of a tree counts every descendant that ever lived, also those that exited and were
reaped during the window (a pgbench backend, a worker that restarted): their time moved into
their parent's cutime/cstime. A child that exited but is not yet reaped is missed until it is,
so read the tree a moment after its load ends (the bench reads it after the load generator has
exited).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def stat_ticks(stat: str) -> tuple[int, int, int, int]:
    """(utime, stime, cutime, cstime) in clock ticks from the text of /proc/<pid>/stat.

    The command name (field 2) is in parentheses and may hold spaces or parentheses, so fields
    are counted from the last ")".
    """
    fields = stat[stat.rfind(")") + 2 :].split()
    # After the name: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
    return int(fields[11]), int(fields[12]), int(fields[13]), int(fields[14])


def _ticks(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone: its time is in its parent's cutime once reaped
        return 0
    return sum(stat_ticks(text))


def tree_seconds(pids: Iterable[int]) -> float:
    """CPU seconds used so far by the given processes and every descendant they reaped."""
    return sum(_ticks(pid) for pid in pids) / os.sysconf("SC_CLK_TCK")


def per_call_ms(seconds: dict[str, float], calls: float) -> dict[str, float | None]:
    """CPU milliseconds per call from CPU seconds over a window in which `calls` calls were done."""
    return {name: (value * 1000 / calls if calls > 0 else None) for name, value in seconds.items()}


def difference(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds used between two readings of the same trees (never negative)."""
    return {name: max(0.0, after[name] - before.get(name, 0.0)) for name in after}
