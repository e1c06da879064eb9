"""Ledger and audit verification on a schedule (QDATA_VERIFY_INTERVAL_SECONDS; 0, the default: off).

Who runs it: worker 0 of each server (serve.py numbers the workers it forks; a server serving in
one process is worker 0), every QDATA_VERIFY_INTERVAL_SECONDS while serving. A worker index rather
than a PostgreSQL advisory lock: a session-level lock needs a session that outlives transactions,
which PgBouncer in transaction mode (a supported deployment) does not keep, and a
transaction-level lock would only keep runs from overlapping, not make one server the runner.
Each server then exports its own results from its own scrape (no pod's alert depends on another
pod's run); the price is one run per server per interval, each bounded as below.

One home per mechanism: the ledger checks are VerifyLedger's (ledger/reads.verify_ledger, one
REPEATABLE READ snapshot, its discrepancies capped at MAX_DISCREPANCIES), the audit checks are
`verify-audit`'s (audit_chain.walk_chain, the same hash recomputation). Bounded cost per run:

- VerifyLedger's queries, once (the same cost as one VerifyLedger call);
- per audit chain, at most SEGMENT events after the position the previous run verified (new
  events), and at most SEGMENT more of a re-check that walks the chain again from its start,
  SEGMENT events per run, wrapping round once it reaches the verified position: every event is
  checked again once per cycle, so an old event edited later is found within (chain length /
  SEGMENT) runs. With 32 chains that is at most 64 statements and 2 * 32 * SEGMENT events;
- all of it within a deadline of min(interval, MAX_RUN_SECONDS), which bounds each statement's
  statement_timeout (background.deadline).

A chain with a broken link keeps the position before it, so every later run finds the break
again until it is repaired (a restore). A completed run sets qdata_ledger_verify_discrepancies,
qdata_audit_verify_ok and qdata_verify_last_success_timestamp_seconds, and logs a warning for what
it found; a run that fails (the database unreachable, the deadline) is logged by the background
loop and leaves the gauges, the last success time included, as they were.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from qdata.v1 import ledger_pb2
from qdata_server import audit_chain, background
from qdata_server.audit_chain import GENESIS, Problem
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_all
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS
from qdata_server.ledger import reads

if TYPE_CHECKING:
    from qdata_server.deps import Deps
    from qdata_server.metrics_qdata import QdataMetrics

log = logging.getLogger("qdata.verify")

# Audit events checked per chain per pass (new events, and the re-check from the start).
SEGMENT = 500
# Discrepancies counted per run (VerifyLedger's largest max_discrepancies).
MAX_DISCREPANCIES = 1000
MAX_RUN_SECONDS = 300.0
# Broken links reported per run (the log line names the first few).
MAX_PROBLEMS = 100


@dataclasses.dataclass(frozen=True)
class Position:
    """A verified position in one chain: its sequence number and the hash stored there."""

    seq: int = 0
    hash: bytes = GENESIS


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one completed run found."""

    discrepancies: int
    truncated: bool
    audit_checked: int
    problems: list[Problem]


class ScheduledVerification:
    """The schedule's state in worker 0: how far each chain has been verified and re-checked."""

    def __init__(self, deps: Deps, metrics: QdataMetrics | None = None) -> None:
        self.deps = deps
        self.metrics = metrics
        self._verified: dict[int, Position] = {}
        self._rechecked: dict[int, Position] = {}

    def interval(self) -> float:
        return self.deps.settings.verify_interval_seconds

    async def run(self) -> Outcome:
        """One run; sets the gauges and logs what it found (raises if the run fails)."""
        # A run asked for with the schedule off (interval 0) gets the longest deadline.
        with background.deadline(min(self.interval() or MAX_RUN_SECONDS, MAX_RUN_SECONDS), "scheduled-verification"):
            ledger = await reads.verify_ledger(
                self.deps, ledger_pb2.VerifyLedgerRequest(max_discrepancies=MAX_DISCREPANCIES)
            )
            checked, problems = await self._verify_audit()
        outcome = Outcome(len(ledger.discrepancies), ledger.truncated, checked, problems)
        if self.metrics is not None:
            self.metrics.verify_gauges().completed(discrepancies=outcome.discrepancies, audit_ok=not problems)
        summary: dict[str, Any] = {
            "discrepancies": outcome.discrepancies,
            "discrepancies_truncated": outcome.truncated,
            "audit_events_checked": checked,
            "audit_problems": len(problems),
        }
        if outcome.discrepancies or problems:
            log.warning(
                "scheduled verification found problems",
                extra={
                    **summary,
                    "discrepancy_kinds": sorted(
                        {ledger_pb2.DiscrepancyKind.Name(d.kind) for d in ledger.discrepancies}
                    ),
                    "audit_first_problems": [str(p) for p in problems[:5]],
                },
            )
        else:
            log.info("scheduled verification passed", extra=summary)
        return outcome

    async def _verify_audit(self) -> tuple[int, list[Problem]]:
        """Checks each chain's new events and the next stretch of its re-check; returns (events, problems)."""
        heads = await self.deps.transaction(
            lambda conn: fetch_all(conn, "audit_chain_heads_read"), acting=ACTING_FOR_ALL_USERS
        )
        problems: list[Problem] = []
        checked = 0
        for head in heads:
            shard, head_seq, head_hash = head["chain_shard"], head["last_seq"], bytes(head["last_hash"])
            verified = self._verified.get(shard, Position())
            count, reached, found = await self._walk(shard, verified, head_seq)
            checked += count
            # Reached the head, or ran out of events before it (the chain's end is gone, or the head
            # was moved back behind the verified position).
            if not found and (reached.seq == head_seq or count < SEGMENT):
                problem = audit_chain.head_problem(shard, head_seq, head_hash, reached.seq, reached.hash)
                found = [problem] if problem is not None else []
            if found:
                problems += found
            else:
                verified = self._verified[shard] = reached
            # The re-check: from where it stopped (the start after a full cycle) towards the verified position.
            rechecked = self._rechecked.get(shard, Position())
            if rechecked.seq >= verified.seq:
                rechecked = Position()
            count, reached, found = await self._walk(shard, rechecked, verified.seq)
            checked += count
            if not found and reached.seq == verified.seq and reached.hash != verified.hash:
                found = [
                    Problem(
                        None,
                        shard,
                        verified.seq,
                        "edited",
                        "the event at the verified position changed since it was verified (re-hashed)",
                    )
                ]
            elif not found and reached.seq < verified.seq and count < SEGMENT:
                found = [
                    Problem(
                        None,
                        shard,
                        verified.seq,
                        "missing",
                        f"the events after position {reached.seq} up to the verified {verified.seq} are gone",
                    )
                ]
            if found:
                problems += found
            else:
                self._rechecked[shard] = reached
        return checked, problems[:MAX_PROBLEMS]

    async def _walk(self, shard: int, start: Position, upto_seq: int) -> tuple[int, Position, list[Problem]]:
        """Checks up to SEGMENT events of a chain after start, up to upto_seq, in one short transaction."""
        if start.seq >= upto_seq:
            return 0, start, []
        found: list[Problem] = []

        async def walk(conn: Conn) -> tuple[int, int, bytes]:
            found.clear()  # a retried attempt starts over
            return await audit_chain.walk_chain(
                conn,
                shard,
                after_seq=start.seq,
                after_hash=start.hash,
                upto_seq=upto_seq,
                problems=found,
                max_problems=MAX_PROBLEMS,
                batch_size=SEGMENT,
                limit=SEGMENT,
            )

        # Every user's audit events: the cross-user path.
        count, seq, last_hash = await self.deps.transaction(walk, acting=ACTING_FOR_ALL_USERS)
        return count, Position(seq, last_hash), found
