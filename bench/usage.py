"""`python -m bench --suite usage`: UsageService's performance shape, as ratios (see bench/README.md).

Two claims of issue 5, measured against one qdata server (`python -m qdata_server serve`, as
deployed) over an embedded PostgreSQL in the same run:

(a) RecordUsageBatch records far faster than one RecordUsage per record: --records billed usage
    records sent one by one (--concurrency calls in flight) versus in batches of --batch-size
    (two batches in flight), in alternating rounds; records per second and the ratio batch / one.
(b) GetModelStats stays fast over a million records: a model with --big-records (1,000,000)
    usage records over 30 days versus one with --small-records (1,000) over the same 30 days,
    for the default 24-hour window and a 30-day window; latency ratio big / small, ideally
    near 1. The records go straight into the partitions and the rollup queue with INSERT ...
    SELECT generate_series (then the folder folds them), so they are exactly what recording
    would have produced; only the measured calls go through gRPC. For scale, the bench also
    times the same 30-day statistics computed by brute force from the raw records in SQL.

No speed is asserted: the bench exits 1 only if a call fails or an answer is wrong (a record
that did not record, statistics that do not count the generated records).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid

from bench.suite import SuiteRun, run_suite

RECORDED_MODEL = "bench/recorded"
BIG_MODEL = "bench/big"
SMALL_MODEL = "bench/small"
USERS = 32

# Records of one model over the last 29 days in time order (so that a 30-day window measured a
# little later holds them all), as usage_record would write them
# (own-key calls: priced but not billed, so no ledger rows are needed), and their queue rows.
_GENERATE = """
WITH price AS (SELECT price_id FROM model_prices WHERE model_id = %(model_id)s),
records AS (
    INSERT INTO usage_records (user_id, called_at, request_id, model_id, price_id, input_tokens, cached_input_tokens,
                               output_tokens, reasoning_tokens, latency_ns, outcome, error_code,
                               used_own_provider_key, cost_micros, billed)
    SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g %% %(users)s), 12, '0'))::uuid,
           now() - interval '29 days' + (g::float8 / %(count)s) * interval '29 days' - interval '1 minute',
           'bench-' || %(model_id)s || '-' || g, %(model_id)s, price.price_id, t.input_tokens, 0, t.output_tokens, 0,
           CASE WHEN g %% 50 = 0 THEN NULL ELSE (50e6 * exp(random() * 6))::bigint END,
           CASE WHEN g %% 40 = 0 THEN 'error' ELSE 'success' END,
           CASE WHEN g %% 40 = 0 THEN 'http_500' ELSE '' END,
           true, div(t.input_tokens * 150000::numeric + t.output_tokens * 600000::numeric + 999999, 1000000), false
      FROM generate_series(1, %(count)s) AS g, price,
           LATERAL (SELECT (random() * 4000)::bigint + g * 0 AS input_tokens,
                           (random() * 800)::bigint + g * 0 AS output_tokens) AS t
    RETURNING *
)
INSERT INTO usage_rollup_queue (model_id, user_id, called_at, is_error, input_tokens, cached_input_tokens,
                                output_tokens, reasoning_tokens, cost_micros, billed_micros, latency_bucket)
SELECT model_id, user_id, called_at, outcome = 'error', input_tokens, cached_input_tokens, output_tokens,
       reasoning_tokens, cost_micros, 0, CASE WHEN outcome = 'success' THEN usage_latency_bucket(latency_ns) END
  FROM records
"""

# What GetModelStats would cost without rollups: the same figures straight from the records.
_BRUTE_FORCE = """
SELECT count(*), count(*) FILTER (WHERE outcome = 'error'), sum(input_tokens), sum(output_tokens),
       count(DISTINCT user_id),
       percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ns) FILTER (WHERE outcome = 'success'),
       percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ns) FILTER (WHERE outcome = 'success')
  FROM usage_records
 WHERE model_id = %(model_id)s AND called_at >= now() - interval '30 days' AND called_at < now()
"""


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _stats(samples_ms: list[float]) -> dict:
    return {
        "n": len(samples_ms),
        "mean_ms": statistics.fmean(samples_ms),
        "p50_ms": _percentile(samples_ms, 0.50),
        "p90_ms": _percentile(samples_ms, 0.90),
        "p99_ms": _percentile(samples_ms, 0.99),
    }


def _setup(address: str) -> list[str]:
    """The recorded model (priced) and USERS users with 1,000 USD each; returns their ids."""
    import grpc

    from qdata.v1 import ledger_pb2, ledger_pb2_grpc, usage_pb2, usage_pb2_grpc, user_pb2, user_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        usage = usage_pb2_grpc.UsageServiceStub(channel)
        users = user_pb2_grpc.UserServiceStub(channel)
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        price = usage_pb2.ModelPrice(
            input_micros_per_million_tokens=150_000,
            output_micros_per_million_tokens=600_000,
            cached_input_micros_per_million_tokens=75_000,
            reasoning_micros_per_million_tokens=600_000,
        )
        for model_id in (RECORDED_MODEL, BIG_MODEL, SMALL_MODEL):
            request = usage_pb2.UpsertModelRequest(
                request_id=str(uuid.uuid4()),
                model=usage_pb2.Model(id=model_id, provider="bench", display_name=model_id),
            )
            if model_id == RECORDED_MODEL:  # the other two get a price dated back in _generate
                request.price.CopyFrom(price)
            usage.UpsertModel(request, timeout=10)
        ids = []
        for number in range(USERS):
            name = f"bench{number:03d}{uuid.uuid4().hex[:6]}"
            user = users.CreateUser(
                user_pb2.CreateUserRequest(
                    request_id=str(uuid.uuid4()),
                    email=f"{name}@example.com",
                    username=name,
                    password="bench password 123",
                ),
                timeout=10,
            ).user
            ledger.Deposit(
                ledger_pb2.DepositRequest(
                    request_id=str(uuid.uuid4()),
                    user_id=user.id,
                    amount_micros=1_000_000_000,
                    source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
                ),
                timeout=10,
            )
            ids.append(user.id)
    return ids


def _requests(users: list[str], count: int) -> list:
    from google.protobuf import duration_pb2

    from qdata.v1 import usage_pb2

    return [
        usage_pb2.RecordUsageRequest(
            request_id=str(uuid.uuid4()),
            user_id=users[i % len(users)],
            model_id=RECORDED_MODEL,
            input_tokens=1000 + i % 500,
            output_tokens=200 + i % 100,
            latency=duration_pb2.Duration(nanos=300_000_000 + i % 1000 * 1000),
            outcome=usage_pb2.USAGE_OUTCOME_SUCCESS,
        )
        for i in range(count)
    ]


async def _one_by_one(address: str, requests: list, concurrency: int) -> float:
    import grpc

    from qdata.v1 import usage_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        queue = list(reversed(requests))

        async def worker() -> None:
            while queue:
                request = queue.pop()
                reply = await stub.RecordUsage(request, timeout=60)
                if not reply.record.billed:
                    raise RuntimeError("a RecordUsage call was not billed")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


async def _batched(address: str, requests: list, batch_size: int, in_flight: int = 2) -> float:
    import grpc

    from qdata.v1 import usage_pb2, usage_pb2_grpc

    batches = [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        queue = list(reversed(batches))

        async def worker() -> None:
            while queue:
                batch = queue.pop()
                reply = await stub.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=batch), timeout=300)
                if reply.failed_count:
                    failed = next(r for r in reply.results if r.error_code)
                    raise RuntimeError(f"a batch item failed: {failed.error_code} {failed.error_message}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return time.perf_counter() - started


def _generate(database_url: str, model_id: str, count: int, users: int) -> float:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Partitions for the past month (the server keeps only the last 7 days' and later ones).
        conn.execute("SELECT usage_create_partition(now() - make_interval(days => d)) FROM generate_series(0, 31) d")
        conn.execute(
            "INSERT INTO model_prices (model_id, currency_code, input_micros_per_million, output_micros_per_million,"
            " cached_input_micros_per_million, reasoning_micros_per_million, effective_at)"
            " VALUES (%s, 'USD', 150000, 600000, 75000, 600000, now() - interval '60 days')",
            (model_id,),
        )
        conn.execute("UPDATE models SET currency_code = 'USD' WHERE model_id = %s", (model_id,))
        conn.execute(_GENERATE, {"model_id": model_id, "count": count, "users": users})
    return time.perf_counter() - started


def _fold_all(database_url: str) -> float:
    """Folds the queue empty (the server's folder may be at it too; one folder at a time)."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while conn.execute("SELECT EXISTS (SELECT 1 FROM usage_rollup_queue)").fetchone()[0]:
            if not conn.execute("SELECT usage_fold(200000)").fetchone()[0]:
                time.sleep(0.2)
        conn.execute("VACUUM (ANALYZE)")
    return time.perf_counter() - started


def _brute_force_ms(database_url: str, model_id: str, repeat: int = 3) -> float:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            conn.execute(_BRUTE_FORCE, {"model_id": model_id}).fetchall()
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _measure_stats(address: str, calls: int, rounds: int, expected: dict[str, int]) -> dict:
    """Sequential GetModelStats calls (one in flight) per model and window, in alternating rounds."""
    import grpc
    from google.protobuf import duration_pb2

    from qdata.v1 import usage_pb2, usage_pb2_grpc

    windows = {"24h": None, "30d": duration_pb2.Duration(seconds=30 * 86400)}
    samples: dict[str, dict[str, list[float]]] = {m: {w: [] for w in windows} for m in (SMALL_MODEL, BIG_MODEL)}
    with grpc.insecure_channel(address) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)

        def call(model_id: str, window) -> float:
            request = usage_pb2.GetModelStatsRequest(model_id=model_id, window=window)
            started = time.perf_counter()
            stats = stub.GetModelStats(request, timeout=60).stats
            elapsed = (time.perf_counter() - started) * 1000
            if window is not None and stats.request_count != expected[model_id]:
                raise RuntimeError(
                    f"{model_id}: {stats.request_count} requests in 30 days, expected {expected[model_id]}"
                )
            return elapsed

        for model_id in samples:
            for window in windows.values():
                for _ in range(10):  # warm-up: connections, prepared statements, caches
                    call(model_id, window)
        models = list(samples)
        for number in range(rounds):
            for model_id in models if number % 2 == 0 else models[::-1]:
                for label, window in windows.items():
                    samples[model_id][label] += [call(model_id, window) for _ in range(calls // rounds)]
    return samples


def run(args) -> int:
    """Runs the usage suite; returns the exit status."""
    print(
        f"qdata usage bench: {args.records:,} records one by one ({args.concurrency} in flight) vs in batches of "
        f"{args.batch_size}, {args.rounds} alternating rounds; GetModelStats over {args.big_records:,} vs "
        f"{args.small_records:,} records; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    settings = {
        "records": args.records,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "big_records": args.big_records,
        "small_records": args.small_records,
        "stats_calls": args.stats_calls,
        "workers": args.workers[0],
    }

    def body(run: SuiteRun) -> None:
        import psycopg

        database_url, address = run.start(workers=args.workers[0], bcrypt_cost=args.bcrypt_cost)
        users = _setup(address)

        print("recording ...", flush=True)
        throughput: dict[str, list[float]] = {"one_by_one": [], "batch": []}
        sent = 0
        for number in range(args.rounds):
            order = ("one_by_one", "batch") if number % 2 == 0 else ("batch", "one_by_one")
            for mode in order:
                requests = _requests(users, args.records)
                if mode == "one_by_one":
                    seconds = asyncio.run(_one_by_one(address, requests, args.concurrency))
                else:
                    seconds = asyncio.run(_batched(address, requests, args.batch_size))
                sent += len(requests)
                throughput[mode].append(len(requests) / seconds)
                print(f"  round {number + 1} {mode:<10} {len(requests) / seconds:>9.1f} records/s", flush=True)
        with psycopg.connect(database_url) as conn:
            stored = conn.execute(
                "SELECT count(*) FROM usage_records WHERE model_id = %s", (RECORDED_MODEL,)
            ).fetchone()
        if stored[0] != sent:
            raise RuntimeError(f"{stored[0]} records stored, {sent} sent")
        one, batch = statistics.median(throughput["one_by_one"]), statistics.median(throughput["batch"])
        run.report["recording"] = {
            "records_per_second": throughput,
            "median_one_by_one": one,
            "median_batch": batch,
            "ratio_batch_over_one_by_one": batch / one,
        }

        print("generating usage records ...", flush=True)
        run.report["generate_seconds"] = {
            BIG_MODEL: _generate(database_url, BIG_MODEL, args.big_records, 5000),
            SMALL_MODEL: _generate(database_url, SMALL_MODEL, args.small_records, 500),
        }
        run.report["fold_seconds"] = _fold_all(database_url)
        print(
            f"  {args.big_records:,} + {args.small_records:,} records in "
            f"{sum(run.report['generate_seconds'].values()):.1f}s, folded in {run.report['fold_seconds']:.1f}s",
            flush=True,
        )
        print("measuring GetModelStats ...", flush=True)
        expected = {BIG_MODEL: args.big_records, SMALL_MODEL: args.small_records}
        samples = _measure_stats(address, args.stats_calls, args.rounds, expected)
        results = {m: {w: _stats(v) for w, v in by_window.items()} for m, by_window in samples.items()}
        run.report["model_stats"] = results
        run.report["model_stats_ratio_big_over_small"] = {
            w: {s: results[BIG_MODEL][w][s] / results[SMALL_MODEL][w][s] for s in ("mean_ms", "p50_ms", "p99_ms")}
            for w in ("24h", "30d")
        }
        run.report["brute_force_30d_ms"] = {
            BIG_MODEL: _brute_force_ms(database_url, BIG_MODEL),
            SMALL_MODEL: _brute_force_ms(database_url, SMALL_MODEL),
        }
        print(_summary(run.report), flush=True)

    return run_suite("usage", settings, args.out, body)


def _summary(report: dict) -> str:
    rec = report["recording"]
    settings = report["settings"]
    stats, ratios = report["model_stats"], report["model_stats_ratio_big_over_small"]
    big, small = f"{settings['big_records']:,}", f"{settings['small_records']:,}"
    lines = [
        f"  RecordUsage one by one ({settings['concurrency']} in flight): {rec['median_one_by_one']:>9.1f} records/s "
        f"{[round(v, 1) for v in rec['records_per_second']['one_by_one']]}",
        f"  RecordUsageBatch ({settings['batch_size']} per call):        {rec['median_batch']:>9.1f} records/s "
        f"{[round(v, 1) for v in rec['records_per_second']['batch']]}",
        f"  ratio batch / one by one: {rec['ratio_batch_over_one_by_one']:.1f}",
        "",
        f"  GetModelStats {'':<14}{'over ' + small:>18}{'over ' + big:>20}{'ratio big/small':>18}",
    ]
    for window in ("24h", "30d"):
        for stat in ("p50_ms", "mean_ms", "p99_ms"):
            lines.append(
                f"  {window + ' window ' + stat.split('_')[0]:<28}{stats[SMALL_MODEL][window][stat]:>15.2f} ms"
                f"{stats[BIG_MODEL][window][stat]:>17.2f} ms{ratios[window][stat]:>18.2f}"
            )
    brute = report["brute_force_30d_ms"]
    lines.append(
        f"  for scale, the 30-day figures by brute force over the raw records in SQL: {brute[SMALL_MODEL]:.1f} ms "
        f"over {small}, {brute[BIG_MODEL]:.1f} ms over {big}"
    )
    return "\n".join(lines)
