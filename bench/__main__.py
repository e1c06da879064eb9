"""python -m bench --suite table [--quick] [--rounds N] [--duration S]     (make bench: issue 13's table)
   python -m bench [--duration S] [--connections N] [--streams M] [--workers W[,W...]] [--out DIR]
   python -m bench --suite chat [--small-messages N] [--big-messages N] [--appends N] [--reads N]
   python -m bench --suite chat-branches [--small-branch N] [--big-branch N] [--reads N]
   python -m bench --suite usage [--records N] [--batch-size N] [--big-records N] [--small-records N]

Measures qdata against a reference served in the same run (see bench/README.md) and prints
ratios: qdata GetUser versus a bare grpc.aio echo, both under the same h2load load, in
alternating rounds (A B, then B A, ...) so drift on a shared machine hits both alike. Writes
everything to DIR/<timestamp>.json. Exits 2 if h2load is missing, 1 if a measurement is invalid
(HTTP or gRPC errors under load, a server that failed), 0 otherwise. It asserts no speed:
reading the ratios is for people and for comparisons between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from bench import h2load
from bench import report as report_file
from bench.report import fmt, median, ratio

RESULTS = Path(__file__).resolve().parent / "results"


def _workers(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W or W,W,..., got {text!r}") from None
    if not values or any(not 1 <= v <= 64 for v in values):
        raise argparse.ArgumentTypeError("worker counts must be between 1 and 64")
    return values


def _row_keys(text: str) -> list[str]:
    """--rows: a comma-separated list of the table's row keys (bench/table.py ROWS)."""
    from bench.table import ROWS

    known = [spec["key"] for spec in ROWS]
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in known]
    if not keys or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown row(s): {', '.join(unknown) or repr(text)}; known: {', '.join(known)}"
        )
    return list(dict.fromkeys(keys))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured h2load run (-D); default 10")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load before each run; default 1")
    p.add_argument("--rounds", type=int, default=2, help="reference/qdata pairs, order alternating; default 2")
    p.add_argument("--connections", type=int, default=16, help="h2load -c; default 16")
    p.add_argument("--streams", type=int, default=8, help="h2load -m, concurrent streams per connection; default 8")
    p.add_argument(
        "--workers",
        type=_workers,
        default=[1],
        help="server worker processes, e.g. 1 or 1,2 (both servers use the same count); default 1",
    )
    p.add_argument(
        "--auth-duration",
        type=float,
        default=None,
        help="seconds of the Authenticate run; default min(duration, 5); 0 skips it",
    )
    p.add_argument("--bcrypt-cost", type=int, default=4, help="QDATA_BCRYPT_COST of the server; default 4")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"directory for the JSON; default {RESULTS}")
    p.add_argument(
        "--suite",
        choices=["default", "table", "chat", "chat-branches", "usage"],
        default="default",
        help="default: GetUser and Authenticate against the reference (h2load); table: every row of the "
        "performance table, each against its reference, with CPU per call (see bench/table.py); chat: "
        "ChatService append and last-50 cost in a small versus a big session (see bench/chat.py); "
        "chat-branches: pages of a branch of 100 versus 20,000 messages right after appending them "
        "(see bench/chat_branches.py); "
        "usage: RecordUsage one by one "
        "versus RecordUsageBatch, and GetModelStats over 1M versus 1k records (see bench/usage.py)",
    )
    table = p.add_argument_group("--suite table")
    table.add_argument("--quick", action="store_true", help="a sanity run: 1 round of 3 s runs")
    table.add_argument(
        "--rows",
        type=_row_keys,
        default=None,
        help="measure only these rows of the table, comma-separated keys (e.g. get_balance_w2,authenticate); "
        "default every row. A partial run is saved as table-rows-<time>.json, which bench.readme never renders",
    )
    table.add_argument("--pgbench-scale", type=int, default=10, help="pgbench -i -s; default 10")
    table.add_argument("--pgbench-clients", type=int, default=8, help="pgbench -c; default 8")
    table.add_argument(
        "--generator-processes", type=int, default=2, help="processes of the grpc.aio generator; default 2"
    )
    table.add_argument(
        "--generator-concurrency", type=int, default=8, help="calls in flight per generator process; default 8"
    )
    table.add_argument(
        "--batch-concurrency", type=int, default=2, help="RecordUsageBatch calls in flight per process; default 2"
    )
    table.add_argument("--cold-accounts", type=int, default=1000, help="accounts of the cold Charge rows; default 1000")
    table.add_argument("--usage-batch", type=int, default=100, help="records per RecordUsageBatch; default 100")
    table.add_argument(
        "--budget-accounts",
        type=int,
        default=200,
        help="accounts of each of the budget rows' 6 sets (Charge, RecordUsage x 0, 1, 3 budgets); default 200",
    )
    chat = p.add_argument_group("--suite chat")
    chat.add_argument("--small-messages", type=int, default=1_000, help="messages in the small session; default 1000")
    chat.add_argument("--big-messages", type=int, default=100_000, help="messages in the big session; default 100000")
    chat.add_argument("--appends", type=int, default=400, help="timed appends per session; default 400")
    chat.add_argument(
        "--reads", type=int, default=400, help="timed reads of each page per session (chat-branches too); default 400"
    )
    branches = p.add_argument_group("--suite chat-branches")
    branches.add_argument("--small-branch", type=int, default=100, help="messages of the small branch; default 100")
    branches.add_argument("--big-branch", type=int, default=20_000, help="messages of the big branch; default 20000")
    usage = p.add_argument_group("--suite usage")
    usage.add_argument("--records", type=int, default=3000, help="records per recording run and mode; default 3000")
    usage.add_argument("--concurrency", type=int, default=16, help="RecordUsage calls in flight; default 16")
    usage.add_argument("--batch-size", type=int, default=500, help="records per RecordUsageBatch; default 500")
    usage.add_argument("--big-records", type=int, default=1_000_000, help="records of the big model; default 1000000")
    usage.add_argument("--small-records", type=int, default=1_000, help="records of the small model; default 1000")
    usage.add_argument("--stats-calls", type=int, default=200, help="timed GetModelStats per model and window")
    return p


# Authenticate runs few streams: all of them log in the same user, and every attempt is counted
# against the lockout threshold (5 by default) before its password is checked.
AUTH_LOAD = h2load.Load(connections=2, streams=2, threads=1)


def _measure(exe: str, target, *, duration: float, warmup: float, load: h2load.Load, tmp: Path, tag: str) -> dict:
    result = h2load.measure(exe, target, duration=duration, warmup=warmup, load=load, tmp=tmp, tag=tag)
    row = {
        "label": target.label,
        "tag": tag,
        "load": dataclasses.asdict(load),
        "duration_s": duration,
        **dataclasses.asdict(result),
        "ok": result.ok,
    }
    print(_row(row), flush=True)
    return row


def _section(exe: str, args, tmp: Path, database_url: str, workers: int) -> dict:
    from bench import servers
    from qdata_server.seed import SAMPLE_PASSWORD

    load = h2load.Load(connections=args.connections, streams=args.streams, threads=1)
    print(f"\nworkers={workers}: starting the reference echo and qdata ...", flush=True)
    with contextlib.ExitStack() as stack:
        echo_server, echo_address = servers.start_echo(tmp, workers)
        stack.callback(echo_server.stop)
        qdata_server, qdata_address = servers.start_qdata(tmp, database_url, workers, bcrypt_cost=args.bcrypt_cost)
        stack.callback(qdata_server.stop)

        uid = servers.user_id(qdata_address, "alice")
        get_user = servers.get_user_target(qdata_server, qdata_address, uid)
        # The echo gets the very bytes GetUser gets, and sends them back.
        reference = servers.echo_target(echo_server, echo_address, get_user.message)

        print(_header(), flush=True)
        rounds = []
        for number in range(1, args.rounds + 1):
            order = (reference, get_user) if number % 2 else (get_user, reference)
            runs = {}
            for target in order:
                tag = f"w{workers}-r{number}-{'ref' if target is reference else 'getuser'}"
                runs[target.label] = _measure(
                    exe, target, duration=args.duration, warmup=args.warmup, load=load, tmp=tmp, tag=tag
                )
            ref, got = runs[reference.label], runs[get_user.label]
            rounds.append(
                {
                    "round": number,
                    "reference": ref,
                    "qdata_get_user": got,
                    "rps_ratio": ratio(got["rps"], ref["rps"]),
                    "mean_latency_ratio": ratio(got["mean_ms"], ref["mean_ms"]),
                    "p50_latency_ratio": ratio(got["p50_ms"], ref["p50_ms"]),
                    "p99_latency_ratio": ratio(got["p99_ms"], ref["p99_ms"]),
                }
            )

        auth = None
        auth_duration = min(args.duration, 5.0) if args.auth_duration is None else args.auth_duration
        if auth_duration > 0:
            target = servers.authenticate_target(qdata_server, qdata_address, "bob", SAMPLE_PASSWORD)
            auth = _measure(
                exe,
                target,
                duration=auth_duration,
                warmup=min(args.warmup, 1.0),
                load=AUTH_LOAD,
                tmp=tmp,
                tag=f"w{workers}-auth",
            )
            auth["bcrypt_cost"] = args.bcrypt_cost

        # Peaks over the whole run, read while the processes still live.
        ref_peaks, qdata_peaks = echo_server.peak_rss_kb(), qdata_server.peak_rss_kb()

    ref_kb, qdata_kb = sum(ref_peaks.values()), sum(qdata_peaks.values())
    return {
        "workers": workers,
        "rounds": rounds,
        "authenticate": auth,
        "rps_ref": median([r["reference"]["rps"] for r in rounds]),
        "rps_qdata": median([r["qdata_get_user"]["rps"] for r in rounds]),
        "rps_ratio": median([r["rps_ratio"] for r in rounds]),
        "mean_latency_ratio": median([r["mean_latency_ratio"] for r in rounds]),
        "p50_latency_ratio": median([r["p50_latency_ratio"] for r in rounds]),
        "p99_latency_ratio": median([r["p99_latency_ratio"] for r in rounds]),
        "peak_rss_kb_ref": ref_kb,
        "peak_rss_kb_qdata": qdata_kb,
        "peak_rss_kb_ref_by_pid": ref_peaks,
        "peak_rss_kb_qdata_by_pid": qdata_peaks,
        "memory_ratio": ratio(qdata_kb, ref_kb),
    }


_COLUMNS = ("run", "rps", "mean ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "requests", "errors")


def _header() -> str:
    return f"  {_COLUMNS[0]:<26}" + "".join(f"{c:>10}" for c in _COLUMNS[1:])


def _row(row: dict) -> str:
    errors = row["failed"] + row["errored"] + row["timeout"] + row["non_2xx"] + (row["grpc_errors"] or 0)
    return (
        f"  {row['label'] + ' ' + row['tag'].split('-')[1]:<26}{row['rps']:>10.1f}{fmt(row['mean_ms']):>10}"
        f"{fmt(row['p50_ms']):>10}{fmt(row['p90_ms']):>10}{fmt(row['p99_ms']):>10}{fmt(row['max_ms']):>10}"
        f"{row['done']:>10}{errors:>10}"
    )


def _summary(section: dict) -> str:
    rounds = section["rounds"]

    def spread(key: str) -> str:
        return "[" + ", ".join(fmt(r[key], 2) for r in rounds) + "]"

    mib = 1024
    lines = [
        f"  qdata / reference, median of {len(rounds)} round(s) [per round]:",
        f"    throughput    {fmt(section['rps_ratio'], 3):>6}  {spread('rps_ratio'):<14}"
        f"  rps {fmt(section['rps_qdata'])} / {fmt(section['rps_ref'])}  (higher is better; 1 = bare grpc.aio)",
        f"    latency mean  {fmt(section['mean_latency_ratio'], 2):>6}  {spread('mean_latency_ratio'):<14}"
        "  (lower is better; 1 = bare grpc.aio)",
        f"    latency p50   {fmt(section['p50_latency_ratio'], 2):>6}  {spread('p50_latency_ratio'):<14}",
        f"    latency p99   {fmt(section['p99_latency_ratio'], 2):>6}  {spread('p99_latency_ratio'):<14}",
        f"    peak RSS      {fmt(section['memory_ratio'], 2):>6}  "
        f"{' ' * 14}  {section['peak_rss_kb_qdata'] / mib:.1f} MiB / {section['peak_rss_kb_ref'] / mib:.1f} MiB"
        f" (VmHWM summed over {len(section['peak_rss_kb_qdata_by_pid'])} / "
        f"{len(section['peak_rss_kb_ref_by_pid'])} process(es))",
    ]
    auth = section["authenticate"]
    if auth is not None:
        cost = auth["bcrypt_cost"]
        lines += [
            f"  qdata Authenticate, reported apart and not compared with the reference: {auth['rps']:.1f} rps, "
            f"mean {auth['mean_ms']:.1f} ms at h2load -c {AUTH_LOAD.connections} -m {AUTH_LOAD.streams}.",
            f"    CPU bound by design: one bcrypt check per call, here at cost {cost} (production's 12 is "
            f"{2 ** (12 - cost)}x the work), and every call updates the same user's row twice.",
        ]
    return "\n".join(lines)


def _runs(report: dict) -> list[dict]:
    runs = []
    for section in report["sections"]:
        for pair in section["rounds"]:
            runs += [pair["reference"], pair["qdata_get_user"]]
        if section["authenticate"] is not None:
            runs.append(section["authenticate"])
    return runs


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.suite == "table":
        from bench import table

        return table.run(args)
    if args.suite == "chat":
        from bench import chat

        return chat.run(args)
    if args.suite == "chat-branches":
        from bench import chat_branches

        return chat_branches.run(args)
    if args.suite == "usage":
        from bench import usage

        return usage.run(args)
    exe = h2load.find()
    if exe is None:
        print(h2load.INSTALL_HINT, file=sys.stderr)
        return 2
    if args.duration <= 0 or args.rounds < 1 or args.connections < 1 or args.streams < 1:
        print("--duration, --rounds, --connections and --streams must be positive", file=sys.stderr)
        return 2

    import grpc

    started = datetime.datetime.now(datetime.UTC)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "h2load": h2load.version(exe),
            "platform": platform.platform(),
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "h2load": {"connections": args.connections, "streams": args.streams, "threads": 1},
            "workers": args.workers,
            "bcrypt_cost": args.bcrypt_cost,
        },
        "sections": [],
    }
    print(
        f"qdata bench: h2load -c {args.connections} -m {args.streams} -t 1, {args.duration:g}s per run "
        f"(after {args.warmup:g}s warm-up), {args.rounds} round(s); {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(
            "note: other work keeps this machine busy; absolute numbers will drift more than the ratios "
            "(more --rounds narrows them)",
            flush=True,
        )
    tmp = Path(tempfile.mkdtemp(prefix="qdata-bench-"))
    failure = None
    database = None
    try:
        from bench import servers

        print("starting the embedded PostgreSQL ...", flush=True)
        database_url, database = servers.start_database(tmp)
        for workers in args.workers:
            section = _section(exe, args, tmp, database_url, workers)
            report["sections"].append(section)
            print(_summary(section), flush=True)
    except Exception as exc:  # the report is still written, and everything started is stopped
        failure = f"{type(exc).__name__}: {exc}"
        print(f"\nbench failed: {failure}", file=sys.stderr)
    except KeyboardInterrupt:
        failure = "interrupted"
        print("\ninterrupted", file=sys.stderr)
    finally:
        if database is not None:
            database.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    invalid = [run["tag"] for run in _runs(report) if not run["ok"]]
    report["invalid_runs"] = invalid
    report_file.save(report, args.out, started.strftime("%Y%m%dT%H%M%SZ"), failure)
    if invalid:
        print(f"invalid runs (HTTP or gRPC errors under load): {', '.join(invalid)}", file=sys.stderr)
    return 1 if failure or invalid else 0


if __name__ == "__main__":
    sys.exit(main())
