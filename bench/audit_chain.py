"""`python -m bench.audit_chain [--calls N] [--concurrency C]`: what the audit hash chain costs.

Since migration 0017 writers append audit events unsealed and one sealer chains them after commit
(audit_seal). This runs the same burst of concurrent Deposit calls (a cheap mutation, one audit
record each) through an in-process server against two databases of one embedded PostgreSQL: as
migrated ("sealer": the server's background sealer on, at its default interval) and with the
trigger of the release before 0017 put back ("in-trigger": each mutation locks its chain head,
hashes its event and holds the lock to commit), in alternating rounds. It prints calls per second,
latency percentiles and PostgreSQL CPU per call (the cluster's processes, from /proc; the sealer's
work included: the backlog is sealed before the reading). It asserts no speed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench import cpu
from qdata.v1 import ledger_pb2, ledger_pb2_grpc, user_pb2, user_pb2_grpc
from qdata_server import audit_sealer, embedded
from qdata_server.app import QdataServer
from qdata_server.config import Settings
from qdata_server.db import migrate


def _db(url: str, name: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo(**params)


# The chain trigger of the release before 0017 (db/functions/audit.sql then).
IN_TRIGGER = """
CREATE OR REPLACE FUNCTION audit_events_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    head audit_chain_heads;
BEGIN
    SELECT * INTO head FROM audit_chain_heads WHERE chain_shard = (txid_current() % 32)::smallint FOR UPDATE;
    NEW.written_xid := pg_current_xact_id()::text::bigint;
    NEW.chain_shard := head.chain_shard;
    NEW.chain_seq := head.last_seq + 1;
    NEW.prev_hash := head.last_hash;
    NEW.hash := audit_event_hash(NEW.prev_hash, NEW.chain_shard, NEW.chain_seq, NEW.audit_event_id,
                                 NEW.occurred_at, NEW.actor, NEW.user_id, NEW.action, NEW.target_type,
                                 NEW.target_id, NEW.request_id, NEW.summary);
    UPDATE audit_chain_heads SET last_seq = NEW.chain_seq, last_hash = NEW.hash WHERE chain_shard = head.chain_shard;
    RETURN NEW;
END;
$$
"""


def _postgres_seconds(data: Path) -> float:
    """CPU seconds the embedded cluster (postmaster and backends) has used so far."""
    pid = int((data / "postmaster.pid").read_text().split()[0])
    return cpu.tree_seconds([pid])


async def _burst(url: str, calls: int, concurrency: int, pool: int, data: Path) -> tuple[float, list[float], float]:
    settings = dataclasses.replace(Settings(), database_url=url, pool_max_size=pool, bcrypt_cost=4)
    if "allow_insecure" in {f.name for f in dataclasses.fields(Settings)}:
        settings = dataclasses.replace(settings, allow_insecure=True)
    server = QdataServer(settings, url)
    port = await server.start("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    users = user_pb2_grpc.UserServiceStub(channel)
    ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
    ids = []
    for _ in range(concurrency):
        name = "u" + uuid.uuid4().hex[:12]
        user = await users.CreateUser(
            user_pb2.CreateUserRequest(
                request_id=str(uuid.uuid4()),
                email=f"{name}@example.com",
                username=name,
                password="correct horse battery staple",
            )
        )
        ids.append(user.user.id)
    latencies: list[float] = []
    queue = list(range(calls))

    async def worker(user_id: str) -> None:
        while queue:
            queue.pop()
            start = time.perf_counter()
            await ledger.Deposit(
                ledger_pb2.DepositRequest(
                    request_id=str(uuid.uuid4()),
                    user_id=user_id,
                    amount_micros=1000,
                    currency_code="USD",
                    source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
                )
            )
            latencies.append(time.perf_counter() - start)

    await audit_sealer.seal_all(url)
    pg_before = _postgres_seconds(data)
    start = time.perf_counter()
    await asyncio.gather(*(worker(u) for u in ids))
    elapsed = time.perf_counter() - start
    await channel.close()
    await server.stop(1)
    await audit_sealer.seal_all(url)  # what the sealer had left: part of the calls' cost
    pg_ms = (_postgres_seconds(data) - pg_before) * 1000 / calls
    return calls / elapsed, latencies, pg_ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="qdata-bench-audit-")) / "data"
    root = embedded.start(str(data), database="postgres", delete_on_exit=True)
    urls = {}
    names = ("sealer", "in-trigger")
    with psycopg.connect(root, autocommit=True) as conn:
        for name in names:
            db = "bench_" + name.replace("-", "_")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
            urls[name] = _db(root, db)
            migrate.migrate(urls[name])
    with psycopg.connect(urls["in-trigger"], autocommit=True) as conn:
        conn.execute(IN_TRIGGER)
    results: dict[str, list[tuple[float, list[float], float]]] = {name: [] for name in names}
    order = list(names)
    for _ in range(args.rounds):
        for name in order:
            results[name].append(asyncio.run(_burst(urls[name], args.calls, args.concurrency, args.concurrency, data)))
        order.reverse()
    for name, runs in results.items():
        rates = [r for r, _, _ in runs]
        lat = sorted(x for _, ls, _ in runs for x in ls)
        p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
        pg = [c for _, _, c in runs]
        print(
            f"{name:10s} {statistics.median(rates):8.0f} calls/s (median of {len(rates)})"
            f"  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  PostgreSQL CPU/call {statistics.median(pg):.3f} ms"
            f" (runs: {', '.join(f'{c:.3f}' for c in pg)})"
        )


if __name__ == "__main__":
    main()
