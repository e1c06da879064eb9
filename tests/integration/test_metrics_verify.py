"""The scheduled verification's bounded walk (verify_schedule.py), run by hand against a real server.

Segments of one event per chain per pass make the bounds visible: a run checks at most two events
per chain, catching up takes as many runs as the longest chain, an old event edited after it was
verified is found by the re-check within a cycle, and a break stays reported on every later run.
The schedule acts as the serving role, so these also prove it may read the chain heads.
"""

from __future__ import annotations

from qdata.v1 import ledger_pb2
from qdata_server import verify_schedule
from qdata_server.verify_schedule import ScheduledVerification
from tests.support.audit import seal
from tests.support.calls import create_user, rid
from tests.support.database import sql


async def chains(api) -> dict[int, int]:
    """Each chain's head position."""
    return {
        r["chain_shard"]: r["last_seq"] for r in await sql(api, "SELECT chain_shard, last_seq FROM audit_chain_heads")
    }


async def test_the_walk_is_bounded_catches_up_and_finds_an_old_edit_on_every_run(api, monkeypatch):
    monkeypatch.setattr(verify_schedule, "SEGMENT", 1)
    for _ in range(100):
        await create_user(api)
    await seal(api)  # the test server runs no background sealer
    heads = await chains(api)
    longest = max(heads.values())
    assert longest >= 3, heads  # some chain holds several events (100 events over 32 chains)
    schedule = ScheduledVerification(api.server.deps)

    runs = [await schedule.run() for _ in range(longest)]
    # At most one new event and one re-checked event per chain per run.
    assert all(run.audit_checked <= 2 * len(heads) for run in runs)
    assert all(not run.problems and run.discrepancies == 0 for run in runs)
    # The new events were checked once each by now (the rest was the re-check).
    assert sum(run.audit_checked for run in runs) >= sum(heads.values())

    # The first event of the longest chain, verified long ago, is edited.
    shard = max(heads, key=heads.__getitem__)
    await sql(api, "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete")
    await sql(api, "UPDATE audit_events SET summary = '{}'::jsonb WHERE chain_shard = %s AND chain_seq = 1", (shard,))
    await sql(api, "ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update_delete")
    later = [await schedule.run() for _ in range(longest + 1)]
    first_found = next(i for i, run in enumerate(later) if run.problems)
    assert first_found <= longest  # within one cycle of the re-check
    # Once found, reported on every later run (the re-check keeps its position before the break).
    for run in later[first_found:] + [await schedule.run() for _ in range(2)]:
        assert [(p.chain_shard, p.chain_seq, p.kind) for p in run.problems] == [(shard, 1, "edited")]


async def test_a_run_counts_verify_ledgers_discrepancies_and_a_cut_head(api):
    user = await create_user(api)
    await api.ledger.Deposit(
        ledger_pb2.DepositRequest(
            request_id=rid(),
            user_id=user.id,
            amount_micros=5_000_000,
            currency_code="USD",
            source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
        )
    )
    await seal(api)
    schedule = ScheduledVerification(api.server.deps)
    clean = await schedule.run()
    assert clean.discrepancies == 0 and not clean.problems and clean.audit_checked >= 2

    await sql(api, "UPDATE ledger_accounts SET posted_micros = posted_micros + 1 WHERE user_id = %s", (user.id,))
    verified = await api.ledger.VerifyLedger(ledger_pb2.VerifyLedgerRequest(max_discrepancies=1000))
    outcome = await schedule.run()
    assert outcome.discrepancies == len(verified.discrepancies) > 0

    # The head of a chain moved back behind the verified position (its last events cut off).
    [shard] = [
        r["chain_shard"] for r in await sql(api, "SELECT chain_shard FROM audit_chain_heads WHERE last_seq > 0 LIMIT 1")
    ]
    await sql(api, "UPDATE audit_chain_heads SET last_seq = 0 WHERE chain_shard = %s", (shard,))
    cut = await schedule.run()
    assert [(p.chain_shard, p.kind) for p in cut.problems] == [(shard, "truncated")]
