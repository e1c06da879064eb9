"""The audit sealer (migration 0017): events are appended unsealed and chained after commit.

Every event gets sealed exactly once, whatever order its transaction commits in and however many
sealers run; verify-audit checks the sealed ones and reports the unsealed ones as such.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qdata_server import audit_chain, audit_sealer
from tests.support.audit import seal
from tests.support.calls import create_user
from tests.support.database import sql
from tests.support.ledger import deposit
from tests.support.server import Api

APPEND = "SELECT audit_append('test', NULL, 'test.Seal', 'thing', %s, %s, '{}'::jsonb)"


async def counts(api: Api) -> dict[str, int]:
    """Events, sealed events, and the positions the chain heads account for."""
    (row,) = await sql(
        api,
        "SELECT (SELECT count(*) FROM audit_events) AS events,"
        " (SELECT count(*) FROM audit_events WHERE chain_seq IS NOT NULL) AS sealed,"
        " (SELECT sum(last_seq) FROM audit_chain_heads)::bigint AS positions",
    )
    return row


async def assert_all_sealed_once(api: Api) -> None:
    report = await audit_chain.verify(api.database_url, batch_size=7, max_unsealed_seconds=3600)
    assert report.ok, report.problems
    found = await counts(api)
    # Every event sealed, each at one position: the heads account for exactly as many.
    assert found["events"] == found["sealed"] == found["positions"] == report.checked
    assert report.unsealed == 0 and report.oldest_unsealed_seconds is None


async def test_events_are_sealed_once_whatever_order_their_transactions_commit_in(api):
    await create_user(api)
    early = await psycopg.AsyncConnection.connect(api.database_url)
    writers = [await psycopg.AsyncConnection.connect(api.database_url) for _ in range(5)]
    try:
        # `early` takes its transaction id first but appends last (the highest ids); the others
        # append in turn (writers[0] the lowest ids) and commit newest first.
        await early.execute("SELECT pg_current_xact_id()")
        for n, conn in enumerate(writers):
            for k in range(2):
                await conn.execute(APPEND, (f"{n}.{k}", f"r{n}"))
        await early.execute(APPEND, ("early", "early"))
        sealed_per_round = []
        for conn in reversed(writers):
            await conn.commit()
            sealed_per_round.append(await seal(api))
        # While a transaction older than theirs runs, committed events wait: it might still
        # append, and must not end up behind them on its chain.
        assert sealed_per_round == [1, 0, 0, 0, 0]  # (1: create_user's event, long committed)
        assert (await counts(api))["sealed"] == 1
        await early.commit()
        assert await seal(api) == 11
        assert await seal(api) == 0  # nothing twice
    finally:
        for conn in (early, *writers):
            await conn.close()
    await assert_all_sealed_once(api)


async def test_a_rolled_back_transaction_holds_nothing_back(api):
    writer = await psycopg.AsyncConnection.connect(api.database_url)
    try:
        await writer.execute(APPEND, ("gone", "gone"))
        await sql(api, APPEND, ("kept", "kept"))
        assert await seal(api) == 0
        await writer.rollback()
    finally:
        await writer.close()
    assert await seal(api) == 1
    await assert_all_sealed_once(api)


async def test_concurrent_writers_and_sealers_seal_every_event_once(api_with):
    api = await api_with(audit_seal_seconds=0.01)  # the server's own sealer, every 10 ms
    users = await asyncio.gather(*(create_user(api) for _ in range(20)))

    async def sealers() -> None:
        for _ in range(10):
            await asyncio.gather(seal(api), audit_sealer.seal_all(api.database_url, batch=3))

    await asyncio.gather(*(deposit(api, u.id, 1000) for u in users for _ in range(3)), sealers())
    await seal(api, wait=True)
    await assert_all_sealed_once(api)
    assert (await counts(api))["events"] == 20 + 60


async def test_one_sealer_at_a_time(api):
    await sql(
        api,
        "INSERT INTO audit_events (actor, action, target_type, target_id, request_id)"
        " SELECT 'test', 'test.Seal', 'thing', n::text, 'r' FROM generate_series(1, 50) AS n",
    )
    async with await psycopg.AsyncConnection.connect(api.database_url) as holder:
        await holder.execute("SELECT pg_advisory_xact_lock(hashtextextended('qdata.audit_seal', 0))")
        assert await seal(api) == 0  # another sealer is at work: this round skips
        await holder.commit()
    results = await asyncio.gather(*(audit_sealer.seal_all(api.database_url, batch=4) for _ in range(4)))
    results.append(await seal(api, wait=True))
    assert sum(results) == 50
    await assert_all_sealed_once(api)


def verify_cli(api: Api) -> subprocess.CompletedProcess[str]:
    env = {"DATABASE_URL": api.database_url, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(
        [sys.executable, "-m", "qdata_server", "verify-audit"], env=env, capture_output=True, text=True, timeout=60
    )


async def test_unsealed_events_are_reported_as_unsealed_not_as_tampering(api):
    await create_user(api)
    await seal(api)
    await sql(api, APPEND, ("fresh", "fresh"))
    report = await audit_chain.verify(api.database_url, max_unsealed_seconds=3600)
    assert report.ok, report.problems
    assert (report.checked, report.unsealed) == (1, 1)
    assert report.oldest_unsealed_seconds is not None
    done = await asyncio.to_thread(verify_cli, api)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unsealed: 1 event(s) not chained yet" in done.stdout
    assert "1 event(s) verified" in done.stdout


async def test_an_event_unsealed_beyond_the_bound_fails_verification(api):
    (old,) = await sql(
        api,
        "INSERT INTO audit_events (occurred_at, actor, action, target_type, target_id, request_id)"
        " VALUES (now() - interval '2 hours', 'test', 'test.Seal', 'thing', 'old', 'r') RETURNING audit_event_id",
    )
    report = await audit_chain.verify(api.database_url, max_unsealed_seconds=60)
    assert [(p.audit_event_id, p.kind) for p in report.problems] == [(old["audit_event_id"], "stale")]
    assert report.unsealed == 1 and (report.oldest_unsealed_seconds or 0) > 60
    done = await asyncio.to_thread(verify_cli, api)  # the default bound: 60 s
    assert done.returncode == 1
    assert f"audit event {old['audit_event_id']} (unsealed): stale" in done.stdout
    # Sealed late is sealed all the same: the trail verifies again.
    env = {"DATABASE_URL": api.database_url, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    sealed = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "qdata_server", "seal-audit"], env=env, capture_output=True, text=True
    )
    assert sealed.returncode == 0 and "sealed 1 audit event(s)" in sealed.stdout, sealed.stdout + sealed.stderr
    assert (await asyncio.to_thread(verify_cli, api)).returncode == 0


async def test_sealed_events_stay_append_only(api):
    await sql(api, APPEND, ("x", "x"))
    await seal(api)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        await sql(api, "UPDATE audit_events SET chain_seq = chain_seq + 1000")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        await sql(api, "UPDATE audit_events SET chain_seq = NULL, chain_shard = NULL, prev_hash = NULL, hash = NULL")
    # Sealing an event changes its chain columns only.
    await sql(api, APPEND, ("y", "y"))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        await sql(
            api,
            "UPDATE audit_events SET actor = 'else', chain_shard = 0, chain_seq = 1000, prev_hash = hash, hash = hash"
            " WHERE chain_seq IS NULL",
        )


async def test_a_failing_sealer_leaves_writes_and_health_alone(api_with, caplog):
    caplog.set_level(logging.WARNING, logger="qdata.server")
    api = await api_with(audit_seal_seconds=0.01)
    # No chain head left to extend: every sealing round fails.
    await sql(api, "SET session_replication_role = replica; DELETE FROM audit_chain_heads")
    user = await create_user(api)
    await deposit(api, user.id, 1000)
    for _ in range(500):
        if any(r.getMessage() == "audit seal failed" for r in caplog.records):
            break
        await asyncio.sleep(0.02)
    failures = [r for r in caplog.records if r.getMessage() == "audit seal failed"]
    assert failures and failures[0].error_type == "RaiseException"
    assert await api.server.check_health()
    reply = await health_pb2_grpc.HealthStub(api.channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await deposit(api, user.id, 1000)
    assert (await counts(api))["sealed"] == 0


async def test_unsealed_events_restored_from_another_cluster_are_sealed(api):
    # A dump restored into a younger cluster: the writer's transaction id is ahead of every id here
    # (the insert trigger is off in replica mode, as it is for pg_restore's data).
    await sql(
        api,
        "SET session_replication_role = replica;"
        " INSERT INTO audit_events (actor, action, target_type, target_id, request_id, summary, written_xid)"
        " VALUES ('test', 'test.Restored', 'thing', '1', 'r', '{}', pg_current_xact_id()::text::bigint + 1000000)",
    )
    assert await seal(api) == 1
    await assert_all_sealed_once(api)
