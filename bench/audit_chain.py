"""`python -m bench.audit_chain [--calls N] [--concurrency C]`: what the audit hash chain costs.

The chains (migration 0006) serialize audit inserts per chain: each mutation holds its chain head's row
lock from its audit insert until it commits. This runs the same burst of concurrent Deposit calls
(a cheap mutation, one audit record each) through an in-process server against two databases of
one embedded PostgreSQL: as migrated (32 chains), with a single chain (the trigger's modulus
replaced by 1: the design 0006 rejected) and with the chain trigger disabled (the columns made
nullable), in alternating rounds, and prints calls per second and latency percentiles for each.
It asserts no speed.
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

from qdata.v1 import ledger_pb2, ledger_pb2_grpc, user_pb2, user_pb2_grpc
from qdata_server import embedded
from qdata_server.app import QdataServer
from qdata_server.config import Settings
from qdata_server.db import migrate


def _db(url: str, name: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo(**params)


async def _burst(url: str, calls: int, concurrency: int, pool: int) -> tuple[float, list[float]]:
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

    start = time.perf_counter()
    await asyncio.gather(*(worker(u) for u in ids))
    elapsed = time.perf_counter() - start
    await channel.close()
    await server.stop(1)
    return calls / elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="qdata-bench-audit-")) / "data"
    root = embedded.start(str(data), database="postgres", delete_on_exit=True)
    urls = {}
    with psycopg.connect(root, autocommit=True) as conn:
        for name in ("chained", "single", "unchained"):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"bench_{name}")))
            urls[name] = _db(root, f"bench_{name}")
            migrate.migrate(urls[name])
    with psycopg.connect(urls["single"], autocommit=True) as conn:
        body = conn.execute("SELECT pg_get_functiondef('audit_events_chain'::regproc)").fetchone()[0]
        assert "% 32" in body
        conn.execute(body.replace("% 32", "% 1"))
    with psycopg.connect(urls["unchained"], autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_chain")
        conn.execute(
            "ALTER TABLE audit_events ALTER COLUMN prev_hash DROP NOT NULL, ALTER COLUMN hash DROP NOT NULL,"
            " ALTER COLUMN chain_shard DROP NOT NULL, ALTER COLUMN chain_seq DROP NOT NULL"
        )
        conn.execute("ALTER TABLE audit_events DROP CONSTRAINT audit_events_hash_length")
    results: dict[str, list[tuple[float, list[float]]]] = {"chained": [], "single": [], "unchained": []}
    order = ["chained", "single", "unchained"]
    for _ in range(args.rounds):
        for name in order:
            results[name].append(asyncio.run(_burst(urls[name], args.calls, args.concurrency, args.concurrency)))
        order.reverse()
    for name, runs in results.items():
        rates = [r for r, _ in runs]
        lat = sorted(x for _, ls in runs for x in ls)
        p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
        print(
            f"{name:10s} {statistics.median(rates):8.0f} calls/s (median of {len(rates)})"
            f"  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
        )


if __name__ == "__main__":
    main()
