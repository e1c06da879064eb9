"""`python -m bench --suite table` (`make bench`): issue 13's performance table, every row in one run.

Each row is a qdata figure and its reference, measured against one embedded PostgreSQL in the same
run, in alternating rounds (qdata then reference, then reference then qdata, ...), so drift on a
shared machine hits both alike; the ratio is taken per round and the summary shows the median and
every round's value. Every answer is checked: h2load's by the size of the DATA it received (see
bench/h2load.py), the Python generator's one by one (see bench/loadgen.py), pgbench's by its own
count of failed transactions. A run with any error is invalid and the bench exits 1.

Servers, all started once and idle while another is measured:
- qdata with 2 workers (the default process model), metrics off: every row but the two below;
- qdata with 1 worker: "GetBalance, 1 worker";
- qdata with 2 workers and QDATA_METRICS_LISTEN_ADDRESS set: the cost of metrics (issue 12);
- the bare grpc.aio echo (bench/echo.py) with 2 workers and with 1.
The budget rows (issue 16) run on the first server, each over its own set of accounts: Charge and
RecordUsage with 1 and with 3 applicable budgets, each against the same load on accounts with none
(see BUDGET_SETS and _budgets_for).
All qdata servers run QDATA_BCRYPT_COST=8 (the Authenticate row's cost) and QDATA_LOG_LEVEL=WARNING.

CPU per call: utime+stime from /proc of the measured server's processes, of the whole PostgreSQL
cluster (the postmaster and everything below it, backends that exited included; see bench/cpu.py)
and of this process's reaped children (h2load, pgbench, the generator's processes, the bcrypt
processes) over the measured window, divided by the calls (records for RecordUsage rows) done in
it. The bench asserts no speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import background, cpu, h2load, loadgen, pgbench, procs, servers
from bench import report as report_file
from bench.report import median, ratio

BCRYPT_COST = 8
HOT_ACCOUNTS = 4
USAGE_MODEL = "bench/table"
GET_BALANCE = "/qdata.v1.LedgerService/GetBalance"
PGBENCH_DATABASE = "pgbench_tpcb"
# A generator figure at or above this share of the generator's own ceiling is flagged.
NEAR_CEILING = 0.7

# The table's rows: key, the qdata measurement, its reference measurement (None: the ratio is the
# measurement's own p99 / p50; otherwise qdata's value / the reference's), and the goal.
ROWS: tuple[dict[str, Any], ...] = (
    {"key": "charge_cold", "qdata": "charge_cold", "ref": "pgbench", "goal": ">= 0.6"},
    {"key": "charge_hot", "qdata": "charge_hot", "ref": "charge_cold", "goal": ">= 0.5"},
    {"key": "get_balance_w2", "qdata": "get_balance_w2", "ref": "echo_w2", "goal": ">= 0.7"},
    {"key": "get_balance_w1", "qdata": "get_balance_w1", "ref": "echo_w1", "goal": ">= 0.7"},
    {"key": "usage_batch", "qdata": "usage_batch", "ref": "usage_single", "goal": ">= 20x"},
    {"key": "authenticate", "qdata": "authenticate", "ref": "checkpw", "goal": ">= 0.9"},
    {"key": "get_balance_tail", "qdata": "get_balance_half", "ref": None, "goal": "<= 3"},
    {"key": "get_user", "qdata": "get_user_w2", "ref": "echo_w2_get_user", "goal": ""},
    {"key": "metrics_get_balance", "qdata": "get_balance_metrics", "ref": "get_balance_w2", "goal": ""},
    {"key": "metrics_charge", "qdata": "charge_metrics", "ref": "charge_cold", "goal": ""},
    {"key": "charge_budgets_1", "qdata": "charge_budgets_1", "ref": "charge_budgets_0", "goal": ""},
    {"key": "charge_budgets_3", "qdata": "charge_budgets_3", "ref": "charge_budgets_0", "goal": ""},
    {"key": "usage_budgets_1", "qdata": "usage_budgets_1", "ref": "usage_budgets_0", "goal": ""},
    {"key": "usage_budgets_3", "qdata": "usage_budgets_3", "ref": "usage_budgets_0", "goal": ""},
)

# The budget rows' measurements: name -> (generator kind, budgets on each of its accounts). Each has
# its own set of --budget-accounts funded accounts, so no two share an account, a budget or a
# rollup row; the budgets are made through BudgetService before the first round.
BUDGET_SETS = {
    "charge_budgets_0": ("charge", 0),
    "charge_budgets_1": ("charge", 1),
    "charge_budgets_3": ("charge", 3),
    "usage_budgets_0": ("record_usage", 0),
    "usage_budgets_1": ("record_usage", 1),
    "usage_budgets_3": ("record_usage", 3),
}
# Far above what any account can spend (each holds 1,000 USD): no call is ever refused and no
# threshold is ever reached, so the rows measure the check and the rollup, not rejections or alerts.
BUDGET_LIMIT_MICROS = 10**12
BUDGET_THRESHOLDS = (50, 80, 100)

# Each row with a reference is a pair measured in its own alternating order every round (so
# Charge cold is measured three times a round: against pgbench, hot and metrics-on). The single
# measurements close a round; get_balance_half needs the round's GetBalance peak.
SINGLES = ("get_balance_half", "generator_ceiling")


def selected_rows(keys: list[str] | None) -> tuple[dict[str, Any], ...]:
    """The rows a run measures: every row, or those named by --rows (in the table's order).

    The p99 / p50 row measures at half of the "GetBalance, 2 workers" peak, so naming it brings
    that row along.
    """
    if not keys:
        return ROWS
    wanted = set(keys)
    if "get_balance_tail" in wanted:
        wanted.add("get_balance_w2")
    return tuple(spec for spec in ROWS if spec["key"] in wanted)


def singles_for(rows: tuple[dict[str, Any], ...]) -> tuple[str, ...]:
    """The single measurements a round of these rows needs (the generator's ceiling always)."""
    return tuple(s for s in SINGLES if s != "get_balance_half" or any(r["key"] == "get_balance_tail" for r in rows))


# What each measurement is, for the report: (label, unit of its value, what "calls" counts).
LABELS = {
    "charge_cold": ("Charge, 1,000 cold accounts", "tps", "calls"),
    "charge_hot": ("Charge, 4 hot accounts", "tps", "calls"),
    "pgbench": ("pgbench TPC-B-like, 8 clients", "tps", "transactions"),
    "get_balance_w2": ("GetBalance, 2 workers", "rps", "calls"),
    "get_balance_w1": ("GetBalance, 1 worker", "rps", "calls"),
    "echo_w2": ("bare grpc.aio echo, 2 workers", "rps", "calls"),
    "echo_w1": ("bare grpc.aio echo, 1 worker", "rps", "calls"),
    "usage_batch": ("RecordUsageBatch (100 per batch)", "records/s", "records"),
    "usage_single": ("RecordUsage one per call", "records/s", "records"),
    "authenticate": ("Authenticate, bcrypt cost 8", "rps", "calls"),
    "checkpw": ("bcrypt.checkpw at cost 8 in 2 processes", "checks/s", "checks"),
    "get_balance_half": ("GetBalance at half of peak (2 workers)", "rps", "calls"),
    "get_user_w2": ("GetUser by id, 2 workers", "rps", "calls"),
    "echo_w2_get_user": ("bare grpc.aio echo of GetUser's bytes, 2 workers", "rps", "calls"),
    "get_balance_metrics": ("GetBalance, 2 workers, metrics on", "rps", "calls"),
    "charge_metrics": ("Charge, 1,000 cold accounts, metrics on", "tps", "calls"),
    "generator_ceiling": ("the Python generator against the echo, 2 workers", "calls/s", "calls"),
    "charge_budgets_0": ("Charge, accounts without a budget", "tps", "calls"),
    "charge_budgets_1": ("Charge, 1 budget per account", "tps", "calls"),
    "charge_budgets_3": ("Charge, 3 budgets per account", "tps", "calls"),
    "usage_budgets_0": ("RecordUsage one per call, accounts without a budget", "records/s", "records"),
    "usage_budgets_1": ("RecordUsage one per call, 1 budget per account", "records/s", "records"),
    "usage_budgets_3": ("RecordUsage one per call, 3 budgets per account", "records/s", "records"),
}


@dataclasses.dataclass
class Env:
    """Everything a measurement needs: the servers, the users, the settings."""

    args: Any
    tmp: Path
    h2load: str
    database_url: str
    postmaster: int
    pgbench_exe: Path
    servers: dict[str, Any]  # name -> (Server, address)
    cold: list[str]
    hot: list[str]
    alice: str
    alice_get_user: Any = None  # the GetUser target, whose bytes echo_w2_get_user echoes
    peak_get_balance: float | None = None
    pgbench_made: bool = False
    # The budget rows' accounts: measurement name (BUDGET_SETS) -> its users.
    budget_accounts: dict[str, list[str]] = dataclasses.field(default_factory=dict)


# --- CPU windows ---------------------------------------------------------------------------------


def _children_cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _reading(env: Env, server: Any | None) -> dict[str, float]:
    found = {
        "postgres": cpu.tree_seconds(procs.descendants(env.postmaster)),
        "load_generator": _children_cpu_s(),
    }
    if server is not None:
        found["server"] = cpu.tree_seconds(procs.descendants(server.pid))
    return found


# --- measurements --------------------------------------------------------------------------------


def _h2load_row(env: Env, target: servers.Target, load: h2load.Load, tag: str, duration: int) -> dict[str, Any]:
    body = h2load.write_frame(env.tmp / f"{tag}.body", target.message)
    if env.args.warmup > 0:
        h2load.run(env.h2load, target.url, body, duration=env.args.warmup, load=load)
    expected = len(h2load.grpc_frame(target.probe()))
    sampler = background.Sampler(env.database_url).start()
    before = _reading(env, target.server)
    log_file = env.tmp / f"{tag}.log"
    result = h2load.run(env.h2load, target.url, body, duration=duration, load=load, log_file=log_file)
    used = cpu.difference(before, _reading(env, target.server))
    activity = sampler.stop()
    h2load.check_payload(result, expected, tolerance=target.size_tolerance)
    if not target.server.alive():
        raise RuntimeError(f"{target.server.name} died under load:\n{target.server.log_tail()}")
    return {
        "value": result.rps,
        "calls": result.done,
        "ok": result.ok,
        "errors": result.http_failures + (result.grpc_errors or 0),
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "mean_ms": result.mean_ms,
        "generator": "h2load",
        "load": dataclasses.asdict(load),
        "cpu_s": used,
        "cpu_ms_per_call": cpu.per_call_ms(used, result.done),
        "raw": dataclasses.asdict(result),
        "background": activity,
        "by_second": h2load.by_second(log_file),
    }


def _generator_row(env: Env, spec: loadgen.Spec, server: Any) -> dict[str, Any]:
    started = loadgen.start(spec)
    try:
        before = _reading(env, server)
        result = loadgen.finish(spec, started, env.args.duration)
        used = cpu.difference(before, _reading(env, server))
        # The processes' own reading of the window: the kernel's total for a reaped child would
        # include its start-up and warm-up.
        used["load_generator"] = result.cpu_s
    finally:
        for process, _pipe in started:
            if process.is_alive():
                process.terminate()
    if not server.alive():
        raise RuntimeError(f"{server.name} died under load:\n{server.log_tail()}")
    return {
        "value": result.items_per_s,
        "calls": result.items,
        "rpcs": result.calls,
        "ok": result.ok,
        "errors": result.errors,
        "first_error": result.first_error,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "mean_ms": result.mean_ms,
        "generator": f"grpc.aio, {spec.processes} processes x {spec.concurrency} in flight",
        "cpu_s": used,
        "cpu_ms_per_call": cpu.per_call_ms(used, result.items),
        "raw": dataclasses.asdict(result),
    }


def _pgbench_row(env: Env) -> dict[str, Any]:
    before = _reading(env, None)
    result = pgbench.run(
        env.pgbench_exe, env.database_url, PGBENCH_DATABASE, clients=env.args.pgbench_clients, seconds=env.args.duration
    )
    time.sleep(0.2)  # let the postmaster reap the exiting backends (their CPU moves to its cutime)
    used = cpu.difference(before, _reading(env, None))
    return {
        "value": result.tps,
        "calls": result.transactions,
        "ok": result.ok,
        "errors": result.failed,
        "p50_ms": None,
        "p99_ms": None,
        "mean_ms": result.latency_avg_ms,
        "generator": f"pgbench -c {result.clients} -j 2 (scale {env.args.pgbench_scale})",
        "cpu_s": used,
        "cpu_ms_per_call": cpu.per_call_ms(used, result.transactions),
        "raw": dataclasses.asdict(result),
    }


def _checkpw_worker(cost: int, seconds: float, pipe: Any) -> None:
    import bcrypt

    password = b"correct horse battery staple"
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=cost))
    pipe.send("ready")
    pipe.recv()
    checks, deadline, cpu_started = 0, time.monotonic() + seconds, time.process_time()
    while time.monotonic() < deadline:
        if not bcrypt.checkpw(password, hashed):
            pipe.send({"failed": "checkpw rejected the right password"})
            return
        checks += 1
    pipe.send({"checks": checks, "cpu_s": time.process_time() - cpu_started})


def _checkpw_row(env: Env, processes: int = 2) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    started = []
    for _ in range(processes):
        parent, child = context.Pipe()
        process = context.Process(target=_checkpw_worker, args=(BCRYPT_COST, env.args.duration, child), daemon=True)
        process.start()
        started.append((process, parent))
    for _process, pipe in started:
        if pipe.recv() != "ready":
            raise RuntimeError("a bcrypt process failed")
    before = _reading(env, None)
    begin = time.monotonic()
    for _process, pipe in started:
        pipe.send("go")
    parts = [pipe.recv() for _process, pipe in started]
    elapsed = time.monotonic() - begin
    for process, _pipe in started:
        process.join(30)
    used = cpu.difference(before, _reading(env, None))
    # The bcrypt processes are the measured work here (their own reading of the window).
    used["load_generator"] = sum(p.get("cpu_s", 0.0) for p in parts)
    failed = [p["failed"] for p in parts if "failed" in p]
    checks = sum(p.get("checks", 0) for p in parts)
    return {
        "value": checks / elapsed,
        "calls": checks,
        "ok": not failed and checks > 0,
        "errors": len(failed),
        "p50_ms": None,
        "p99_ms": None,
        "mean_ms": None,
        "generator": f"{processes} processes",
        "cpu_s": used,
        "cpu_ms_per_call": cpu.per_call_ms(used, checks),
    }


def _balance_target(server: Any, address: str, uid: str) -> servers.Target:
    from qdata.v1 import ledger_pb2

    def validate(response: bytes) -> None:
        balance = ledger_pb2.GetBalanceResponse.FromString(response).balance
        if balance.user_id != uid or balance.currency_code != "USD":
            raise RuntimeError(f"GetBalance answered {balance.user_id!r} {balance.currency_code!r}")

    message = ledger_pb2.GetBalanceRequest(user_id=uid, currency_code="USD").SerializeToString()
    # Alice's balance does not change during the run (the charges go to the bench's own users).
    return servers.Target("GetBalance", server, address, GET_BALANCE, message, validate)


def _bench_databases(env: Env) -> list[str]:
    """The owner's URLs of the bench's databases: qdata's, and pgbench's when it was made."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    urls = [env.database_url]
    if env.pgbench_made:
        params = conninfo_to_dict(env.database_url)
        params["dbname"] = PGBENCH_DATABASE
        urls.append(make_conninfo(**params))
    return urls


def measure(env: Env, name: str, tag: str) -> dict[str, Any]:
    """One measured run of the named measurement; returns its row (value, calls, CPU, checks)."""
    args = env.args
    main, main_address = env.servers["qdata_w2"]
    gen = {"processes": args.generator_processes, "concurrency": args.generator_concurrency}
    load = h2load.Load(connections=args.connections, streams=args.streams, threads=1)
    if name in ("charge_cold", "charge_hot", "charge_metrics"):
        server, address = env.servers["qdata_metrics" if name == "charge_metrics" else "qdata_w2"]
        users = env.hot if name == "charge_hot" else env.cold
        row = _generator_row(env, loadgen.Spec("charge", address, users=users, **gen), server)
    elif name == "pgbench":
        row = _pgbench_row(env)
    elif name in ("get_balance_w2", "get_balance_w1", "get_balance_metrics"):
        key = {"get_balance_w2": "qdata_w2", "get_balance_w1": "qdata_w1", "get_balance_metrics": "qdata_metrics"}
        server, address = env.servers[key[name]]
        row = _h2load_row(env, _balance_target(server, address, env.alice), load, tag, args.duration)
    elif name in ("echo_w2", "echo_w1", "echo_w2_get_user"):
        server, address = env.servers["echo_w1" if name == "echo_w1" else "echo_w2"]
        message = (
            env.alice_get_user.message
            if name == "echo_w2_get_user"
            else _balance_target(main, main_address, env.alice).message
        )
        row = _h2load_row(env, servers.echo_target(server, address, message), load, tag, args.duration)
    elif name == "get_user_w2":
        row = _h2load_row(env, env.alice_get_user, load, tag, args.duration)
    elif name == "usage_batch":
        spec = loadgen.Spec(
            "record_usage_batch",
            main_address,
            users=env.cold,
            model_id=USAGE_MODEL,
            batch=args.usage_batch,
            processes=args.generator_processes,
            concurrency=args.batch_concurrency,
            warmup_calls=1,
        )
        row = _generator_row(env, spec, main)
    elif name == "usage_single":
        spec = loadgen.Spec("record_usage", main_address, users=env.cold, model_id=USAGE_MODEL, **gen)
        row = _generator_row(env, spec, main)
    elif name == "authenticate":
        from qdata_server.seed import SAMPLE_PASSWORD

        target = servers.authenticate_target(main, main_address, "bob", SAMPLE_PASSWORD)
        # Few in flight: every attempt counts against the lockout (5) before its password is checked.
        auth_load = h2load.Load(connections=2, streams=2, threads=1)
        row = _h2load_row(env, target, auth_load, tag, args.duration)
    elif name == "checkpw":
        row = _checkpw_row(env)
    elif name == "get_balance_half":
        if not env.peak_get_balance:
            raise RuntimeError("get_balance_half needs the round's GetBalance peak")
        rate = env.peak_get_balance / 2
        half = dataclasses.replace(load, rate_per_connection=rate / load.connections)
        # A steady state first: what the earlier rows wrote is vacuumed and analyzed now rather than
        # by autovacuum during the window (bench/README.md, "The p99 / p50 row").
        settled = background.settle(_bench_databases(env))
        print(f"  {'':<28}settled: {settled}", flush=True)
        row = _h2load_row(env, _balance_target(main, main_address, env.alice), half, tag, args.duration)
        row["target_rps"] = rate
        row["settled"] = settled
    elif name in BUDGET_SETS:
        kind, _count = BUDGET_SETS[name]
        model = USAGE_MODEL if kind == "record_usage" else ""
        spec = loadgen.Spec(kind, main_address, users=env.budget_accounts[name], model_id=model, **gen)
        row = _generator_row(env, spec, main)
    elif name == "generator_ceiling":
        server, address = env.servers["echo_w2"]
        row = _generator_row(env, loadgen.Spec("echo", address, users=env.cold[:1], **gen), server)
    else:
        raise ValueError(name)
    row["name"] = name
    row["tag"] = tag
    label, unit, counted = LABELS[name]
    row["label"], row["unit"], row["counted"] = label, unit, counted
    _print_row(row)
    return row


def _print_row(row: dict[str, Any]) -> None:
    cpu_ms = row["cpu_ms_per_call"]

    def ms(key: str) -> str:
        value = cpu_ms.get(key)
        return "-" if value is None else f"{value:.3f}"

    p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.1f}"
    p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.1f}"
    print(
        f"  {row['tag']:<28}{row['value']:>10.1f} {row['unit']:<10}{row['calls']:>9} {row['counted']:<13}"
        f"p50 {p50:>6} p99 {p99:>7} ms  CPU/call ms: server {ms('server'):>6} postgres {ms('postgres'):>6} "
        f"generator {ms('load_generator'):>6}  errors {row['errors']}",
        flush=True,
    )
    seen = row.get("background")
    if seen and (seen["running_samples"] or seen["autovacuums_finished"] or seen["autoanalyzes_finished"]):
        slow = [s["second"] for s in row.get("by_second", []) if row["p50_ms"] and s["max_ms"] > 10 * row["p50_ms"]]
        print(
            f"  {'':<28}meanwhile in PostgreSQL: running in {seen['running_samples']} of {seen['samples']} samples; "
            f"{seen['autovacuums_finished']} autovacuum(s), {seen['autoanalyzes_finished']} autoanalyze(s) finished; "
            f"seconds with a call over 10x p50: {slow}",
            flush=True,
        )


# --- set-up ---------------------------------------------------------------------------------------


async def _create_users(address: str, count: int, prefix: str, funds: int) -> list[str]:
    """count users with `funds` USD micro-units each (a promotional deposit), 16 at a time."""
    import grpc

    from qdata.v1 import ledger_pb2, ledger_pb2_grpc, user_pb2, user_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        users = user_pb2_grpc.UserServiceStub(channel)
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        gate = asyncio.Semaphore(16)

        async def one(number: int) -> str:
            name = f"{prefix}{number:04d}{uuid.uuid4().hex[:6]}"
            async with gate:
                user = (
                    await users.CreateUser(
                        user_pb2.CreateUserRequest(
                            request_id=str(uuid.uuid4()),
                            email=f"{name}@example.com",
                            username=name,
                            password="bench password 123",
                        ),
                        timeout=60,
                    )
                ).user
                await ledger.Deposit(
                    ledger_pb2.DepositRequest(
                        request_id=str(uuid.uuid4()),
                        user_id=user.id,
                        amount_micros=funds,
                        currency_code="USD",
                        source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
                        description="bench table",
                    ),
                    timeout=60,
                )
            return user.id

        return list(await asyncio.gather(*(one(n) for n in range(count))))


def _upsert_model(address: str) -> None:
    import grpc

    from qdata.v1 import usage_pb2, usage_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        usage_pb2_grpc.UsageServiceStub(channel).UpsertModel(
            usage_pb2.UpsertModelRequest(
                request_id=str(uuid.uuid4()),
                model=usage_pb2.Model(id=USAGE_MODEL, provider="bench", display_name=USAGE_MODEL),
                price=usage_pb2.ModelPrice(
                    input_micros_per_million_tokens=150_000,
                    output_micros_per_million_tokens=600_000,
                    cached_input_micros_per_million_tokens=75_000,
                    reasoning_micros_per_million_tokens=600_000,
                ),
            ),
            timeout=30,
        )


def _budgets_for(count: int, model_id: str) -> list[Any]:
    """The budgets each account of a budget row gets: none, 1 or 3, all of them applying to its calls.

    1: a DAILY budget on all the user's spend. 3: that, a MONTHLY one scoped to the calling service
    (the bench's servers accept every call as the anonymous caller, whose name the ledger records as
    the caller) and a LIFETIME one scoped to the row's model (RecordUsage) or unscoped (Charge, which
    names no model, so a model-scoped budget would not apply to it). All HARD, in USD, UTC, with
    alerts at 50, 80 and 100%, and a limit no account can reach.
    """
    from qdata.v1 import budget_pb2
    from qdata_server.tokens import ANONYMOUS

    def budget(name: str, period: budget_pb2.BudgetPeriod.ValueType, **scope: str) -> Any:
        return budget_pb2.Budget(
            display_name=f"bench {name}",
            currency_code="USD",
            limit_micros=BUDGET_LIMIT_MICROS,
            period=period,
            time_zone="UTC",
            enforcement=budget_pb2.BUDGET_ENFORCEMENT_HARD,
            alert_thresholds_percent=BUDGET_THRESHOLDS,
            **scope,
        )

    made = [
        budget("daily", budget_pb2.BUDGET_PERIOD_DAILY),
        budget("monthly, this caller", budget_pb2.BUDGET_PERIOD_MONTHLY, caller=ANONYMOUS),
        budget("lifetime", budget_pb2.BUDGET_PERIOD_LIFETIME, model_id=model_id),
    ]
    return made[:count]


async def _create_budgets(address: str, users: list[str], count: int, model_id: str) -> int:
    """Gives each user the budgets _budgets_for names, through BudgetService.CreateBudget; returns how many."""
    import grpc

    from qdata.v1 import budget_pb2, budget_pb2_grpc

    budgets = _budgets_for(count, model_id)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        gate = asyncio.Semaphore(16)

        async def one(user_id: str, budget: Any) -> None:
            async with gate:
                request = budget_pb2.CreateBudgetRequest(request_id=str(uuid.uuid4()), user_id=user_id, budget=budget)
                made = (await stub.CreateBudget(request, timeout=60)).budget
            if made.user_id != user_id or made.limit_micros != BUDGET_LIMIT_MICROS or made.period != budget.period:
                raise RuntimeError(f"CreateBudget answered an unexpected budget: {made}")

        await asyncio.gather(*(one(u, b) for u in users for b in budgets))
    return len(users) * len(budgets)


def _idle_budgets(budgets: list[Any], since: datetime.datetime) -> list[str]:
    """The ids of the budgets that counted no spend in a current period that began before since."""
    return [
        b.id
        for b in budgets
        if b.current_period.spent_micros <= 0
        and not (
            b.current_period.HasField("period_start") and b.current_period.period_start.ToDatetime(datetime.UTC) > since
        )
    ]


async def _check_budgets(address: str, users: list[str], count: int, since: datetime.datetime) -> dict[str, Any]:
    """After the run: each user still has its `count` budgets, and every one of them counted spend.

    Raises if not: a budget that counted nothing did not apply to the calls, so its row would not
    measure what it says. A budget whose current period began after `since` (the run crossed
    midnight or a month's end, UTC) is not judged: its spend may all be in the period before.
    """
    import grpc

    from qdata.v1 import budget_pb2, budget_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        gate = asyncio.Semaphore(16)

        async def one(user_id: str) -> list[Any]:
            async with gate:
                request = budget_pb2.ListBudgetsRequest(user_id=user_id, page_size=100)
                reply = await stub.ListBudgets(request, timeout=60)
            return list(reply.budgets)

        found = await asyncio.gather(*(one(u) for u in users))
    budgets = [b for per_user in found for b in per_user]
    idle = _idle_budgets(budgets, since)
    if any(len(per_user) != count for per_user in found) or idle:
        raise RuntimeError(
            f"budget rows: expected {count} budget(s) per account, each with spend; "
            f"found counts {sorted({len(p) for p in found})}, {len(idle)} budget(s) without spend"
        )
    return {
        "accounts": len(users),
        "budgets": len(budgets),
        "spent_micros": sum(b.current_period.spent_micros for b in budgets),
    }


def _init_pgbench(env_url: str, exe: Path, scale: int) -> float:
    import psycopg
    from psycopg import sql

    started = time.perf_counter()
    with psycopg.connect(env_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PGBENCH_DATABASE)))
    pgbench.init(exe, env_url, PGBENCH_DATABASE, scale)
    return time.perf_counter() - started


def _stored_counts(database_url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        charges = conn.execute(
            "SELECT count(*) FROM ledger_transactions WHERE kind = 'charge' AND description = %s",
            (loadgen.DESCRIPTION,),
        ).fetchone()
        records = conn.execute("SELECT count(*) FROM usage_records WHERE model_id = %s", (USAGE_MODEL,)).fetchone()
    return {"charges": charges[0] if charges else 0, "usage_records": records[0] if records else 0}


def _rss_by_worker(server: Any) -> dict[str, Any]:
    tree = procs.descendants(server.pid)
    workers = [pid for pid in tree if pid != server.pid] or [server.pid]
    rss = {pid: procs.status_kb(pid, "VmRSS") for pid in workers}
    hwm = {pid: procs.status_kb(pid, "VmHWM") for pid in workers}
    present = [v for v in rss.values() if v is not None]
    return {
        "vm_rss_kb_by_worker": rss,
        "vm_hwm_kb_by_worker": hwm,
        "parent_vm_rss_kb": procs.status_kb(server.pid, "VmRSS") if len(tree) > 1 else None,
        "max_worker_rss_mib": max(present) / 1024 if present else None,
    }


# --- the summary ----------------------------------------------------------------------------------


def _measurements(round_: dict[str, Any]) -> list[dict[str, Any]]:
    """Every measured run of a round."""
    found = list(round_["singles"].values())
    for pair in round_["pairs"].values():
        found += [pair["qdata"], pair["ref"]]
    return found


def summarize(rounds: list[dict[str, Any]], rows_measured: tuple[dict[str, Any], ...] = ROWS) -> dict[str, Any]:
    """Per row: the medians of qdata's and the reference's values and of the per-round ratios.

    Also the median CPU per call of every measurement over all its runs, and how close each
    generator-driven figure came to the generator's own ceiling.
    """
    rows = {}
    for spec in rows_measured:
        per_round, qdata_values, ref_values = [], [], []
        for r in rounds:
            if spec["ref"] is None:
                got = r["singles"][spec["qdata"]]
                per_round.append(ratio(got["p99_ms"], got["p50_ms"]))
            else:
                got, ref = r["pairs"][spec["key"]]["qdata"], r["pairs"][spec["key"]]["ref"]
                ref_values.append(ref["value"])
                per_round.append(ratio(got["value"], ref["value"]))
            qdata_values.append(got["value"])
        rows[spec["key"]] = {
            **spec,
            "qdata_value": median(qdata_values),
            "ref_value": median(ref_values) if ref_values else None,
            "ratio": median(per_round),
            "ratio_per_round": per_round,
        }
    if "get_balance_tail" in rows:
        tail = [r["singles"]["get_balance_half"] for r in rounds]
        rows["get_balance_tail"]["p50_ms"] = median([t["p50_ms"] for t in tail])
        rows["get_balance_tail"]["p99_ms"] = median([t["p99_ms"] for t in tail])
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in rounds:
        for m in _measurements(r):
            runs.setdefault(m["name"], []).append(m)
    cpu_rows = {
        name: {
            side: median([m["cpu_ms_per_call"].get(side) for m in found])
            for side in ("server", "postgres", "load_generator")
        }
        for name, found in runs.items()
    }
    ceiling = median([r["singles"]["generator_ceiling"]["value"] for r in rounds])
    near = {}
    for name, found in runs.items():
        if name == "generator_ceiling" or not found[0]["generator"].startswith("grpc.aio"):
            continue
        rpcs = median([m["rpcs"] / m["raw"]["seconds"] for m in found])
        near[name] = {"rpcs_per_s": rpcs, "share_of_ceiling": ratio(rpcs, ceiling)}
    return {"rows": rows, "cpu_ms_per_call": cpu_rows, "generator_ceiling_calls_per_s": ceiling, "generator_load": near}


def _print_summary(summary: dict[str, Any], rss: dict[str, Any]) -> None:
    print("\nqdata / reference, median of the rounds [per round]:")
    for key, row in summary["rows"].items():
        spread = ", ".join("-" if v is None else f"{v:.2f}" for v in row["ratio_per_round"])
        ratio_text = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        print(f"  {key:<22}{ratio_text:>8}  [{spread}]  goal {row['goal'] or '-'}")
    print(f"  RSS per worker after mixed load: {rss['max_worker_rss_mib']:.1f} MiB (largest worker)")
    print(f"  generator ceiling (grpc.aio generator against the echo): {summary['generator_ceiling_calls_per_s']:.0f}")
    for name, near in summary["generator_load"].items():
        share = near["share_of_ceiling"]
        if share is not None and share >= NEAR_CEILING:
            print(f"  note: {name} ran at {share:.0%} of the generator's ceiling: the figure may be the generator's")


# --- the run --------------------------------------------------------------------------------------


def run(args: Any) -> int:
    """Runs the table suite; returns the exit status (1 if a run was invalid or the bench failed)."""
    exe = h2load.find()
    if exe is None:
        print(h2load.INSTALL_HINT, file=sys.stderr)
        return 2
    if args.quick:
        args.duration, args.rounds, args.warmup = 3, 1, 1
    args.duration = int(args.duration)
    args.warmup = int(args.warmup)
    if args.duration < 1 or args.rounds < 1:
        print("--duration (whole seconds) and --rounds must be at least 1", file=sys.stderr)
        return 2
    import grpc

    rows_measured = selected_rows(getattr(args, "rows", None))
    partial = rows_measured != ROWS
    measured = {m for spec in rows_measured for m in (spec["qdata"], spec["ref"]) if m}
    started = datetime.datetime.now(datetime.UTC)
    report: dict[str, Any] = {
        "suite": "table",
        "started": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "h2load": h2load.version(exe),
            "platform": platform.platform(),
            "processor": _cpu_model(),
            "mem_total_kb": procs.meminfo_kb("MemTotal"),
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "quick": args.quick,
            "h2load": {"connections": args.connections, "streams": args.streams, "threads": 1},
            "generator": {
                "processes": args.generator_processes,
                "concurrency": args.generator_concurrency,
                "batch_concurrency": args.batch_concurrency,
            },
            "bcrypt_cost": BCRYPT_COST,
            "cold_accounts": args.cold_accounts,
            "hot_accounts": HOT_ACCOUNTS,
            "usage_batch": args.usage_batch,
            "budget_accounts": args.budget_accounts,
            "budget_limit_micros": BUDGET_LIMIT_MICROS,
            "budget_thresholds_percent": list(BUDGET_THRESHOLDS),
            "pgbench": {"scale": args.pgbench_scale, "clients": args.pgbench_clients, "threads": 2},
            "rows": [spec["key"] for spec in rows_measured],
        },
        "rounds": [],
    }
    print(
        f"qdata bench table: {args.rounds} round(s), {args.duration}s per run after {args.warmup}s warm-up; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    # Tracing stays off (the metrics rows compare "metrics on, tracing off" with both off): no
    # OTEL_* variable reaches the servers, whatever this environment says.
    removed = sorted(k for k in os.environ if k.startswith("OTEL_"))
    for key in removed:
        del os.environ[key]
    report["settings"]["otel_variables_removed"] = removed
    tmp = Path(tempfile.mkdtemp(prefix="qdata-bench-table-"))
    failure = None
    database = None
    started_servers: list[Any] = []
    try:
        print("starting the embedded PostgreSQL ...", flush=True)
        database_url, database = servers.start_database(tmp)
        pgbench_exe = pgbench.executable(database.bin_path)  # type: ignore[attr-defined]
        report["machine"]["postgres"] = _postgres_version(database_url)
        if "pgbench" in measured:
            print(f"pgbench -i -s {args.pgbench_scale} ...", flush=True)
            report["pgbench_init_seconds"] = _init_pgbench(database_url, pgbench_exe, args.pgbench_scale)

        print("starting qdata (2 workers; 1 worker; 2 workers with metrics) and the echo (2; 1) ...", flush=True)
        base = {"QDATA_METRICS_LISTEN_ADDRESS": ""}
        table: dict[str, Any] = {}
        for name, workers, extra in (
            ("qdata_w2", 2, base),
            ("qdata_w1", 1, base),
            ("qdata_metrics", 2, {"QDATA_METRICS_LISTEN_ADDRESS": f"{procs.HOST}:{procs.free_port()}"}),
        ):
            server, address = servers.start_qdata(
                tmp, database_url, workers, bcrypt_cost=BCRYPT_COST, extra_env=extra, name=name
            )
            started_servers.append(server)
            table[name] = (server, address)
        for name, workers in (("echo_w2", 2), ("echo_w1", 1)):
            server, address = servers.start_echo(tmp, workers)
            started_servers.append(server)
            table[name] = (server, address)
        main_address = table["qdata_w2"][1]
        print(f"creating {args.cold_accounts} cold and {HOT_ACCOUNTS} hot funded accounts ...", flush=True)
        cold = asyncio.run(_create_users(main_address, args.cold_accounts, "cold", 1_000_000_000))
        hot = asyncio.run(_create_users(main_address, HOT_ACCOUNTS, "hot", 1_000_000_000))
        _upsert_model(main_address)
        budget_accounts: dict[str, list[str]] = {}
        for name, (kind, count) in BUDGET_SETS.items():
            if name not in measured:
                continue
            print(f"{name}: {args.budget_accounts} funded accounts with {count} budget(s) each ...", flush=True)
            users = asyncio.run(_create_users(main_address, args.budget_accounts, f"b{count}{kind[0]}", 1_000_000_000))
            if count:
                model = USAGE_MODEL if kind == "record_usage" else ""
                asyncio.run(_create_budgets(main_address, users, count, model))
            budget_accounts[name] = users
        alice = servers.user_id(main_address, "alice")
        env = Env(
            args=args,
            tmp=tmp,
            h2load=exe,
            database_url=database_url,
            postmaster=database.get_pid(),  # type: ignore[attr-defined]
            pgbench_exe=pgbench_exe,
            servers=table,
            cold=cold,
            hot=hot,
            alice=alice,
            pgbench_made="pgbench" in measured,
            budget_accounts=budget_accounts,
        )
        env.alice_get_user = servers.get_user_target(table["qdata_w2"][0], main_address, alice)

        for number in range(1, args.rounds + 1):
            print(f"\nround {number} (load average {os.getloadavg()[0]:.2f}):", flush=True)
            pairs: dict[str, Any] = {}
            for spec in rows_measured:
                if spec["ref"] is None:
                    continue
                names = (spec["qdata"], spec["ref"])
                got = {name: measure(env, name, f"r{number}-{name}") for name in (names if number % 2 else names[::-1])}
                pairs[spec["key"]] = {"qdata": got[spec["qdata"]], "ref": got[spec["ref"]]}
            # Half of this round's "GetBalance, 2 workers" peak (not the metrics pair's re-measurement).
            if "get_balance_w2" in pairs:
                env.peak_get_balance = pairs["get_balance_w2"]["qdata"]["value"]
            singles = {name: measure(env, name, f"r{number}-{name}") for name in singles_for(rows_measured)}
            report["rounds"].append({"round": number, "loadavg": os.getloadavg(), "pairs": pairs, "singles": singles})

        report["rss_after_mixed_load"] = _rss_by_worker(table["qdata_w2"][0])
        report["stored"] = _stored_counts(database_url)
        report["budgets_after_run"] = {
            name: asyncio.run(_check_budgets(main_address, users, BUDGET_SETS[name][1], started))
            for name, users in budget_accounts.items()
            if BUDGET_SETS[name][1]
        }
        report["summary"] = summarize(report["rounds"], rows_measured)
        _print_summary(report["summary"], report["rss_after_mixed_load"])
    except Exception as exc:  # the report is still written, and everything started is stopped
        failure = f"{type(exc).__name__}: {exc}"
        print(f"\nbench failed: {failure}", file=sys.stderr)
    except KeyboardInterrupt:
        failure = "interrupted"
        print("\ninterrupted", file=sys.stderr)
    finally:
        for server in reversed(started_servers):
            with contextlib.suppress(Exception):
                server.stop()
        if database is not None:
            database.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    invalid = [m["tag"] for r in report["rounds"] for m in _measurements(r) if not m["ok"]]
    report["invalid_runs"] = invalid
    # A run of some rows only is never the README's table (bench.readme renders table-<time> files).
    prefix = "table-rows-" if partial else "table-"
    report_file.save(report, args.out, f"{prefix}{started.strftime('%Y%m%dT%H%M%SZ')}", failure)
    if invalid:
        print(f"invalid runs (errors under load): {', '.join(invalid)}", file=sys.stderr)
    return 1 if failure or invalid else 0


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _postgres_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else ""
