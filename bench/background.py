"""What else PostgreSQL did during a measured window: autovacuum, ANALYZE, qdata's background jobs.

A latency tail can come from the database doing work nobody asked the measured call for. The
sampler polls pg_stat_activity (every `interval` seconds, on its own connection, in a thread) for
autovacuum workers and for qdata's background statements (the audit sealer's `audit_seal`, the
usage folder's `usage_fold`) and records, per kind, in how many samples it saw one running, and
which tables autovacuum worked on. It also reads pg_stat_all_tables' autovacuum and autoanalyze
counts before and after, so a run that finished between two samples is counted too.

`settle`, before the latency row, runs VACUUM (ANALYZE) in the bench's databases and then waits
until no autovacuum worker is running (bounded): the rows the bench itself wrote before (the
accounts it creates, what its Charge, usage and pgbench runs leave) are vacuumed and analyzed
before the row is measured, not during it. It reports what it did and how long it took.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

_ACTIVITY = """
SELECT backend_type, state, query
  FROM pg_stat_activity
 WHERE pid <> pg_backend_pid()
   AND (backend_type = 'autovacuum worker'
        OR (state = 'active' AND (query LIKE '%audit_seal(%' OR query LIKE '%usage_fold(%')))
"""
_COUNTS = """
SELECT coalesce(sum(autovacuum_count), 0)::bigint AS autovacuums,
       coalesce(sum(autoanalyze_count), 0)::bigint AS autoanalyzes
  FROM pg_stat_all_tables
"""


def _kinds(rows: list[tuple[str, str, str]]) -> tuple[set[str], list[str]]:
    """The kinds of background work in one sample, and the autovacuum targets named in it."""
    kinds: set[str] = set()
    targets = []
    for backend_type, _state, query in rows:
        if backend_type == "autovacuum worker":
            kinds.add("autovacuum")
            if query:  # "autovacuum: VACUUM ANALYZE public.ledger_accounts" (empty while starting)
                targets.append(query.removeprefix("autovacuum: "))
        elif "audit_seal(" in query:
            kinds.add("audit_sealer")
        elif "usage_fold(" in query:
            kinds.add("usage_fold")
    return kinds, targets


def _counts(conn: Any) -> dict[str, int]:
    # Statistics are read from a fresh snapshot (a transaction caches them otherwise).
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(_COUNTS).fetchone()
    return {"autovacuums": int(row[0]), "autoanalyzes": int(row[1])}


class Sampler:
    """Samples background activity from start() to stop(); stop() returns what it saw."""

    def __init__(self, database_url: str, interval: float = 0.2) -> None:
        import psycopg

        self._conn = psycopg.connect(database_url, autocommit=True, application_name="qdata-bench-sampler")
        self._interval = interval
        self._stop = threading.Event()
        self._seen: Counter[str] = Counter()
        self._targets: Counter[str] = Counter()
        self._samples = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._before: dict[str, int] = {}

    def start(self) -> Sampler:
        self._before = _counts(self._conn)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            kinds, targets = _kinds(self._conn.execute(_ACTIVITY).fetchall())
            self._samples += 1
            self._seen.update(kinds)
            self._targets.update(targets)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        try:
            after = _counts(self._conn)
        finally:
            self._conn.close()
        return {
            "samples": self._samples,
            "interval_s": self._interval,
            # Samples in which each kind was running (x interval = seconds, roughly).
            "running_samples": dict(self._seen),
            "autovacuum_targets": dict(self._targets),
            "autovacuums_finished": after["autovacuums"] - self._before["autovacuums"],
            "autoanalyzes_finished": after["autoanalyzes"] - self._before["autoanalyzes"],
        }


def settle(
    database_urls: list[str], *, quiet_samples: int = 4, interval: float = 0.5, timeout: float = 120.0
) -> dict[str, Any]:
    """Brings the bench's databases to a steady state before a latency row; returns what it did.

    Runs VACUUM (ANALYZE) in each database (the rows the bench's earlier runs wrote are vacuumed
    and analyzed now, so autovacuum has nothing left to start on during the window), then waits
    until no autovacuum worker ran in quiet_samples consecutive samples (at most timeout seconds).
    """
    import psycopg

    started = time.monotonic()
    targets: Counter[str] = Counter()
    for url in database_urls:
        with psycopg.connect(url, autocommit=True, application_name="qdata-bench-sampler") as conn:
            conn.execute("VACUUM (ANALYZE)")
    vacuumed = time.monotonic() - started
    quiet = 0
    with psycopg.connect(database_urls[0], autocommit=True, application_name="qdata-bench-sampler") as conn:
        while quiet < quiet_samples and time.monotonic() - started < timeout:
            kinds, found = _kinds(conn.execute(_ACTIVITY).fetchall())
            targets.update(found)
            quiet = 0 if "autovacuum" in kinds else quiet + 1
            if quiet < quiet_samples:
                time.sleep(interval)
    return {
        "vacuum_analyze_s": round(vacuumed, 1),
        "waited_s": round(time.monotonic() - started, 1),
        "settled": quiet >= quiet_samples,
        "autovacuum_targets": dict(targets),
    }
