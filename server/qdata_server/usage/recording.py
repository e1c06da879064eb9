"""RecordUsage and RecordUsageBatch: usage is recorded if and only if it is billed.

Each record is one call of the SQL function usage_record (db/functions/usage.sql), inside the
transaction that also claims its request_id: it prices the call by the version in force at its
call time, writes the record, charges the ledger (or captures the hold, charging any overage, or
releases the hold of an unbilled call), queues the record for the rollups and writes the audit
event. A rejection (INSUFFICIENT_FUNDS, HOLD_EXPIRED, ...) rolls all of it back, so nothing is
recorded and the request_id stays free for a retry.

RecordUsageBatch sends all its items in one transaction and one call of usage_record_many,
which records them with a fixed number of set-based statements (one claim of all the keys, one
insert per table, one balance update per account) while still deciding each item on its own, in
request order, as usage_record would: a rejected item leaves nothing behind and does not affect
the others. The answers of the recorded items are stored with one more statement. Items share
RecordUsage's idempotency keys (same method, fingerprint and user scope), claimed by the same SQL
function (idempotency_claim) and compared by the same check (idempotency.check_same_request), so
a record sent by either RPC replays through the other.

A billed record moves money, so its charge (or hold capture) carries its key forever
(0009_ledger_request_keys.sql): a replay whose idempotency record was purged gets the record
back from there (`_remembered`), never a second charge. An unbilled record moves no money and is
remembered for the retention only; a replay after that records it again.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import uuid
from typing import TYPE_CHECKING, Any

from qdata.v1 import usage_pb2
from qdata_server import callctx, metrics_hooks
from qdata_server.db.connection import Conn
from qdata_server.db.constraints import error_for
from qdata_server.db.sql import execute, fetch_all, fetch_one, fetch_row
from qdata_server.db.transactions import acting_for
from qdata_server.errors import Internal, InvalidArgument, QdataError, RequestRemembered, invalid
from qdata_server.idempotency import RequestKey, check_request_id, check_same_request, fingerprint, request_key
from qdata_server.ledger.operations import request_holder
from qdata_server.usage import convert, rules
from qdata_server.validation import Violations

if TYPE_CHECKING:
    from qdata_server.deps import Deps

log = logging.getLogger("qdata.usage")

# The idempotency method of a usage record, whichever RPC sent it.
METHOD = "/qdata.v1.UsageService/RecordUsage"
MAX_BATCH = 1000


@dataclasses.dataclass(frozen=True)
class Call:
    """A validated RecordUsageRequest, as usage_record takes it."""

    user_id: uuid.UUID
    model_id: str
    session_id: uuid.UUID | None
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    latency_ns: int | None
    ttft_ns: int | None
    outcome: str
    error_code: str
    used_own_provider_key: bool
    hold_id: uuid.UUID | None
    called_at: datetime.datetime | None

    def params(self) -> dict[str, Any]:
        """The call as usage_record's parameters, named as the fields are."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def parse(request: usage_pb2.RecordUsageRequest, now: datetime.datetime) -> Call:
    """Checks every field of a RecordUsageRequest (but its request_id); INVALID_ARGUMENT lists all."""
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    model_id = rules.model_id(v, "model_id", request.model_id)
    session_id = v.uuid("session_id", request.session_id, required=False)
    hold_id = v.uuid("hold_id", request.hold_id, required=False)
    for field in ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens"):
        rules.bounded(v, field, getattr(request, field), rules.MAX_TOKENS)
    latency = rules.duration_nanos(v, "latency", request.latency, request.HasField("latency"))
    ttft = rules.duration_nanos(
        v, "time_to_first_token", request.time_to_first_token, request.HasField("time_to_first_token")
    )
    if latency is not None and ttft is not None and ttft > latency:
        v.add("time_to_first_token", "must not be above latency")
    outcome = rules.OUTCOME_FROM_PROTO.get(request.outcome)
    if outcome is None:
        v.add("outcome", "is required: USAGE_OUTCOME_SUCCESS or USAGE_OUTCOME_ERROR")
    if outcome == "error":
        if not request.error_code:
            v.add("error_code", "is required for an ERROR outcome (e.g. rate_limit_exceeded)")
        v.text("error_code", request.error_code, rules.MAX_ERROR_CODE_LENGTH)
    elif request.error_code:
        v.add("error_code", "must be empty unless the outcome is ERROR")
    called_at = None
    if request.HasField("call_time"):
        called_at = rules.timestamp(v, "call_time", request.call_time)
        if called_at is not None and not now - rules.MAX_CALL_AGE <= called_at <= now + rules.MAX_CALL_AHEAD:
            v.add("call_time", "must be at most 7 days in the past and 5 minutes in the future")
    v.raise_if_any()
    assert user_id is not None and outcome is not None  # raise_if_any() passed
    return Call(
        user_id=user_id,
        model_id=model_id,
        session_id=session_id,
        input_tokens=request.input_tokens,
        cached_input_tokens=request.cached_input_tokens,
        output_tokens=request.output_tokens,
        reasoning_tokens=request.reasoning_tokens,
        latency_ns=latency,
        ttft_ns=ttft,
        outcome=outcome,
        error_code=request.error_code,
        used_own_provider_key=request.used_own_provider_key,
        hold_id=hold_id,
        called_at=called_at,
    )


def _actor() -> str:
    ctx = callctx.current()
    return ctx.actor if ctx else "cli"


# How far a record's call time may lie from its charge's creation (rules.MAX_CALL_AGE and
# MAX_CALL_AHEAD are checked against the server's clock just before the transaction starts).
_CALL_TIME_SLACK = datetime.timedelta(hours=1)


async def _remembered(conn: Conn, key: RequestKey) -> usage_pb2.RecordUsageResponse:
    """The first answer to a billed record whose idempotency record is gone, from its ledger row."""
    holder = await request_holder(conn, key)
    row = await fetch_one(
        conn,
        "usage_remembered_record",
        {
            "user_id": key.user_id,
            "transaction_id": holder["transaction_id"],
            "earliest": holder["created_at"] - rules.MAX_CALL_AGE - _CALL_TIME_SLACK,
            "latest": holder["created_at"] + rules.MAX_CALL_AHEAD + _CALL_TIME_SLACK,
        },
    )
    if row is None:
        raise Internal("internal error: a remembered usage record was not found")
    return usage_pb2.RecordUsageResponse(record=convert.usage_record(row))


def count_recorded(row: dict[str, Any]) -> None:
    """Counts a committed usage record (a usage_record row) in the metrics, with the money it moved.

    A billed record without a hold is a charge of its cost; with a hold, a capture of the cost up
    to the hold's amount and a charge of the overage beyond it (overage_micros).
    """
    if metrics_hooks.active is None:
        return
    currency = row["currency_code"]
    billed = row["cost_micros"] if row["billed"] else 0
    metrics_hooks.usage_recorded(currency, billed)
    if billed:
        overage: int = row["overage_micros"]
        metrics_hooks.money_moved("charge" if row["hold_id"] is None else "hold_capture", currency, billed - overage)
        if overage:
            metrics_hooks.money_moved("charge", currency, overage)


async def record_usage(deps: Deps, request: usage_pb2.RecordUsageRequest) -> usage_pb2.RecordUsageResponse:
    call = parse(request, datetime.datetime.now(datetime.UTC))
    key = request_key(request, user_id=call.user_id)
    # The row of the attempt that ran (committed is called only if that attempt committed).
    recorded: list[dict[str, Any]] = []

    async def work(conn: Conn) -> usage_pb2.RecordUsageResponse:
        # The key's actor is also the audit event's (they differ only outside a call, as when seeding).
        row = await fetch_row(conn, "usage_record", {**call.params(), **key.params()})
        recorded[:] = [row]
        return usage_pb2.RecordUsageResponse(record=convert.usage_record(row))

    return await deps.idempotent(
        request,
        usage_pb2.RecordUsageResponse,
        work,
        user_id=call.user_id,
        key=key,
        remembered=lambda conn: _remembered(conn, key),
        committed=lambda _response: count_recorded(recorded[0]),
    )


def _failure(index: int, error: QdataError) -> usage_pb2.RecordUsageResult:
    fields = [v.field for v in error.violations] if isinstance(error, InvalidArgument) else []
    return usage_pb2.RecordUsageResult(
        index=index,
        error_code=error.code.name,
        error_reason=error.reason,
        error_message=error.message,
        error_fields=fields,
    )


@dataclasses.dataclass(frozen=True)
class _Item:
    index: int
    request: usage_pb2.RecordUsageRequest
    call: Call
    request_hash: bytes

    def key(self, actor: str) -> RequestKey:
        """The item's idempotency key, the one RecordUsage claims for the same record."""
        return RequestKey(self.call.user_id, actor, self.request.request_id, METHOD, self.request_hash)


async def _record_items(
    conn: Conn, items: list[_Item], actor: str
) -> tuple[dict[int, usage_pb2.RecordUsageResult], list[dict[str, Any]]]:
    """Records the batch's items; returns each item's result and the rows of the records it created."""
    params = [item.call.params() for item in items]
    rows = await fetch_all(
        conn,
        "usage_record_many",
        {
            "actor": actor,
            "method": METHOD,
            "request_ids": [item.request.request_id for item in items],
            "request_hashes": [item.request_hash for item in items],
            "user_ids": [p["user_id"] for p in params],
            "model_ids": [p["model_id"] for p in params],
            "session_ids": [p["session_id"] for p in params],
            "input_tokens": [p["input_tokens"] for p in params],
            "cached_input_tokens": [p["cached_input_tokens"] for p in params],
            "output_tokens": [p["output_tokens"] for p in params],
            "reasoning_tokens": [p["reasoning_tokens"] for p in params],
            "latency_ns": [p["latency_ns"] for p in params],
            "ttft_ns": [p["ttft_ns"] for p in params],
            "outcomes": [p["outcome"] for p in params],
            "error_codes": [p["error_code"] for p in params],
            "used_own_provider_keys": [p["used_own_provider_key"] for p in params],
            "hold_ids": [p["hold_id"] for p in params],
            "called_at": [p["called_at"] for p in params],
        },
    )
    results: dict[int, usage_pb2.RecordUsageResult] = {}
    created: list[dict[str, Any]] = []
    stored: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    for row in rows:
        item = items[row["item"]]
        if row["status"] == "recorded":
            created.append(row)
            response = usage_pb2.RecordUsageResponse(record=convert.usage_record(row))
            for column, value in zip(
                stored, (item.call.user_id, item.request.request_id, response.SerializeToString()), strict=True
            ):
                column.append(value)
            results[item.index] = usage_pb2.RecordUsageResult(index=item.index, record=response.record)
        elif row["status"] == "claimed":
            # Taken by an earlier request: the same one (its first answer) or another (REQUEST_ID_REUSED).
            try:
                check_same_request(item.key(actor), row["stored_method"], row["stored_hash"])
            except QdataError as reuse:
                results[item.index] = _failure(item.index, reuse)
            else:
                first = usage_pb2.RecordUsageResponse.FromString(bytes(row["stored_response"]))
                results[item.index] = usage_pb2.RecordUsageResult(index=item.index, record=first.record)
        else:
            error = error_for(row["error_constraint"], row["error_detail"])
            if isinstance(error, RequestRemembered):
                # Billed before, its idempotency record since purged: the ledger row answers.
                try:
                    first = await _remembered(conn, item.key(actor))
                except QdataError as remembered_error:
                    results[item.index] = _failure(item.index, remembered_error)
                else:
                    results[item.index] = usage_pb2.RecordUsageResult(index=item.index, record=first.record)
                continue
            if error is None:
                # A constraint nobody maps is an invariant the server should have kept: a bug.
                log.error(
                    "unexpected constraint violation in a batch item",
                    extra={"constraint": row["error_constraint"], "sqlstate": row["error_sqlstate"]},
                )
                error = Internal("internal error recording this item; the server log has the details")
            results[item.index] = _failure(item.index, error)
    if stored[0]:
        await execute(
            conn,
            "usage_store_responses",
            {"actor": actor, "user_ids": stored[0], "request_ids": stored[1], "responses": stored[2]},
        )
    return results, created


async def record_usage_batch(
    deps: Deps, request: usage_pb2.RecordUsageBatchRequest
) -> usage_pb2.RecordUsageBatchResponse:
    count = len(request.requests)
    if not 1 <= count <= MAX_BATCH:
        raise invalid("requests", f"must hold 1 to {MAX_BATCH:,} records (got {count:,})")
    now = datetime.datetime.now(datetime.UTC)
    actor = _actor()
    results: dict[int, usage_pb2.RecordUsageResult] = {}
    items: list[_Item] = []
    first: dict[tuple[uuid.UUID, str], _Item] = {}
    repeats: list[tuple[int, _Item, bytes]] = []
    for index, item in enumerate(request.requests):
        try:
            check_request_id(item.request_id)
            call = parse(item, now)
        except QdataError as error:
            results[index] = _failure(index, error)
            continue
        parsed = _Item(index, item, call, fingerprint(item))
        key = (call.user_id, item.request_id)
        if key in first:
            # A request_id seen earlier in this batch replays that occurrence.
            repeats.append((index, first[key], parsed.request_hash))
            continue
        first[key] = parsed
        items.append(parsed)

    if items:

        async def work(conn: Conn) -> tuple[dict[int, usage_pb2.RecordUsageResult], list[dict[str, Any]]]:
            return await _record_items(conn, items, actor)

        acting = acting_for(*(item.call.user_id for item in items))
        batch_results, created = await deps.transaction(work, acting=acting)
        results.update(batch_results)
        # Committed: the batch's new records count (replays and failed items do not).
        for row in created:
            count_recorded(row)

    for index, original, request_hash in repeats:
        try:
            check_same_request(original.key(actor), METHOD, request_hash)
        except QdataError as reuse:
            results[index] = _failure(index, reuse)
        else:
            replay = usage_pb2.RecordUsageResult()
            replay.CopyFrom(results[original.index])
            replay.index = index
            results[index] = replay
    # Every index has its result by now.
    ordered = [results[index] for index in range(count)]
    failed = sum(1 for r in ordered if r.error_code)
    return usage_pb2.RecordUsageBatchResponse(results=ordered, recorded_count=count - failed, failed_count=failed)
