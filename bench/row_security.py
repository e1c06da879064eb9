"""python -m bench.row_security [--rounds N] [--duration S] [--calls N] [--concurrency C] [--out DIR]

What PostgreSQL row-level security costs on LedgerService.GetBalance and LedgerService.Charge.
One embedded PostgreSQL, migrated once; in alternating rounds (confined, owner, then owner,
confined, ...) a real server process (`python -m qdata_server serve`, one worker) serves either
as deployed, as a login role in qdata_service (row-level security applies), or as the owner
(the embedded superuser, which bypasses it; QDATA_ALLOW_INSECURE lets it serve). Each server
gets GetBalance(alice, USD) under h2load, then a burst of Charge calls (1 micro-unit each, a fresh
request_id per call) from a Python grpc.aio client. Prints each RPC's medians per mode and the
ratios confined / owner, and writes DIR/row-security-<timestamp>.json. Before measuring it checks,
connected as each role, that row_security_active('users') is true for the login role and false
for the owner, and while each server runs, that its connections use the role they should.
Exits 1 if a call fails or a check does not hold, 0 otherwise (2 for bad arguments). It asserts
no speed. Without h2load the GetBalance part is skipped (and said so).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import psycopg

from bench import h2load, procs, servers
from bench import report as report_file
from bench.report import fmt, median, ratio
from qdata.v1 import ledger_pb2, ledger_pb2_grpc, user_pb2, user_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
GET_BALANCE = "/qdata.v1.LedgerService/GetBalance"
MODES = ("confined", "owner")
# Each charging user gets this much before a burst (1 USD); a charge takes 1 micro-unit.
FUNDS_MICROS = 1_000_000
# Unmeasured Charge calls per concurrent caller before the timed burst.
CHARGE_WARMUP_PER_CALLER = 5


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.row_security",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=4, help="confined/owner pairs, order alternating; default 4")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measured GetBalance h2load run; default 8")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured GetBalance load first; default 1")
    p.add_argument("--connections", type=int, default=16, help="h2load -c for GetBalance; default 16")
    p.add_argument("--streams", type=int, default=8, help="h2load -m for GetBalance; default 8")
    p.add_argument("--calls", type=int, default=1500, help="timed Charge calls per server; default 1500")
    p.add_argument("--concurrency", type=int, default=16, help="Charge calls in flight (one user each); default 16")
    p.add_argument("--bcrypt-cost", type=int, default=4, help="QDATA_BCRYPT_COST of the server; default 4")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"directory for the JSON; default {RESULTS}")
    return p


# --- the roles ---------------------------------------------------------------------------------


def _scalar(conninfo: str, statement: str):
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(statement).fetchone()[0]


def check_roles(urls: dict[str, str]) -> dict[str, dict]:
    """Connected as each mode's role: row-level security must apply to the login, not to the owner."""
    found = {}
    for mode, url in urls.items():
        with psycopg.connect(url, autocommit=True) as conn:
            user, active = conn.execute("SELECT current_user, row_security_active('users')").fetchone()
        found[mode] = {"role": user, "row_security_active": active}
        print(f"  {mode:<9} serves as {user!r}: row_security_active('users') = {active}", flush=True)
    if found["confined"]["row_security_active"] is not True:
        raise RuntimeError(f"the confined role {found['confined']['role']!r} is not subject to row-level security")
    if found["owner"]["row_security_active"] is not False:
        raise RuntimeError(f"the owner role {found['owner']['role']!r} is subject to row-level security")
    if found["confined"]["role"] == found["owner"]["role"]:
        raise RuntimeError("the confined and the owner server would use the same role")
    return found


def check_server_role(owner_url: str, expected: str, timeout: float = 10.0) -> None:
    """The running server's pooled connections (application_name qdata) all use the expected role.

    Only one server runs at a time; the previous one's connections may take a moment to go.
    """
    deadline = time.monotonic() + timeout
    roles: set[str] = set()
    while time.monotonic() < deadline:
        with psycopg.connect(owner_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity"
                " WHERE application_name = 'qdata' AND datname = current_database()"
            ).fetchall()
        roles = {row[0] for row in rows}
        if roles == {expected}:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the server's connections use roles {sorted(roles)}, expected only {expected!r}")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(server, owner_url: str) -> dict[str, dict[int, float]]:
    """CPU seconds so far of the server's processes and of its PostgreSQL backends, by pid."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        backends = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'qdata' AND datname = current_database()"
            ).fetchall()
        ]
    return {
        "server": {pid: _cpu_seconds(pid) for pid in procs.descendants(server.pid)},
        "postgres": {pid: _cpu_seconds(pid) for pid in backends},
    }


def cpu_used(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds between two snapshots; a process that appeared in between counts from 0."""
    return {side: sum(seconds - before[side].get(pid, 0.0) for pid, seconds in after[side].items()) for side in after}


# --- GetBalance under h2load --------------------------------------------------------------------


def balance_target(server, address: str, uid: str) -> servers.Target:
    def validate(response: bytes) -> None:
        balance = ledger_pb2.GetBalanceResponse.FromString(response).balance
        if balance.user_id != uid or balance.currency_code != "USD":
            raise RuntimeError(f"GetBalance answered {balance.user_id!r} {balance.currency_code!r}")

    message = ledger_pb2.GetBalanceRequest(user_id=uid, currency_code="USD").SerializeToString()
    # Alice's balance does not change while it runs (the Charge burst uses other users), so
    # every answer has the same size.
    return servers.Target("GetBalance", server, address, GET_BALANCE, message, validate)


def measure_balance(exe: str, target: servers.Target, args, tmp: Path, tag: str) -> dict:
    load = h2load.Load(connections=args.connections, streams=args.streams, threads=1)
    result = h2load.measure(exe, target, duration=args.duration, warmup=args.warmup, load=load, tmp=tmp, tag=tag)
    if not result.ok:
        raise RuntimeError(
            f"GetBalance {tag}: {result.http_failures} HTTP failures, {result.grpc_errors} gRPC errors "
            f"in {result.done} requests"
        )
    return {"tag": tag, "duration_s": args.duration, **dataclasses.asdict(result)}


# --- Charge from a Python client ----------------------------------------------------------------


def _percentiles_ms(seconds: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles([s * 1000 for s in seconds], n=100, method="inclusive")
    return {"p50_ms": cuts[49], "p90_ms": cuts[89], "p99_ms": cuts[98], "mean_ms": statistics.fmean(seconds) * 1000}


async def _funded_users(channel: grpc.aio.Channel, count: int) -> list[str]:
    users = user_pb2_grpc.UserServiceStub(channel)
    ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
    ids = []
    for _ in range(count):
        name = "rls" + uuid.uuid4().hex[:12]
        created = await users.CreateUser(
            user_pb2.CreateUserRequest(
                request_id=str(uuid.uuid4()),
                email=f"{name}@example.com",
                username=name,
                password="correct horse battery staple",
            ),
            timeout=30,
        )
        await ledger.Deposit(
            ledger_pb2.DepositRequest(
                request_id=str(uuid.uuid4()),
                user_id=created.user.id,
                amount_micros=FUNDS_MICROS,
                currency_code="USD",
                source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
                description="row security bench",
            ),
            timeout=30,
        )
        ids.append(created.user.id)
    return ids


async def charge_burst(address: str, calls: int, concurrency: int) -> dict:
    """concurrency callers, each charging its own fresh user, until `calls` timed calls are done.

    Any failed call fails the burst; afterwards every user's balance must show its charges.
    """
    async with grpc.aio.insecure_channel(address) as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        ids = await _funded_users(channel, concurrency)
        charged = dict.fromkeys(ids, 0)

        async def charge(user_id: str) -> None:
            request_id = str(uuid.uuid4())
            response = await ledger.Charge(
                ledger_pb2.ChargeRequest(
                    request_id=request_id,
                    user_id=user_id,
                    amount_micros=1,
                    currency_code="USD",
                    description="row security bench",
                ),
                timeout=30,
            )
            tx = response.transaction
            if tx.request_id != request_id or tx.user_id != user_id or tx.amount_micros != 1:
                raise RuntimeError(f"Charge answered an unexpected transaction: {tx}")
            charged[user_id] += 1

        await asyncio.gather(*(charge(u) for u in ids for _ in range(CHARGE_WARMUP_PER_CALLER)))
        latencies: list[float] = []
        remaining = calls

        async def caller(user_id: str) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                await charge(user_id)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(caller(u) for u in ids))
        elapsed = time.perf_counter() - start

        for user_id, count in charged.items():
            balance = (
                await ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=user_id, currency_code="USD"), timeout=30)
            ).balance
            if balance.posted_micros != FUNDS_MICROS - count:
                raise RuntimeError(
                    f"user {user_id}: balance {balance.posted_micros}, expected {FUNDS_MICROS - count} "
                    f"after {count} charges"
                )
    return {
        "calls": len(latencies),
        "concurrency": concurrency,
        "seconds": elapsed,
        "calls_per_s": len(latencies) / elapsed,
        **_percentiles_ms(latencies),
    }


# --- rounds, summary, report --------------------------------------------------------------------


def run_mode(exe: str | None, args, tmp: Path, database_url: str, roles: dict, mode: str, number: int) -> dict:
    tag = f"r{number}-{mode}"
    server, address = servers.start_qdata(
        tmp, database_url, 1, bcrypt_cost=args.bcrypt_cost, serve_as_owner=mode == "owner"
    )
    try:
        check_server_role(database_url, roles[mode]["role"])
        alice = servers.user_id(address, "alice")
        row: dict = {"mode": mode, "round": number, "role": roles[mode]["role"]}
        if exe is not None:
            row["get_balance"] = measure_balance(exe, balance_target(server, address, alice), args, tmp, tag)
        before = cpu_snapshot(server, database_url)
        row["charge"] = asyncio.run(charge_burst(address, args.calls, args.concurrency))
        # Includes the burst's setup (creating and funding its users, a few warm-up calls) and the
        # final balance checks: a rough split of where the work goes, per timed call.
        used = cpu_used(before, cpu_snapshot(server, database_url))
        row["charge"]["cpu_ms_per_call"] = {side: seconds * 1000 / args.calls for side, seconds in used.items()}
        if not server.alive():
            raise RuntimeError(f"{server.name} died:\n{server.log_tail()}")
        row["peak_rss_kb"] = sum(server.peak_rss_kb().values())
    finally:
        server.stop()
    print(_line(row), flush=True)
    return row


def _line(row: dict) -> str:
    get, charge = row.get("get_balance"), row["charge"]
    cpu = charge["cpu_ms_per_call"]
    balance = (
        f"GetBalance {get['rps']:8.1f} rps  p50 {fmt(get['p50_ms']):>6}  p99 {fmt(get['p99_ms']):>6} ms   "
        if get
        else "GetBalance skipped   "
    )
    return (
        f"  round {row['round']} {row['mode']:<9}{balance}"
        f"Charge {charge['calls_per_s']:7.1f} calls/s  p50 {charge['p50_ms']:6.1f}  p99 {charge['p99_ms']:6.1f} ms"
        f"  CPU/call server {cpu['server']:.2f} postgres {cpu['postgres']:.2f} ms"
    )


# (report key, throughput field, unit) per RPC.
RPCS = (("get_balance", "rps", "rps"), ("charge", "calls_per_s", "calls/s"))


def summarize(runs: list[dict], rounds: int) -> dict:
    """Medians per mode and confined / owner ratios, per round (pair) and their median."""
    summary = {}
    for rpc, throughput, _unit in RPCS:
        if not all(rpc in r for r in runs):
            continue
        fields = (throughput, "p50_ms", "p99_ms")
        medians = {mode: {f: median([r[rpc][f] for r in runs if r["mode"] == mode]) for f in fields} for mode in MODES}
        per_round = []
        for number in range(1, rounds + 1):
            pair = {r["mode"]: r[rpc] for r in runs if r["round"] == number}
            per_round.append({f: ratio(pair["confined"][f], pair["owner"][f]) for f in fields})
        if rpc == "charge":
            for mode in MODES:
                for side in ("server", "postgres"):
                    medians[mode][f"cpu_ms_per_call_{side}"] = median(
                        [r[rpc]["cpu_ms_per_call"][side] for r in runs if r["mode"] == mode]
                    )
        summary[rpc] = {
            "median": medians,
            "ratio_confined_over_owner": {f: median([p[f] for p in per_round]) for f in fields},
            "ratio_per_round": per_round,
        }
    return summary


def _summary_text(summary: dict, rounds: int) -> str:
    lines = [f"\nconfined (row-level security) / owner (bypasses it), median of {rounds} round(s) [per round]:"]
    for rpc, throughput, unit in RPCS:
        if rpc not in summary:
            lines.append(f"  {rpc}: skipped")
            continue
        s = summary[rpc]
        med, ratios = s["median"], s["ratio_confined_over_owner"]

        def spread(field: str, s=s) -> str:
            return "[" + ", ".join(fmt(p[field], 3) for p in s["ratio_per_round"]) + "]"

        name = "GetBalance (h2load)" if rpc == "get_balance" else "Charge (grpc.aio client)"
        lines += [
            f"  {name}",
            f"    throughput   {fmt(ratios[throughput], 3):>6}  {spread(throughput):<24}"
            f"  {unit} {fmt(med['confined'][throughput])} / {fmt(med['owner'][throughput])}"
            "  (below 1: RLS costs throughput)",
            f"    latency p50  {fmt(ratios['p50_ms'], 3):>6}  {spread('p50_ms'):<24}"
            f"  ms {fmt(med['confined']['p50_ms'], 2)} / {fmt(med['owner']['p50_ms'], 2)}"
            "  (above 1: RLS costs latency)",
            f"    latency p99  {fmt(ratios['p99_ms'], 3):>6}  {spread('p99_ms'):<24}"
            f"  ms {fmt(med['confined']['p99_ms'], 2)} / {fmt(med['owner']['p99_ms'], 2)}",
        ]
        if rpc == "charge":
            lines += [
                f"    CPU per call (median): server {fmt(med['confined']['cpu_ms_per_call_server'], 2)} / "
                f"{fmt(med['owner']['cpu_ms_per_call_server'], 2)} ms, PostgreSQL backends "
                f"{fmt(med['confined']['cpu_ms_per_call_postgres'], 2)} / "
                f"{fmt(med['owner']['cpu_ms_per_call_postgres'], 2)} ms (confined / owner)"
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if min(args.rounds, args.calls, args.concurrency, args.connections, args.streams) < 1 or args.duration <= 0:
        print(
            "--rounds, --calls, --concurrency, --connections, --streams and --duration must be positive",
            file=sys.stderr,
        )
        return 2
    if args.duration != int(args.duration) or args.warmup != int(args.warmup):
        print("--duration and --warmup must be whole seconds (h2load -D takes no fractions)", file=sys.stderr)
        return 2
    if args.calls < 2:
        print("--calls must be at least 2 (percentiles)", file=sys.stderr)
        return 2
    exe = h2load.find()
    if exe is None:
        print(h2load.INSTALL_HINT, file=sys.stderr)
        print("skipping GetBalance; measuring Charge only", file=sys.stderr)

    started = datetime.datetime.now(datetime.UTC)
    report: dict = {
        "started": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "h2load": h2load.version(exe) if exe else None,
            "platform": platform.platform(),
        },
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "h2load": {"connections": args.connections, "streams": args.streams, "threads": 1},
            "charge_calls": args.calls,
            "charge_concurrency": args.concurrency,
            "charge_warmup_calls": CHARGE_WARMUP_PER_CALLER * args.concurrency,
            "workers": 1,
            "bcrypt_cost": args.bcrypt_cost,
        },
        "roles": None,
        "runs": [],
        "summary": None,
    }
    print(
        f"row security bench: {args.rounds} round(s) of confined/owner; GetBalance h2load -c {args.connections} "
        f"-m {args.streams} for {args.duration:g}s (after {args.warmup:g}s warm-up); Charge {args.calls} calls, "
        f"{args.concurrency} in flight; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="qdata-bench-rls-"))
    failure = None
    database = None
    try:
        from qdata_server.db import migrate

        print("starting the embedded PostgreSQL and migrating it as the owner ...", flush=True)
        database_url, database = servers.start_database(tmp)
        migrate.migrate(database_url)
        urls = {
            "confined": servers.serving_url(database_url),
            "owner": servers.serving_url(database_url, serve_as_owner=True),
        }
        report["roles"] = check_roles(urls)
        for number in range(1, args.rounds + 1):
            order = MODES if number % 2 else tuple(reversed(MODES))
            for mode in order:
                report["runs"].append(run_mode(exe, args, tmp, database_url, report["roles"], mode, number))
        report["summary"] = summarize(report["runs"], args.rounds)
        print(_summary_text(report["summary"], args.rounds), flush=True)
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
    report_file.save(report, args.out, f"row-security-{started.strftime('%Y%m%dT%H%M%SZ')}", failure)
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
