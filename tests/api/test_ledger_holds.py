"""LedgerService holds over real gRPC and PostgreSQL: CreateHold, GetHold, CaptureHold,
ReleaseHold, expiry with and without the background sweeper.

A hold lowers the available balance, never the posted one; it resolves at most once; an expired
hold stops reserving at its expire_time even when nothing has swept it yet.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from google.protobuf import duration_pb2

from qdata.v1 import ledger_pb2
from tests.support.calls import case_id, error_info, field_violations
from tests.support.database import sql
from tests.support.ledger import (
    ACTIVE,
    CAPTURED,
    EXPIRED,
    HOLD_CAPTURE,
    INVALID,
    MAX_AMOUNT,
    NOT_FOUND,
    PRECONDITION,
    RELEASED,
    USD,
    age_holds,
    amounts,
    assert_balanced,
    assert_ledger_clean,
    capture,
    capture_request,
    charge,
    charge_request,
    count,
    create_hold,
    get_hold,
    get_transaction,
    hold_request,
    list_all,
    new_user,
    postings,
    rejected,
    release,
    release_request,
    ttl,
)

HOUR = 3600
BAD_AMOUNTS = [0, -1, -(2**63), MAX_AMOUNT + 1, 2**63 - 1]


async def db_hold(api, hold_id: str) -> dict:
    [row] = await sql(api, "SELECT * FROM ledger_holds WHERE hold_id = %s", (hold_id,))
    return row


async def cached_held(api, user_id: str) -> int:
    [row] = await sql(api, "SELECT held_micros FROM ledger_accounts WHERE user_id = %s", (user_id,))
    return row["held_micros"]


def lifetime(hold: ledger_pb2.Hold) -> float:
    return (hold.expire_time.ToNanoseconds() - hold.create_time.ToNanoseconds()) / 1e9


# ---- create, capture, release -------------------------------------------------------------------


async def test_hold_reserves_available_but_not_posted(api):
    user_id = await new_user(api, 10 * USD)
    request = hold_request(user_id, 4 * USD, description="chat turn", reference="session/1")
    hold = (await api.ledger.CreateHold(request)).hold
    uuid.UUID(hold.id)
    assert (hold.user_id, hold.amount_micros, hold.currency_code) == (user_id, 4 * USD, "USD")
    assert (hold.status, hold.description, hold.reference) == (ACTIVE, "chat turn", "session/1")
    assert (hold.captured_micros, hold.capture_transaction_id) == (0, "")
    assert not hold.HasField("resolve_time")
    assert lifetime(hold) == 15 * 60  # unset ttl: 15 minutes
    assert await get_hold(api, user_id, hold.id) == hold
    assert await amounts(api, user_id) == (10 * USD, 4 * USD, 6 * USD)
    # A hold is no transaction: nothing is posted yet.
    assert await count(api, "ledger_transactions") == 1

    second = await create_hold(api, user_id, 6 * USD, ttl=duration_pb2.Duration())  # zero: the default
    assert lifetime(second) == 15 * 60
    assert await amounts(api, user_id) == (10 * USD, 10 * USD, 0)
    await rejected(api, api.ledger.CreateHold, hold_request(user_id, 1), PRECONDITION, "INSUFFICIENT_FUNDS")
    await rejected(api, api.ledger.Charge, charge_request(user_id, 1), PRECONDITION, "INSUFFICIENT_FUNDS")
    await assert_ledger_clean(api)


async def test_partial_capture_charges_and_releases_the_rest(api):
    user_id = await new_user(api, 10 * USD)
    hold = await create_hold(api, user_id, 4 * USD, description="model call", reference="call/7")
    response = await capture(api, user_id, hold.id, 3 * USD)
    tx = response.transaction
    assert tx.kind == HOLD_CAPTURE
    assert (tx.user_id, tx.amount_micros, tx.hold_id) == (user_id, 3 * USD, hold.id)
    assert (tx.description, tx.reference) == ("model call", "call/7")  # the hold's, by default
    assert_balanced(tx)
    assert postings(tx) == {f"users/{user_id}": -3 * USD, "system/revenue": 3 * USD}
    captured = response.hold
    assert (captured.status, captured.captured_micros, captured.capture_transaction_id) == (CAPTURED, 3 * USD, tx.id)
    assert captured.HasField("resolve_time")
    assert await get_hold(api, user_id, hold.id) == captured
    assert await get_transaction(api, user_id, tx.id) == tx
    # 3 charged, the other 1 available again.
    assert await amounts(api, user_id) == (7 * USD, 0, 7 * USD)

    other = await create_hold(api, user_id, 2 * USD)
    tx = (await capture(api, user_id, other.id, 2 * USD, description="final cost")).transaction
    assert tx.description == "final cost"
    assert await amounts(api, user_id) == (5 * USD, 0, 5 * USD)
    assert [t.kind for t in await list_all(api, user_id, kinds=[HOLD_CAPTURE])] == [HOLD_CAPTURE] * 2
    await assert_ledger_clean(api)


async def test_release_makes_the_amount_available_again(api):
    user_id = await new_user(api, 10 * USD)
    hold = await create_hold(api, user_id, 4 * USD)
    released = await release(api, user_id, hold.id)
    assert (released.status, released.captured_micros, released.capture_transaction_id) == (RELEASED, 0, "")
    assert released.HasField("resolve_time")
    assert await get_hold(api, user_id, hold.id) == released
    assert await amounts(api, user_id) == (10 * USD, 0, 10 * USD)
    assert await count(api, "ledger_transactions") == 1
    await assert_ledger_clean(api)


async def test_a_hold_resolves_at_most_once(api):
    user_id = await new_user(api, 10 * USD)
    captured = await create_hold(api, user_id, 4 * USD)
    released = await create_hold(api, user_id, 2 * USD)
    await capture(api, user_id, captured.id, 4 * USD)
    await release(api, user_id, released.id)
    for method, request, reason in [
        (api.ledger.CaptureHold, capture_request(user_id, captured.id, 1), "HOLD_ALREADY_CAPTURED"),
        (api.ledger.ReleaseHold, release_request(user_id, captured.id), "HOLD_ALREADY_CAPTURED"),
        (api.ledger.CaptureHold, capture_request(user_id, released.id, 1), "HOLD_ALREADY_RELEASED"),
        (api.ledger.ReleaseHold, release_request(user_id, released.id), "HOLD_ALREADY_RELEASED"),
        # The state is checked before the amount.
        (api.ledger.CaptureHold, capture_request(user_id, captured.id, 5 * USD), "HOLD_ALREADY_CAPTURED"),
    ]:
        await rejected(api, method, request, PRECONDITION, reason)
    assert await amounts(api, user_id) == (6 * USD, 0, 6 * USD)
    await assert_ledger_clean(api)


async def test_concurrent_captures_and_releases_resolve_a_hold_once(api):
    user_id = await new_user(api, 10 * USD)
    hold = await create_hold(api, user_id, 5 * USD)
    calls = [api.ledger.CaptureHold(capture_request(user_id, hold.id, (i + 1) * USD)) for i in range(5)]
    calls += [api.ledger.ReleaseHold(release_request(user_id, hold.id)) for _ in range(5)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1, results
    for error in results:
        if isinstance(error, Exception):
            assert error.code() == PRECONDITION, error
            assert error_info(error).reason in ("HOLD_ALREADY_CAPTURED", "HOLD_ALREADY_RELEASED")
    spent = winners[0].transaction.amount_micros if isinstance(winners[0], ledger_pb2.CaptureHoldResponse) else 0
    assert await amounts(api, user_id) == (10 * USD - spent, 0, 10 * USD - spent)
    await assert_ledger_clean(api)


async def test_capture_above_the_hold_is_invalid_and_changes_nothing(api):
    user_id = await new_user(api, 10 * USD)
    hold = await create_hold(api, user_id, 4 * USD)
    request = capture_request(user_id, hold.id, 4 * USD + 1)
    error = await rejected(api, api.ledger.CaptureHold, request, INVALID, "CAPTURE_EXCEEDS_HOLD")
    assert set(field_violations(error)) == {"amount_micros"}
    assert (await get_hold(api, user_id, hold.id)).status == ACTIVE
    assert await amounts(api, user_id) == (10 * USD, 4 * USD, 6 * USD)
    await capture(api, user_id, hold.id, 4 * USD)  # the whole hold is fine
    assert await amounts(api, user_id) == (6 * USD, 0, 6 * USD)
    await assert_ledger_clean(api)


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
async def test_capture_of_a_bad_amount_is_invalid_and_changes_nothing(api, amount):
    user_id = await new_user(api, 10 * USD)
    hold = await create_hold(api, user_id, 4 * USD)
    error = await rejected(api, api.ledger.CaptureHold, capture_request(user_id, hold.id, amount), INVALID)
    assert set(field_violations(error)) == {"amount_micros"}
    assert (await get_hold(api, user_id, hold.id)).status == ACTIVE


async def test_unknown_or_foreign_hold_is_not_found(api):
    owner, other = await new_user(api, 10 * USD), await new_user(api, 10 * USD)
    hold = await create_hold(api, owner, 4 * USD)
    for user_id, hold_id in [(owner, str(uuid.uuid4())), (other, hold.id)]:
        for method, request in [
            (api.ledger.GetHold, ledger_pb2.GetHoldRequest(user_id=user_id, hold_id=hold_id)),
            (api.ledger.CaptureHold, capture_request(user_id, hold_id, USD)),
            (api.ledger.ReleaseHold, release_request(user_id, hold_id)),
        ]:
            await rejected(api, method, request, NOT_FOUND, "HOLD_NOT_FOUND")
    for method, request in [
        (api.ledger.GetHold, ledger_pb2.GetHoldRequest(user_id=owner, hold_id="h-1")),
        (api.ledger.CaptureHold, capture_request(owner, "", USD)),
        (api.ledger.ReleaseHold, release_request("nobody", hold.id)),
    ]:
        await rejected(api, method, request, INVALID, "INVALID_ARGUMENT")
    assert (await get_hold(api, owner, hold.id)).status == ACTIVE
    assert await amounts(api, other) == (10 * USD, 0, 10 * USD)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        *[
            ({"ttl": value}, "ttl")
            for value in [
                ttl(0.5),
                ttl(0.999999999),
                ttl(-1),
                ttl(24 * HOUR + 1),
                duration_pb2.Duration(seconds=10**15),  # beyond what a timedelta holds
                duration_pb2.Duration(seconds=315_576_000_000),  # the largest valid Duration
                duration_pb2.Duration(seconds=-315_576_000_000),
            ]
        ],
        *[({"amount_micros": amount}, "amount_micros") for amount in BAD_AMOUNTS],
        *[({"currency_code": code}, "currency_code") for code in ("usd", "US", "XXXX")],
    ],
    ids=case_id,
)
async def test_create_hold_rejects_a_bad_field(api, fields, field):
    user_id = await new_user(api, 10 * USD)
    request = hold_request(user_id, USD, **fields)
    error = await rejected(api, api.ledger.CreateHold, request, INVALID, "INVALID_ARGUMENT")
    assert set(field_violations(error)) == {field}


async def test_create_hold_validates_ttl_and_amount(api):
    user_id = await new_user(api, 10 * USD)
    await rejected(
        api, api.ledger.CreateHold, hold_request(user_id, USD, currency_code="EUR"), INVALID, "UNSUPPORTED_CURRENCY"
    )
    request = hold_request(user_id, 10 * USD + 1)
    await rejected(api, api.ledger.CreateHold, request, PRECONDITION, "INSUFFICIENT_FUNDS")
    # The bounds themselves are valid.
    assert lifetime(await create_hold(api, user_id, USD, ttl=ttl(1))) == 1
    assert lifetime(await create_hold(api, user_id, USD, ttl=ttl(24 * HOUR))) == 24 * HOUR
    assert lifetime(await create_hold(api, user_id, USD, ttl=ttl(90.5))) == 90.5
    assert await amounts(api, user_id) == (10 * USD, 3 * USD, 7 * USD)


# ---- expiry -------------------------------------------------------------------------------------


async def test_expired_hold_stops_reserving_before_any_sweep(api_with):
    api = await api_with(hold_sweep_seconds=0)  # no background sweeper at all
    user_id = await new_user(api, 10 * USD)
    hold = await create_hold(api, user_id, 10 * USD, ttl=ttl(1))
    keeper = await create_hold(api, await new_user(api, USD), USD)  # another account, untouched
    assert lifetime(hold) == 1
    assert await amounts(api, user_id) == (10 * USD, 10 * USD, 0)
    await rejected(api, api.ledger.Charge, charge_request(user_id, 1), PRECONDITION, "INSUFFICIENT_FUNDS")

    await age_holds(api, 1.2, hold.id)
    # Nothing has swept it: the row still says active and the cached held amount still counts it.
    assert (await db_hold(api, hold.id))["status"] == "active"
    assert await cached_held(api, user_id) == 10 * USD
    # Yet reads already treat it as expired.
    assert await amounts(api, user_id) == (10 * USD, 0, 10 * USD)
    expired = await get_hold(api, user_id, hold.id)
    assert expired.status == EXPIRED
    assert expired.resolve_time == expired.expire_time
    for method, request in [
        (api.ledger.CaptureHold, capture_request(user_id, hold.id, USD)),
        (api.ledger.ReleaseHold, release_request(user_id, hold.id)),
    ]:
        await rejected(api, method, request, PRECONDITION, "HOLD_EXPIRED")
    await assert_ledger_clean(api)

    # A charge of the whole posted balance succeeds: it sweeps the account it locks.
    await charge(api, user_id, 10 * USD)
    assert await amounts(api, user_id) == (0, 0, 0)
    row = await db_hold(api, hold.id)
    assert (row["status"], row["resolved_at"]) == ("expired", row["expire_at"])
    assert await cached_held(api, user_id) == 0
    assert (await get_hold(api, user_id, hold.id)).status == EXPIRED
    await rejected(api, api.ledger.CaptureHold, capture_request(user_id, hold.id, 1), PRECONDITION, "HOLD_EXPIRED")
    assert (await get_hold(api, keeper.user_id, keeper.id)).status == ACTIVE
    await assert_ledger_clean(api)


async def test_expired_hold_is_swept_lazily_by_a_new_hold(api_with):
    api = await api_with(hold_sweep_seconds=0)
    user_id = await new_user(api, 10 * USD)
    first = await create_hold(api, user_id, 6 * USD, ttl=ttl(1))
    await age_holds(api, 1.2, first.id)
    second = await create_hold(api, user_id, 10 * USD)  # only possible once the first stopped counting
    assert second.status == ACTIVE
    assert (await db_hold(api, first.id))["status"] == "expired"
    assert await cached_held(api, user_id) == 10 * USD
    assert await amounts(api, user_id) == (10 * USD, 10 * USD, 0)
    await assert_ledger_clean(api)


async def test_background_sweeper_marks_expired_holds(api_with):
    api = await api_with(hold_sweep_seconds=0.2)
    user_id = await new_user(api, 10 * USD)
    hold = await create_hold(api, user_id, 4 * USD, ttl=ttl(1))
    lasting = await create_hold(api, user_id, 1 * USD)
    await age_holds(api, 1.2, hold.id)
    for _ in range(50):  # the sweeper runs every 0.2 s
        await asyncio.sleep(0.2)
        if (await db_hold(api, hold.id))["status"] != "active":
            break
    row = await db_hold(api, hold.id)
    assert (row["status"], row["resolved_at"]) == ("expired", row["expire_at"])
    assert await cached_held(api, user_id) == 1 * USD
    assert (await db_hold(api, lasting.id))["status"] == "active"
    assert (await get_hold(api, user_id, hold.id)).status == EXPIRED
    assert await amounts(api, user_id) == (10 * USD, 1 * USD, 9 * USD)
    await rejected(api, api.ledger.ReleaseHold, release_request(user_id, hold.id), PRECONDITION, "HOLD_EXPIRED")
    await assert_ledger_clean(api)
