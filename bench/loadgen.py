"""A multi-process grpc.aio load generator for calls whose request_id must vary per call.

h2load posts one fixed body, and a replayed request_id returns the stored answer without doing
the work, so Charge and RecordUsage(Batch) are driven from Python: `processes` spawned processes
(spawned, not forked: the parent has gRPC objects), each with one grpc.aio channel and
`concurrency` callers that build a fresh request per call, check every answer, and loop until
the window ends. The parent starts them, waits until each has connected and made its unmeasured
warm-up calls, then opens the window for all at once; it returns calls, errors and latency
percentiles. A Python generator has its own ceiling (the same generator against the bare echo
measures it); a figure near that ceiling is the generator's, not the server's.

Kinds (`Spec.kind`):
- echo: the bare echo, posting a serialized ChargeRequest with a fresh request_id (as the
  Charge kinds do); the answer must equal the request.
- charge: Charge of 1 micro-unit of USD from one of `users`; the answer must be that
  transaction (request_id, user, amount).
- record_usage: one billed RecordUsage per call; the answer must be billed.
- record_usage_batch: RecordUsageBatch of `batch` records; none may fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import statistics
import time
import uuid
from typing import Any

ECHO_PATH = "/bench.Echo/Echo"
DESCRIPTION = "bench table"


@dataclasses.dataclass
class Spec:
    """What the generator's processes call, and how hard."""

    kind: str
    address: str
    users: list[str] = dataclasses.field(default_factory=list)
    model_id: str = ""
    batch: int = 1
    processes: int = 2
    concurrency: int = 8
    warmup_calls: int = 4


@dataclasses.dataclass
class Result:
    """Calls done in the window by all processes; `items` counts records for batches."""

    kind: str
    calls: int
    items: int
    errors: int
    seconds: float
    calls_per_s: float
    items_per_s: float
    warmup_calls: int
    # CPU seconds the generator's processes used in the window (all their threads).
    cpu_s: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    first_error: str | None

    @property
    def ok(self) -> bool:
        return self.calls > 0 and self.errors == 0


def _charge_request(user_id: str) -> Any:
    from qdata.v1 import ledger_pb2

    return ledger_pb2.ChargeRequest(
        request_id=str(uuid.uuid4()), user_id=user_id, amount_micros=1, currency_code="USD", description=DESCRIPTION
    )


def _usage_request(user_id: str, model_id: str, i: int) -> Any:
    from google.protobuf import duration_pb2

    from qdata.v1 import usage_pb2

    return usage_pb2.RecordUsageRequest(
        request_id=str(uuid.uuid4()),
        user_id=user_id,
        model_id=model_id,
        input_tokens=1000 + i % 500,
        output_tokens=200 + i % 100,
        latency=duration_pb2.Duration(nanos=300_000_000 + i % 1000 * 1000),
        outcome=usage_pb2.USAGE_OUTCOME_SUCCESS,
    )


def _caller(spec: Spec, channel: Any, index: int) -> Any:
    """An async function making one checked call; returns the items it carried."""
    from qdata.v1 import ledger_pb2_grpc, usage_pb2, usage_pb2_grpc

    counter = iter(range(index, 1 << 62, spec.processes * spec.concurrency))
    if spec.kind == "echo":
        echo = channel.unary_unary(ECHO_PATH)

        async def call() -> int:
            body = _charge_request(spec.users[0] if spec.users else str(uuid.uuid4())).SerializeToString()
            if await echo(body, timeout=30) != body:
                raise RuntimeError("the echo answered something other than the request")
            return 1

    elif spec.kind == "charge":
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)

        async def call() -> int:
            user_id = spec.users[next(counter) % len(spec.users)]
            request = _charge_request(user_id)
            tx = (await ledger.Charge(request, timeout=30)).transaction
            if tx.request_id != request.request_id or tx.user_id != user_id or tx.amount_micros != 1:
                raise RuntimeError(f"Charge answered an unexpected transaction: {tx}")
            return 1

    elif spec.kind == "record_usage":
        usage = usage_pb2_grpc.UsageServiceStub(channel)

        async def call() -> int:
            i = next(counter)
            request = _usage_request(spec.users[i % len(spec.users)], spec.model_id, i)
            record = (await usage.RecordUsage(request, timeout=30)).record
            if not record.billed or record.request_id != request.request_id:
                raise RuntimeError(f"RecordUsage answered an unexpected record: {record}")
            return 1

    elif spec.kind == "record_usage_batch":
        usage = usage_pb2_grpc.UsageServiceStub(channel)

        async def call() -> int:
            requests = []
            for _ in range(spec.batch):
                i = next(counter)
                requests.append(_usage_request(spec.users[i % len(spec.users)], spec.model_id, i))
            reply = await usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=requests), timeout=120)
            if reply.failed_count or reply.recorded_count != spec.batch or len(reply.results) != spec.batch:
                failed = next((r for r in reply.results if r.error_code), None)
                raise RuntimeError(f"a batch was not recorded whole: {reply.recorded_count} recorded, {failed}")
            return spec.batch

    else:
        raise ValueError(f"unknown kind {spec.kind!r}")
    return call


async def _drive(spec: Spec, process_index: int, pipe: Any) -> dict[str, Any]:
    import grpc

    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(spec.address, options=options) as channel:
        callers = [_caller(spec, channel, process_index * spec.concurrency + i) for i in range(spec.concurrency)]
        warm = 0
        for call in callers:
            for _ in range(spec.warmup_calls):
                await call()
                warm += 1
        pipe.send("ready")
        seconds = pipe.recv()  # the parent opens the window for every process at once
        deadline = time.monotonic() + seconds
        latencies: list[float] = []
        counts = {"calls": 0, "items": 0, "errors": 0}
        first_error: list[str] = []

        async def loop(call: Any) -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    items = await call()
                except Exception as exc:  # counted and reported; the run is then invalid
                    counts["errors"] += 1
                    if not first_error:
                        first_error.append(f"{type(exc).__name__}: {exc}"[:500])
                    continue
                latencies.append(time.perf_counter() - started)
                counts["calls"] += 1
                counts["items"] += items

        started, cpu_started = time.monotonic(), time.process_time()
        await asyncio.gather(*(loop(call) for call in callers))
        elapsed, cpu_used = time.monotonic() - started, time.process_time() - cpu_started
    return {
        **counts,
        "seconds": elapsed,
        "cpu_s": cpu_used,
        "latencies": latencies,
        "warm": warm,
        "first_error": first_error,
    }


def _child(spec: Spec, process_index: int, pipe: Any) -> None:
    try:
        pipe.send(asyncio.run(_drive(spec, process_index, pipe)))
    except Exception as exc:
        pipe.send({"failed": f"{type(exc).__name__}: {exc}"})


def start(spec: Spec) -> list[tuple[Any, Any]]:
    """Spawns the processes and waits until each has warmed up; returns them with their pipes."""
    context = multiprocessing.get_context("spawn")
    started = []
    for index in range(spec.processes):
        parent, child = context.Pipe()
        process = context.Process(target=_child, args=(spec, index, child), daemon=True)
        process.start()
        started.append((process, parent))
    for process, pipe in started:
        if not pipe.poll(300):
            raise RuntimeError(f"load generator process {process.pid} did not get ready")
        message = pipe.recv()
        if message != "ready":
            raise RuntimeError(f"load generator failed before the window: {message}")
    return started


def finish(spec: Spec, started: list[tuple[Any, Any]], seconds: float) -> Result:
    """Opens the window for `seconds`, collects every process's counts and joins them."""
    for _process, pipe in started:
        pipe.send(seconds)
    parts = []
    for process, pipe in started:
        if not pipe.poll(seconds + 300):
            raise RuntimeError(f"load generator process {process.pid} did not finish")
        parts.append(pipe.recv())
        process.join(30)
    failed = [p["failed"] for p in parts if "failed" in p]
    if failed:
        raise RuntimeError(f"load generator failed: {failed[0]}")
    latencies = sorted(ms * 1000 for p in parts for ms in p["latencies"])
    calls = sum(p["calls"] for p in parts)
    items = sum(p["items"] for p in parts)
    elapsed = max(p["seconds"] for p in parts)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) >= 2 else None
    errors = [e for p in parts for e in p["first_error"]]
    return Result(
        kind=spec.kind,
        calls=calls,
        items=items,
        errors=sum(p["errors"] for p in parts),
        seconds=elapsed,
        calls_per_s=calls / elapsed if elapsed else 0.0,
        items_per_s=items / elapsed if elapsed else 0.0,
        warmup_calls=sum(p["warm"] for p in parts),
        cpu_s=sum(p["cpu_s"] for p in parts),
        p50_ms=cuts[49] if cuts else None,
        p99_ms=cuts[98] if cuts else None,
        mean_ms=statistics.fmean(latencies) if latencies else None,
        first_error=errors[0] if errors else None,
    )
