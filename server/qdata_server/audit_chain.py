"""Verification of the hash-chained audit trail (`python -m qdata_server verify-audit`).

Every audit event is chained, inside the database, to the event before it in one of 32 chains
(chosen by its writer's transaction id). Since migration 0017 the chaining happens after the
writer commits, in batches, by one sealer at a time (audit_seal in db/functions/audit.sql, run by
qdata_server.audit_sealer); until then an event is unsealed. The hash (migration 0006):

    hash = sha256(b"qdata.audit.v1" + prev_hash + field(shard) + field(seq) + field(id)
                  + field(time) + field(actor) + field(user_id) + field(action)
                  + field(target_type) + field(target_id) + field(request_id) + field(summary))

field(x) is the 4-byte big-endian length of x's UTF-8 text and the text (0xFFFFFFFF alone for
NULL). The verifier recomputes every hash here, in Python, rather than trusting a database
function an intruder could have replaced. Only the summary's text comes from the database
(`summary::text`, jsonb's canonical rendering of the stored value), so editing it still breaks
the hash.

The walk reads the chain heads first, then each chain up to its head's position in order, in
batches of short statements, so it runs beside live traffic. It reports, per broken link: an
edited event (its stored hash differs from the recomputed one), missing events (a gap in the
positions), a relinked event (its prev_hash is not its predecessor's hash: the predecessor was
edited and re-hashed, or events were swapped) and a chain cut short at the end (the head names a
position or hash its last event does not have).

Unsealed events are not tampering: they are counted, with the oldest one's age, after the walk.
An unsealed event older than the sealing bound (QDATA_AUDIT_SEAL_MAX_DELAY_SECONDS) is a problem
of its own kind, "stale": the sealer is not running or cannot write (docs/security.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import struct
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from qdata_server.db.sql import fetch_all

GENESIS = bytes(32)
_DOMAIN = b"qdata.audit.v1"
_NULL = b"\xff\xff\xff\xff"


def _field(value: str | None) -> bytes:
    if value is None:
        return _NULL
    data = value.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def _time_text(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(prev_hash: bytes, row: dict[str, Any]) -> bytes:
    """The chain hash of one audit_events row (with summary_text = summary::text)."""
    parts = [
        _DOMAIN,
        prev_hash,
        _field(str(row["chain_shard"])),
        _field(str(row["chain_seq"])),
        _field(str(row["audit_event_id"])),
        _field(_time_text(row["occurred_at"])),
        _field(row["actor"]),
        _field(None if row["user_id"] is None else str(row["user_id"])),
        _field(row["action"]),
        _field(row["target_type"]),
        _field(row["target_id"]),
        _field(row["request_id"]),
        _field(row["summary_text"]),
    ]
    return hashlib.sha256(b"".join(parts)).digest()


@dataclasses.dataclass(frozen=True)
class Problem:
    """One broken link, at the first event that does not verify (or the chain's head)."""

    audit_event_id: int | None
    chain_shard: int  # -1 for a "stale" (unsealed) event: it has no chain yet
    chain_seq: int
    kind: str  # "edited", "missing", "relinked", "truncated", "stale" (unsealed beyond the bound)
    detail: str

    def __str__(self) -> str:
        where = f"audit event {self.audit_event_id}" if self.audit_event_id is not None else "chain head"
        if self.kind == "stale":
            return f"{where} (unsealed): {self.kind}: {self.detail}"
        return f"{where} (chain {self.chain_shard}, position {self.chain_seq}): {self.kind}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class Report:
    """What a walk found: sealed events checked, the chains walked, broken links, the unsealed."""

    checked: int
    chains: int
    problems: list[Problem]
    # Events not chained yet when the walk ended (not verified, not counted in checked).
    unsealed: int = 0
    # Age in seconds of the oldest unsealed event (None: none unsealed).
    oldest_unsealed_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


async def walk_chain(
    conn: psycopg.AsyncConnection[Any],
    shard: int,
    *,
    after_seq: int,
    after_hash: bytes,
    upto_seq: int,
    problems: list[Problem],
    max_problems: int,
    batch_size: int = 5000,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int, bytes]:
    """Checks one chain's events after position after_seq (whose hash is after_hash) up to upto_seq.

    Appends the broken links found to problems (until it holds max_problems) and stops after limit
    events (None: no limit). Returns how many events it checked and the position and stored hash
    it reached. verify walks whole chains with it; the scheduled verification
    (verify_schedule.py) walks bounded segments from the positions its last run reached.
    """
    checked = 0
    prev_seq, prev_hash = after_seq, after_hash
    while len(problems) < max_problems and prev_seq < upto_seq and (limit is None or checked < limit):
        size = batch_size if limit is None else min(batch_size, limit - checked)
        rows = await fetch_all(
            conn, "audit_chain_batch", {"shard": shard, "after_seq": prev_seq, "upto_seq": upto_seq, "limit": size}
        )
        if not rows:
            break
        for row in rows:
            seq, row_id = row["chain_seq"], row["audit_event_id"]
            stored_prev, stored_hash = bytes(row["prev_hash"]), bytes(row["hash"])

            def report(kind: str, detail: str, row_id: int = row_id, seq: int = seq) -> None:
                problems.append(Problem(row_id, shard, seq, kind, detail))

            if seq != prev_seq + 1:
                report("missing", f"the events at positions {prev_seq + 1} to {seq - 1} are gone")
            elif stored_prev != prev_hash:
                report("relinked", "prev_hash is not the hash of the event before it")
            if event_hash(stored_prev, row) != stored_hash:
                report("edited", "its fields do not match its hash (the event was changed)")
            # Go on from the stored hash: one edit is reported once, not at every later event.
            prev_seq, prev_hash = seq, stored_hash
            checked += 1
        if progress is not None:
            progress(checked)
    return checked, prev_seq, prev_hash


def head_problem(shard: int, head_seq: int, head_hash: bytes, seq: int, last_hash: bytes) -> Problem | None:
    """The problem of a chain walked to position seq (stored hash last_hash) whose head says otherwise."""
    if seq != head_seq:
        return Problem(
            None, shard, head_seq, "truncated", f"the head is at position {head_seq} but the last event is at {seq}"
        )
    if last_hash != head_hash:
        return Problem(None, shard, head_seq, "truncated", "the head's hash is not its last event's")
    return None


async def verify(
    conninfo: str,
    *,
    batch_size: int = 5000,
    max_problems: int = 20,
    progress: Callable[[int], None] | None = None,
    max_unsealed_seconds: float | None = None,
) -> Report:
    """Recomputes every chain up to its current head; returns the broken links (up to max_problems).

    Then counts the unsealed events; with max_unsealed_seconds, one older than that is a "stale"
    problem (at the oldest such event).
    """
    problems: list[Problem] = []
    checked = 0
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
        heads = await fetch_all(conn, "audit_chain_heads")
        if not heads:
            return Report(0, 0, [Problem(None, 0, 0, "missing", "no chain heads (is migration 0006 applied?)")])
        for head in heads:
            shard, head_seq, head_hash = head["chain_shard"], head["last_seq"], bytes(head["last_hash"])
            done = checked

            def walked_so_far(n: int, done: int = done) -> None:
                if progress is not None:
                    progress(done + n)

            walked, seq, last_hash = await walk_chain(
                conn,
                shard,
                after_seq=0,
                after_hash=GENESIS,
                upto_seq=head_seq,
                problems=problems,
                max_problems=max_problems,
                batch_size=batch_size,
                progress=walked_so_far,
            )
            checked += walked
            if len(problems) >= max_problems:
                break
            problem = head_problem(shard, head_seq, head_hash, seq, last_hash)
            if problem is not None:
                problems.append(problem)
        backlog = (await fetch_all(conn, "audit_unsealed"))[0]
    unsealed, oldest_age = backlog["unsealed"], backlog["oldest_age_seconds"]
    if max_unsealed_seconds is not None and oldest_age is not None and oldest_age > max_unsealed_seconds:
        problems.append(
            Problem(
                backlog["oldest_id"],
                -1,
                0,
                "stale",
                f"unsealed for {oldest_age:.0f} s, longer than the {max_unsealed_seconds:g} s bound"
                f" ({unsealed} event(s) unsealed: is a sealer running, on a writable database?)",
            )
        )
    return Report(checked, len(heads), problems[:max_problems], unsealed, oldest_age)
