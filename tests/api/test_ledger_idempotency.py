"""LedgerService request-id idempotency over real gRPC and PostgreSQL.

A replay with the same parameters returns the first response with one effect, also when 16
replays arrive at once; the same request_id with other parameters (or for another RPC) is
ALREADY_EXISTS (REQUEST_ID_REUSED); a rejected request, validation or business rejection, is not
stored, so its request_id can be retried (Stripe semantics, as the contract documents); request_ids
are scoped per user (the sender for Transfer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from qdata.v1 import ledger_pb2, user_pb2
from tests.support.calls import case_id, rid
from tests.support.database import sql
from tests.support.ledger import (
    CAPTURED,
    EXISTS,
    INVALID,
    PRECONDITION,
    RELEASED,
    USD,
    amounts,
    assert_ledger_clean,
    capture_request,
    charge,
    charge_request,
    create_hold,
    deposit_request,
    hold_request,
    ledger_state,
    new_user,
    refund_request,
    rejected,
    release_request,
    transfer_request,
)

COUNTED = ("ledger_transactions", "ledger_postings", "ledger_holds", "idempotency_keys", "audit_events")


async def row_counts(api) -> dict[str, int]:
    query = " UNION ALL ".join(f"SELECT '{table}' AS t, count(*) AS n FROM {table}" for table in COUNTED)
    return {row["t"]: row["n"] for row in await sql(api, query)}


async def stored_request_ids(api) -> set[str]:
    return {row["request_id"] for row in await sql(api, "SELECT request_id FROM idempotency_keys")}


async def scenario(api) -> dict[str, Any]:
    """Two funded users, a charge to refund and an active hold: something for every mutating RPC."""
    alice, bob = await new_user(api, 20 * USD), await new_user(api, 1 * USD)
    charged = await charge(api, alice, 5 * USD)
    hold = await create_hold(api, alice, 4 * USD)
    return {"alice": alice, "bob": bob, "charged": charged, "hold": hold}


def mutations(api, s: dict[str, Any]) -> list[tuple[Callable[[Any], Awaitable[Any]], Any]]:
    """(method, request) for each mutating RPC, each valid and effective once."""
    alice, bob = s["alice"], s["bob"]
    return [
        (api.ledger.Deposit, deposit_request(alice, 3 * USD)),
        (api.ledger.Charge, charge_request(alice, 2 * USD)),
        (api.ledger.Refund, refund_request(alice, s["charged"].id, 1 * USD)),
        (api.ledger.Transfer, transfer_request(alice, bob, 1 * USD)),
        (api.ledger.CreateHold, hold_request(alice, 1 * USD)),
        (api.ledger.CaptureHold, capture_request(alice, s["hold"].id, 3 * USD)),
    ]


async def test_replay_returns_the_first_response_with_one_effect(api):
    s = await scenario(api)
    for method, request in mutations(api, s):
        first = await method(request)
        after_first = (await row_counts(api), await amounts(api, s["alice"]), await amounts(api, s["bob"]))
        for _ in range(2):
            assert await method(request) == first, type(request).__name__
        after_replays = (await row_counts(api), await amounts(api, s["alice"]), await amounts(api, s["bob"]))
        assert after_replays == after_first, type(request).__name__
    # ReleaseHold (on a fresh hold, since the scenario's was captured above).
    hold = await create_hold(api, s["alice"], 2 * USD)
    request = release_request(s["alice"], hold.id)
    first = await api.ledger.ReleaseHold(request)
    assert first.hold.status == RELEASED
    state = await ledger_state(api)
    assert await api.ledger.ReleaseHold(request) == first
    assert await ledger_state(api) == state
    # 20 - 5 (setup charge) + 3 - 2 + 1 - 1 - 3 (capture) = 13, with the new 1 USD hold.
    assert await amounts(api, s["alice"]) == (13 * USD, 1 * USD, 12 * USD)
    assert await amounts(api, s["bob"]) == (2 * USD, 0, 2 * USD)
    await assert_ledger_clean(api)


async def test_replay_after_the_state_moved_on_still_returns_the_first_response(api):
    user_id = await new_user(api, 5 * USD)
    request = charge_request(user_id, 5 * USD)
    first = await api.ledger.Charge(request)
    # The balance is zero now, so a fresh charge would fail; the replay is not a fresh charge.
    assert await api.ledger.Charge(request) == first
    hold = await create_hold(api, await new_user(api, USD), USD)
    capture = capture_request(hold.user_id, hold.id, USD)
    first_capture = await api.ledger.CaptureHold(capture)
    assert first_capture.hold.status == CAPTURED
    assert await api.ledger.CaptureHold(capture) == first_capture  # not HOLD_ALREADY_CAPTURED
    # A deleted user's accepted requests are still remembered.
    paid = deposit_request(user_id, USD)
    first_deposit = await api.ledger.Deposit(paid)
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user_id))
    assert await api.ledger.Deposit(paid) == first_deposit
    assert await amounts(api, user_id) == (USD, 0, USD)


async def test_sixteen_concurrent_replays_have_one_effect(api):
    s = await scenario(api)
    alice, bob = s["alice"], s["bob"]
    cases = [
        (api.ledger.Charge, charge_request(alice, 2 * USD)),
        (api.ledger.Deposit, deposit_request(alice, 3 * USD)),
        (api.ledger.Transfer, transfer_request(alice, bob, 1 * USD)),
        (api.ledger.CaptureHold, capture_request(alice, s["hold"].id, 3 * USD)),
        (api.ledger.Refund, refund_request(alice, s["charged"].id, 1 * USD)),
        (api.ledger.CreateHold, hold_request(alice, 1 * USD)),
    ]
    for method, request in cases:
        before = await row_counts(api)
        responses = await asyncio.gather(*(method(request) for _ in range(16)))
        assert all(r == responses[0] for r in responses), type(request).__name__
        after = await row_counts(api)
        grew = {table: after[table] - before[table] for table in COUNTED}
        assert grew["idempotency_keys"] == 1, (type(request).__name__, grew)
        assert grew["audit_events"] == 1, (type(request).__name__, grew)
        assert grew["ledger_transactions"] in (0, 1), (type(request).__name__, grew)
    # 20 - 5 (setup charge) - 2 + 3 - 1 - 3 (capture) + 1 (refund) = 13, with a new 1 USD hold.
    assert await amounts(api, alice) == (13 * USD, 1 * USD, 12 * USD)
    assert await amounts(api, bob) == (2 * USD, 0, 2 * USD)
    await assert_ledger_clean(api)


async def test_concurrent_release_replays_have_one_effect(api):
    user_id = await new_user(api, 10 * USD)
    hold = await create_hold(api, user_id, 4 * USD)
    request = release_request(user_id, hold.id)
    responses = await asyncio.gather(*(api.ledger.ReleaseHold(request) for _ in range(16)))
    assert all(r == responses[0] for r in responses)
    assert responses[0].hold.status == RELEASED
    assert await amounts(api, user_id) == (10 * USD, 0, 10 * USD)
    [row] = await sql(api, "SELECT count(*) AS n FROM audit_events WHERE action = 'ledger.ReleaseHold'")
    assert row["n"] == 1


async def test_same_request_id_with_other_parameters_is_rejected(api):
    s = await scenario(api)
    alice, bob = s["alice"], s["bob"]
    request_id = rid()
    await api.ledger.Charge(charge_request(alice, 2 * USD, request_id=request_id, description="first"))
    for method, request in [
        (api.ledger.Charge, charge_request(alice, 3 * USD, request_id=request_id, description="first")),
        (api.ledger.Charge, charge_request(alice, 2 * USD, request_id=request_id, description="second")),
        (api.ledger.Charge, charge_request(alice, 2 * USD, request_id=request_id, reference="r")),
        # The same key for another RPC of the same user.
        (api.ledger.CreateHold, hold_request(alice, 2 * USD, request_id=request_id)),
        (api.ledger.Deposit, deposit_request(alice, 2 * USD, request_id=request_id)),
        (api.ledger.Transfer, transfer_request(alice, bob, 2 * USD, request_id=request_id)),
        (api.ledger.ReleaseHold, release_request(alice, s["hold"].id, request_id=request_id)),
        (api.ledger.CaptureHold, capture_request(alice, s["hold"].id, USD, request_id=request_id)),
        (api.ledger.Refund, refund_request(alice, s["charged"].id, USD, request_id=request_id)),
    ]:
        await rejected(api, method, request, EXISTS, "REQUEST_ID_REUSED")
    assert await amounts(api, alice) == (13 * USD, 4 * USD, 9 * USD)


async def test_a_replay_that_spells_out_a_default_is_the_same_request(api):
    user_id = await new_user(api, 10 * USD)
    request_id = rid()
    first = (await api.ledger.Charge(charge_request(user_id, USD, request_id=request_id))).transaction
    spelled = charge_request(user_id, USD, request_id=request_id, currency_code="USD")
    assert (await api.ledger.Charge(spelled)).transaction == first
    # The same holds the other way round, and for a deposit's default source (a payment).
    deposit_id = rid()
    paid = deposit_request(
        user_id, USD, request_id=deposit_id, currency_code="USD", source=ledger_pb2.DEPOSIT_SOURCE_PAYMENT
    )
    first_deposit = (await api.ledger.Deposit(paid)).transaction
    left_out = ledger_pb2.DepositRequest()
    left_out.CopyFrom(paid)
    left_out.ClearField("currency_code")
    left_out.ClearField("source")
    assert (await api.ledger.Deposit(left_out)).transaction == first_deposit
    assert await amounts(api, user_id) == (10 * USD, 0, 10 * USD)


async def test_concurrent_requests_sharing_a_request_id_with_other_parameters_take_effect_once(api):
    user_id = await new_user(api, 100 * USD)
    request_id = rid()
    requests = [charge_request(user_id, (i + 1) * USD, request_id=request_id) for i in range(8)]
    results = await asyncio.gather(*(api.ledger.Charge(r) for r in requests), return_exceptions=True)
    ok = [r for r in results if isinstance(r, ledger_pb2.ChargeResponse)]
    assert len(ok) == 1, results
    for error in results:
        if not isinstance(error, ledger_pb2.ChargeResponse):
            assert error.code() == EXISTS, error
    spent = ok[0].transaction.amount_micros
    assert await amounts(api, user_id) == (100 * USD - spent, 0, 100 * USD - spent)


async def test_insufficient_funds_does_not_use_up_the_request_id(api):
    alice, bob = await new_user(api), await new_user(api)
    cases = [
        (api.ledger.Charge, charge_request(alice, 5 * USD)),
        (api.ledger.Transfer, transfer_request(alice, bob, 5 * USD)),
        (api.ledger.CreateHold, hold_request(alice, 5 * USD)),
    ]
    for method, request in cases:
        await rejected(api, method, request, PRECONDITION, "INSUFFICIENT_FUNDS")
        # Also many at once: each rejected, none stored.
        results = await asyncio.gather(*(method(request) for _ in range(8)), return_exceptions=True)
        assert {r.code() for r in results} == {PRECONDITION}
    assert not {r.request_id for _, r in cases} & await stored_request_ids(api)
    await api.ledger.Deposit(deposit_request(alice, 15 * USD))
    # The very same requests now succeed (Stripe semantics), and replay as usual afterwards.
    for method, request in cases:
        first = await method(request)
        assert await method(request) == first
    assert await amounts(api, alice) == (5 * USD, 5 * USD, 0)
    assert await amounts(api, bob) == (5 * USD, 0, 5 * USD)
    assert {r.request_id for _, r in cases} <= await stored_request_ids(api)
    await assert_ledger_clean(api)


async def test_other_rejections_do_not_use_up_the_request_id(api):
    user_id = await new_user(api, 10 * USD)
    hold = await create_hold(api, user_id, 4 * USD)
    # CaptureHold above the hold, then corrected with the same request_id.
    too_much = capture_request(user_id, hold.id, 5 * USD)
    await rejected(api, api.ledger.CaptureHold, too_much, INVALID, "CAPTURE_EXCEEDS_HOLD")
    corrected = capture_request(user_id, hold.id, 4 * USD, request_id=too_much.request_id)
    assert (await api.ledger.CaptureHold(corrected)).hold.captured_micros == 4 * USD
    # A refund above the original, then corrected.
    charged = await charge(api, user_id, 2 * USD)
    over = refund_request(user_id, charged.id, 3 * USD)
    await rejected(api, api.ledger.Refund, over, PRECONDITION, "REFUND_EXCEEDS_ORIGINAL")
    await api.ledger.Refund(refund_request(user_id, charged.id, 2 * USD, request_id=over.request_id))
    assert await amounts(api, user_id) == (6 * USD, 0, 6 * USD)


async def test_request_that_failed_validation_leaves_no_trace(api):
    user_id = await new_user(api, 10 * USD)
    request_id = rid()
    for fields in ({"amount_micros": 0}, {"currency_code": "usd"}, {"currency_code": "EUR"}, {"description": "\x00"}):
        bad = charge_request(user_id, USD, request_id=request_id, **fields)
        await rejected(api, api.ledger.Charge, bad, INVALID)
    assert request_id not in await stored_request_ids(api)
    fixed = await api.ledger.Charge(charge_request(user_id, USD, request_id=request_id))
    assert fixed.transaction.request_id == request_id
    assert await amounts(api, user_id) == (9 * USD, 0, 9 * USD)


@pytest.mark.parametrize("bad_id", ["", "   ", "x" * 129, "id\x00"], ids=case_id)
@pytest.mark.parametrize("method_name", ["Charge", "Deposit", "ReleaseHold"])
async def test_an_invalid_request_id_is_invalid_argument(api, method_name, bad_id):
    user_id = await new_user(api, 10 * USD)
    hold = await create_hold(api, user_id, USD)
    request = {
        "Charge": lambda: charge_request(user_id, USD, request_id=bad_id),
        "Deposit": lambda: deposit_request(user_id, USD, request_id=bad_id),
        "ReleaseHold": lambda: release_request(user_id, hold.id, request_id=bad_id),
    }[method_name]()
    await rejected(api, getattr(api.ledger, method_name), request, INVALID, "INVALID_ARGUMENT")


async def test_request_ids_are_scoped_per_user(api):
    alice, bob = await new_user(api, 10 * USD), await new_user(api, 10 * USD)
    request_id = rid()
    one = await api.ledger.Charge(charge_request(alice, 2 * USD, request_id=request_id))
    two = await api.ledger.Charge(charge_request(bob, 2 * USD, request_id=request_id))
    assert one.transaction.id != two.transaction.id
    assert (one.transaction.user_id, two.transaction.user_id) == (alice, bob)
    assert await amounts(api, alice) == (8 * USD, 0, 8 * USD)
    assert await amounts(api, bob) == (8 * USD, 0, 8 * USD)
    # Transfers are scoped to the sender: the same key from each side is two transfers.
    key = rid()
    there = await api.ledger.Transfer(transfer_request(alice, bob, 3 * USD, request_id=key))
    back = await api.ledger.Transfer(transfer_request(bob, alice, 1 * USD, request_id=key))
    assert there.transaction.id != back.transaction.id
    assert await amounts(api, alice) == (6 * USD, 0, 6 * USD)
    assert await amounts(api, bob) == (10 * USD, 0, 10 * USD)
    # Concurrently, many users with one key: one effect each.
    users = [await new_user(api, 5 * USD) for _ in range(6)]
    shared = rid()
    responses = await asyncio.gather(
        *(api.ledger.Charge(charge_request(u, USD, request_id=shared)) for u in users for _ in range(3))
    )
    assert len({r.transaction.id for r in responses}) == len(users)
    for u in users:
        assert await amounts(api, u) == (4 * USD, 0, 4 * USD)
    await assert_ledger_clean(api)
