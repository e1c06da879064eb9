"""qdata's own metrics on a real two-worker server: money, usage, database errors, pool, health,
the database-derived gauges and the scheduled verification.

Counts are exact: each is compared with what the database holds after the workload (the ledger's
transactions by kind and currency, the usage records), so a counted replay, a missed commit or a
worker whose share is lost fails the test. Gauges read on a schedule are polled until they show
the planted state (no sleeps, no timed assertions).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qdata.v1 import chat_pb2_grpc, ledger_pb2, ledger_pb2_grpc, usage_pb2, usage_pb2_grpc, user_pb2, user_pb2_grpc
from tests.support.calls import create_user, expect_error, rid
from tests.support.database import scalar, sql
from tests.support.processes import ServerProcess, free_port, server_env
from tests.support.server import SERVICE_LOGIN
from tests.support.usage import create_model, ts, usage

pytestmark = pytest.mark.slow

USD = 1_000_000
CHANNELS = 6
POOL_MAX = 4

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


async def eventually(address: str, check: Callable[[Samples], bool], what: str, within: float = 60.0) -> Samples:
    """Scrapes until check passes (a gauge that a schedule sets); fails after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        samples = await asyncio.to_thread(scrape, address)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {within}s")
        await asyncio.sleep(0.1)


@dataclasses.dataclass
class Remote:
    """Stubs over one channel to a server process (the helpers of tests/support take it as `api`)."""

    database_url: str
    channel: grpc.aio.Channel
    users: user_pb2_grpc.UserServiceStub
    ledger: ledger_pb2_grpc.LedgerServiceStub
    usage: usage_pb2_grpc.UsageServiceStub
    chat: chat_pb2_grpc.ChatServiceStub


def remote(address: str, database_url: str) -> Remote:
    """A new channel (a new connection: SO_REUSEPORT may hand it to either worker)."""
    channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return Remote(
        database_url,
        channel,
        user_pb2_grpc.UserServiceStub(channel),
        ledger_pb2_grpc.LedgerServiceStub(channel),
        usage_pb2_grpc.UsageServiceStub(channel),
        chat_pb2_grpc.ChatServiceStub(channel),
    )


@pytest.fixture
def metrics_server(database_url: str, tmp_path) -> Iterator[Callable[..., tuple[ServerProcess, str]]]:
    """Starts two-worker servers with metrics on (extra settings as keywords); stops them after."""
    started: list[ServerProcess] = []

    def start(**extra: str) -> tuple[ServerProcess, str]:
        address = f"127.0.0.1:{free_port()}"
        env = server_env(
            database_url,
            QDATA_WORKERS="2",
            QDATA_METRICS_LISTEN_ADDRESS=address,
            QDATA_POOL_MAX_SIZE=str(POOL_MAX),
            **extra,
        )
        server = ServerProcess(env, tmp_path / f"serve{len(started)}.log")
        started.append(server)
        server.wait_serving()
        server.wait_workers(2)
        return server, address

    yield start
    for server in started:
        assert server.stop(signal.SIGTERM) == 0, server.output()


def deposit(user_id: str, micros: int, currency: str = "USD") -> ledger_pb2.DepositRequest:
    return ledger_pb2.DepositRequest(
        request_id=rid(),
        user_id=user_id,
        amount_micros=micros,
        currency_code=currency,
        source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
        description="metrics test",
    )


async def ledger_workload(api: Remote, i: int) -> None:
    """One channel's share: every money-moving kind, replays of each, and two refused calls."""
    a = await create_user(api)
    b = await create_user(api)
    first = deposit(a.id, (10 + i) * USD)
    await api.ledger.Deposit(first)
    await api.ledger.Deposit(first)  # a replay: moves nothing
    charge = ledger_pb2.ChargeRequest(request_id=rid(), user_id=a.id, amount_micros=USD + i, currency_code="USD")
    charged = (await api.ledger.Charge(charge)).transaction
    await api.ledger.Charge(charge)
    refund = ledger_pb2.RefundRequest(
        request_id=rid(), user_id=a.id, original_transaction_id=charged.id, amount_micros=USD // 4
    )
    await api.ledger.Refund(refund)
    await api.ledger.Refund(refund)
    transfer = ledger_pb2.TransferRequest(
        request_id=rid(), from_user_id=a.id, to_user_id=b.id, amount_micros=2 * USD, currency_code="USD"
    )
    await api.ledger.Transfer(transfer)
    await api.ledger.Transfer(transfer)
    hold = (
        await api.ledger.CreateHold(
            ledger_pb2.CreateHoldRequest(request_id=rid(), user_id=a.id, amount_micros=3 * USD, currency_code="USD")
        )
    ).hold
    capture = ledger_pb2.CaptureHoldRequest(
        request_id=rid(), user_id=a.id, hold_id=hold.id, amount_micros=USD + USD // 2
    )
    await api.ledger.CaptureHold(capture)
    await api.ledger.CaptureHold(capture)
    # Refused by the database: a charge beyond the balance (ledger_reject, SQLSTATE 23514) and a
    # second user with a's email (users_email_key, 23505).
    await expect_error(
        api.ledger.Charge(
            ledger_pb2.ChargeRequest(request_id=rid(), user_id=b.id, amount_micros=10**12, currency_code="USD")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
    )
    await expect_error(
        api.users.CreateUser(
            user_pb2.CreateUserRequest(
                request_id=rid(), email=a.email, username=f"again{i}", password="a long enough password"
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )


async def usage_workload(api: Remote, model_id: str) -> None:
    """Billed (plain, within a hold, beyond a hold), unbilled and replayed usage, single and batched."""
    user = await create_user(api)
    await api.ledger.Deposit(deposit(user.id, 50 * USD))
    plain = usage(user.id, model_id)
    await api.usage.RecordUsage(plain)
    await api.usage.RecordUsage(plain)  # a replay
    big = (
        await api.ledger.CreateHold(
            ledger_pb2.CreateHoldRequest(request_id=rid(), user_id=user.id, amount_micros=USD, currency_code="USD")
        )
    ).hold
    await api.usage.RecordUsage(usage(user.id, model_id, hold_id=big.id))
    tiny = (
        await api.ledger.CreateHold(
            ledger_pb2.CreateHoldRequest(request_id=rid(), user_id=user.id, amount_micros=1, currency_code="USD")
        )
    ).hold
    beyond = (await api.usage.RecordUsage(usage(user.id, model_id, hold_id=tiny.id))).record
    assert beyond.overage_transaction_id  # captured the whole hold, charged the rest
    await api.usage.RecordUsage(
        usage(user.id, model_id, outcome=usage_pb2.USAGE_OUTCOME_ERROR, error_code="rate_limit_exceeded")
    )
    batch = [usage(user.id, model_id), usage(user.id, model_id, output_tokens=5000), plain]
    response = await api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=batch))
    assert response.failed_count == 0


async def database_totals(database_url: str) -> tuple[dict[tuple[str, str], int], int, dict[str, int]]:
    """What the ledger holds (micros by kind and currency), the usage records and their billed micros."""
    moved = {
        (row["kind"], row["currency_code"]): row["micros"]
        for row in await sql(
            database_url,
            "SELECT kind, currency_code, sum(amount_micros)::bigint AS micros FROM ledger_transactions"
            " GROUP BY kind, currency_code",
        )
    }
    records = await scalar(database_url, "SELECT count(*) FROM usage_records")
    billed = {
        row["currency_code"]: row["micros"]
        for row in await sql(
            database_url,
            "SELECT p.currency_code, sum(r.cost_micros)::bigint AS micros FROM usage_records r"
            " JOIN model_prices p USING (price_id) WHERE r.billed GROUP BY p.currency_code",
        )
    }
    return moved, records, billed


async def test_money_usage_errors_pool_and_health_add_up_exactly_over_two_workers(metrics_server, database_url):
    server, address = metrics_server()
    before = scrape(address)
    # Known in advance, so present (at 0) from the first scrape.
    for kind in ("deposit", "charge", "refund", "transfer", "hold_capture"):
        assert value(before, "qdata_money_moved_micros_total", kind=kind, currency="USD") == 0
    assert value(before, "qdata_db_errors_total", sqlstate_class="23") == 0
    assert value(before, "qdata_usage_records_total") == 0

    setup = remote(server.address, database_url)
    model_id = (await create_model(setup, "openai/metrics-model")).model.id
    await setup.channel.close()
    for i in range(CHANNELS):
        api = remote(server.address, database_url)
        try:
            await ledger_workload(api, i)
            await usage_workload(api, model_id)
        finally:
            await api.channel.close()

    samples = scrape(address)
    moved, records, billed = await database_totals(database_url)
    assert {kind for kind, _ in moved} == {"deposit", "charge", "refund", "transfer", "hold_capture"}
    counted = {
        (labels["kind"], labels["currency"]): v
        for (name, raw), v in samples.items()
        if name == "qdata_money_moved_micros_total" and v
        for labels in [dict(raw)]
    }
    assert counted == moved
    assert value(samples, "qdata_usage_records_total") == records == CHANNELS * 6
    assert by_label(samples, "qdata_usage_billed_micros_total", "currency") == billed
    # Two refusals per channel, both SQLSTATE class 23; no other database error.
    errors = {k: v for k, v in by_label(samples, "qdata_db_errors_total", "sqlstate_class").items() if v}
    assert errors == {"23": 2 * CHANNELS}
    # Both workers did part of the work (their counts were summed).
    calls = [line for line in server.lines() if line.get("message") == "rpc" and "Ledger" in line["method"]]
    assert len({line["pid"] for line in calls}) == 2

    # The pool, summed over both workers once each has sampled (every second).
    pool = await eventually(
        address, lambda s: value(s, "qdata_db_pool_max") == 2 * POOL_MAX, "both workers' pool samples"
    )
    size = value(pool, "qdata_db_pool_size")
    assert size is not None and 2 <= size <= 2 * POOL_MAX
    assert value(pool, "qdata_db_pool_idle") + value(pool, "qdata_db_pool_in_use") == size
    assert value(pool, "qdata_db_pool_waiting") == 0
    assert value(pool, "qdata_db_pool_timeouts_total") == 0
    assert value(pool, "qdata_db_pool_connection_errors_total") == 0
    assert value(pool, "qdata_db_pool_wait_seconds_total") >= 0
    # At least one checkout per call that reached the database.
    await eventually(
        address,
        lambda s: value(s, "qdata_db_pool_requests_total") >= len(calls),
        "pool requests counted",
    )
    assert value(pool, "qdata_database_up") == 1
    assert value(pool, "qdata_health_serving") == 1

    # The database refuses the serving login: the probes fail, both gauges drop to 0, then recover.
    database = await scalar(database_url, "SELECT current_database()")
    await sql(database_url, f'REVOKE CONNECT ON DATABASE "{database}" FROM PUBLIC')
    try:
        await sql(
            database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
            " AND usename = %s",
            (SERVICE_LOGIN,),
        )
        await eventually(
            address,
            lambda s: value(s, "qdata_database_up") == 0 and value(s, "qdata_health_serving") == 0,
            "the database reported down",
        )
    finally:
        await sql(database_url, f'GRANT CONNECT ON DATABASE "{database}" TO PUBLIC')
    await eventually(
        address,
        lambda s: value(s, "qdata_database_up") == 1 and value(s, "qdata_health_serving") == 1,
        "the database reported up again",
    )


async def test_database_gauges_and_scheduled_verification(metrics_server, database_url):
    # The folder off, so queued usage stays queued; verification every second.
    server, address = metrics_server(QDATA_USAGE_FOLD_SECONDS="0", QDATA_VERIFY_INTERVAL_SECONDS="1")
    api = remote(server.address, database_url)
    try:
        users = [await create_user(api) for _ in range(3)]
        for user in users:
            await api.ledger.Deposit(deposit(user.id, 20 * USD))
        an_hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
        model_id = (await create_model(api, "openai/lag-model")).model.id
        # Its price in force since before the call (the API schedules prices from now on only).
        await sql(
            database_url,
            "INSERT INTO model_prices (model_id, currency_code, input_micros_per_million, output_micros_per_million,"
            " cached_input_micros_per_million, reasoning_micros_per_million, effective_at)"
            " VALUES (%s, 'USD', 150000, 600000, 75000, 600000, now() - interval '1 day')",
            (model_id,),
        )
        # Two active holds, one resolved, one expired: the gauges count the active ones.
        held = [USD, 2 * USD + 7]
        for user, micros in zip(users, held, strict=False):
            await api.ledger.CreateHold(
                ledger_pb2.CreateHoldRequest(
                    request_id=rid(), user_id=user.id, amount_micros=micros, currency_code="USD"
                )
            )
        released = (
            await api.ledger.CreateHold(
                ledger_pb2.CreateHoldRequest(
                    request_id=rid(), user_id=users[2].id, amount_micros=5, currency_code="USD"
                )
            )
        ).hold
        await api.ledger.ReleaseHold(
            ledger_pb2.ReleaseHoldRequest(request_id=rid(), user_id=users[2].id, hold_id=released.id)
        )
        expired = (
            await api.ledger.CreateHold(
                ledger_pb2.CreateHoldRequest(
                    request_id=rid(), user_id=users[2].id, amount_micros=9, currency_code="USD"
                )
            )
        ).hold
        await sql(
            database_url,
            "UPDATE ledger_holds SET created_at = created_at - interval '2 days', expire_at = now() - interval '1 day'"
            " WHERE hold_id = %s",
            (expired.id,),
        )
        # Usage called an hour ago, queued and not folded.
        await api.usage.RecordUsage(usage(users[0].id, model_id, call_time=ts(an_hour_ago)))
        await api.usage.RecordUsage(usage(users[1].id, model_id))

        samples = await eventually(
            address,
            lambda s: value(s, "qdata_holds_active") == 2 and (value(s, "qdata_usage_fold_lag_seconds") or 0) >= 3600,
            "active holds and the fold lag",
        )
        assert value(samples, "qdata_holds_active_micros", currency="USD") == sum(held)
        assert value(samples, "qdata_usage_fold_lag_seconds") < 3600 + 600
        # Folded: the lag drops to 0.
        await sql(database_url, "SELECT usage_fold(1000000)")
        await eventually(address, lambda s: value(s, "qdata_usage_fold_lag_seconds") == 0, "lag 0 after the fold")

        # A clean ledger and trail.
        clean = await eventually(
            address,
            lambda s: (value(s, "qdata_verify_last_success_timestamp_seconds") or 0) > 0,
            "a first scheduled verification",
        )
        assert value(clean, "qdata_ledger_verify_discrepancies") == 0
        assert value(clean, "qdata_audit_verify_ok") == 1

        # A planted discrepancy: an account's cached balance no longer matches its postings.
        await sql(
            database_url,
            "UPDATE ledger_accounts SET posted_micros = posted_micros + 1 WHERE user_id = %s",
            (users[0].id,),
        )
        verified = await api.ledger.VerifyLedger(ledger_pb2.VerifyLedgerRequest(max_discrepancies=1000))
        assert verified.discrepancies
        await eventually(
            address,
            lambda s: value(s, "qdata_ledger_verify_discrepancies") == len(verified.discrepancies),
            "the planted discrepancy",
        )

        # A tampered audit event, one the schedule verified before.
        await sql(database_url, "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete")
        first = "(SELECT min(audit_event_id) FROM audit_events)"
        await sql(database_url, f"UPDATE audit_events SET summary = '{{}}'::jsonb WHERE audit_event_id = {first}")
        await sql(database_url, "ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update_delete")
        await eventually(address, lambda s: value(s, "qdata_audit_verify_ok") == 0, "the tampered audit event")

        # A failing run (the ledger locked past the run's deadline) keeps the last success time.
        async with await psycopg.AsyncConnection.connect(database_url) as locker:
            await locker.execute("LOCK TABLE ledger_accounts IN ACCESS EXCLUSIVE MODE")
            failures = _failures(server)
            await _wait_log(server, lambda: _failures(server) > failures, "a failed run")
            locked = value(scrape(address), "qdata_verify_last_success_timestamp_seconds")
            seen = _failures(server)
            await _wait_log(server, lambda: _failures(server) > seen, "a second failed run")
            assert value(scrape(address), "qdata_verify_last_success_timestamp_seconds") == locked
            await locker.rollback()
        await eventually(
            address,
            lambda s: value(s, "qdata_verify_last_success_timestamp_seconds") > locked,
            "a run succeeding again",
        )
    finally:
        await api.channel.close()

    # One worker ran the schedule and read the gauges: worker 0 alone.
    runs = [line for line in server.lines() if str(line.get("message", "")).startswith("scheduled verification")]
    assert runs and len({line["pid"] for line in runs}) == 1
    found = [line for line in runs if line["message"] == "scheduled verification found problems"]
    assert found[-1]["audit_problems"] >= 1 and found[-1]["discrepancies"] == len(verified.discrepancies)


def _failures(server: ServerProcess) -> int:
    return sum(1 for line in server.lines() if line.get("message") == "scheduled verification failed")


async def _wait_log(server: ServerProcess, check: Callable[[], bool], what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not logged within {within}s:\n{server.output()[-4000:]}")
        await asyncio.sleep(0.1)


def test_prometheus_client_is_never_imported_with_metrics_off():
    """Every server module but the one made for metrics-on imports without prometheus-client."""
    import subprocess
    import sys

    program = (
        "import importlib, pkgutil, sys, qdata_server\n"
        "for m in pkgutil.walk_packages(qdata_server.__path__, 'qdata_server.'):\n"
        "    if m.name not in ('qdata_server.metrics_qdata', 'qdata_server.__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "from qdata_server.app import QdataServer\n"
        "print(sorted(n for n in sys.modules if n.startswith('prometheus_client')))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


async def test_transaction_retries_and_their_errors_are_counted(api):
    """Serialization failures raised by the database: each failed attempt is a class-40 error, each rerun a retry."""
    from qdata_server import metrics_hooks
    from qdata_server.db import transactions
    from qdata_server.errors import Aborted
    from qdata_server.metrics_qdata import QdataMetrics

    def count(metric, **labels: str) -> float:
        [family] = metric.collect()
        return sum(s.value for s in family.samples if s.name.endswith("_total") and s.labels == labels)

    attempts = 0

    async def work(conn) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
        return attempts

    metrics = QdataMetrics()
    metrics_hooks.install(metrics)
    try:
        assert await transactions.run(api.server.pool, work, acting=transactions.ACTING_FOR_NO_USER) == 2
        # Out of retries: the error is counted per attempt, the retries only while they last.
        with pytest.raises(Aborted):
            await transactions.run(
                api.server.pool, work_always_failing, acting=transactions.ACTING_FOR_NO_USER, retries=2
            )
    finally:
        metrics_hooks.install(None)
    assert count(metrics.retries, grpc_method="") == 1 + 2
    assert count(metrics.db_errors, sqlstate_class="40") == 1 + 3


async def work_always_failing(conn) -> None:
    await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
