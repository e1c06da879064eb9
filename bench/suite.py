"""The frame of a bench suite that starts its own PostgreSQL and qdata (chat, chat-branches, usage).

`run_suite` builds the report's common part, runs the suite's body, turns an exception into the
run's failure, stops what the body started, writes the results file and returns the exit status.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report as report_file


@dataclasses.dataclass
class SuiteRun:
    """What a suite's body fills in: the report, its failure if any, and the servers it started."""

    suite: str
    report: dict[str, Any]
    tmp: Path
    failure: str | None = None
    database: Any = None
    qdata: Any = None

    def start(self, *, workers: int, bcrypt_cost: int) -> tuple[str, str]:
        """Starts the embedded PostgreSQL and qdata (stopped by run_suite); returns their URL and address."""
        from bench import servers

        print("starting the embedded PostgreSQL and qdata ...", flush=True)
        database_url, self.database = servers.start_database(self.tmp)
        self.qdata, address = servers.start_qdata(self.tmp, database_url, workers, bcrypt_cost=bcrypt_cost)
        return database_url, address


def run_suite(suite: str, settings: dict[str, Any], out: Path, body: Callable[[SuiteRun], None]) -> int:
    """Runs body in a fresh SuiteRun; returns 0, or 1 when it failed (the results file says why)."""
    started = datetime.datetime.now(datetime.UTC)
    run = SuiteRun(
        suite=suite,
        report={
            "suite": suite,
            "started": started.isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_at_start": os.getloadavg(),
                "python": platform.python_version(),
            },
            "settings": settings,
        },
        tmp=Path(tempfile.mkdtemp(prefix=f"qdata-bench-{suite}-")),
    )
    try:
        body(run)
    except Exception as exc:
        run.failure = f"{type(exc).__name__}: {exc}"
        print(f"\nbench failed: {run.failure}", file=sys.stderr)
    except KeyboardInterrupt:
        run.failure = "interrupted"
    finally:
        if run.qdata is not None:
            run.qdata.stop()
        if run.database is not None:
            run.database.cleanup()
        shutil.rmtree(run.tmp, ignore_errors=True)
    report_file.save(run.report, out, f"{suite}-{started.strftime('%Y%m%dT%H%M%SZ')}", run.failure)
    if run.failure:
        print(f"{suite} bench failed: {run.failure}", file=sys.stderr)
    return 1 if run.failure else 0
