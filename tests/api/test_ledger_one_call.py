"""The money path's one database call (ledger_*_once): the answer is the row it wrote, the audit
event carries the same content as before, and the stored response is the answer.

The claim, the movement, the audit event and the answer come from one statement (see
docs/services/ledger.md); these tests hold what callers and the audit trail see to the rows.
"""

from __future__ import annotations

from typing import Any

from qdata.v1 import ledger_pb2
from tests.support.calls import rid
from tests.support.database import sql
from tests.support.ledger import (
    USD,
    capture_request,
    charge_request,
    deposit_request,
    get_hold,
    get_transaction,
    hold_request,
    new_user,
    refund_request,
    release_request,
    transfer_request,
)


async def _event(api, target_id: str, action: str) -> dict[str, Any]:
    [event] = await sql(
        api,
        "SELECT actor, user_id::text AS user_id, action, target_type, target_id, request_id, summary"
        " FROM audit_events WHERE target_id = %s AND action = %s",
        (target_id, action),
    )
    return event


async def _stored(api, request_id: str) -> bytes:
    [row] = await sql(api, "SELECT response FROM idempotency_keys WHERE request_id = %s", (request_id,))
    return bytes(row["response"])


async def test_each_movement_answers_the_transaction_it_wrote_and_stores_that_answer(api):
    alice = await new_user(api, funds=100 * USD)
    bob = await new_user(api)
    calls = [
        (api.ledger.Deposit, deposit_request(alice, 5 * USD, request_id=rid()), alice),
        (api.ledger.Charge, charge_request(alice, 3 * USD, request_id=rid()), alice),
        (api.ledger.Transfer, transfer_request(alice, bob, 2 * USD, request_id=rid()), alice),
    ]
    answers = []
    for method, request, owner in calls:
        response = await method(request)
        assert response.transaction == await get_transaction(api, owner, response.transaction.id)
        assert await _stored(api, request.request_id) == response.SerializeToString()
        answers.append(response.transaction)
    refund = refund_request(alice, answers[1].id, USD, request_id=rid())
    response = await api.ledger.Refund(refund)
    assert response.transaction == await get_transaction(api, alice, response.transaction.id)
    assert response.transaction.postings  # read with its postings, in the same statement
    assert await _stored(api, refund.request_id) == response.SerializeToString()


async def test_each_hold_operation_answers_the_hold_it_wrote_and_stores_that_answer(api):
    alice = await new_user(api, funds=10 * USD)
    create = hold_request(alice, 4 * USD, request_id=rid())
    created = await api.ledger.CreateHold(create)
    assert created.hold == await get_hold(api, alice, created.hold.id)
    assert await _stored(api, create.request_id) == created.SerializeToString()
    capture = capture_request(alice, created.hold.id, 3 * USD, request_id=rid())
    captured = await api.ledger.CaptureHold(capture)
    assert captured.hold == await get_hold(api, alice, created.hold.id)
    assert captured.hold.capture_transaction_id == captured.transaction.id
    assert captured.transaction == await get_transaction(api, alice, captured.transaction.id)
    assert await _stored(api, capture.request_id) == captured.SerializeToString()
    other = (await api.ledger.CreateHold(hold_request(alice, USD, request_id=rid()))).hold
    release = release_request(alice, other.id, request_id=rid())
    released = await api.ledger.ReleaseHold(release)
    assert released.hold == await get_hold(api, alice, other.id)
    assert released.hold.status == ledger_pb2.HOLD_STATUS_RELEASED
    assert await _stored(api, release.request_id) == released.SerializeToString()


async def test_audit_events_of_movements_carry_what_they_always_did(api):
    alice = await new_user(api, funds=100 * USD)
    bob = await new_user(api)
    charged = (await api.ledger.Charge(charge_request(alice, 3 * USD, request_id=rid()))).transaction
    event = await _event(api, charged.id, "ledger.Charge")
    assert event["summary"] == {"amount_micros": 3 * USD, "currency_code": "USD"}
    assert (event["user_id"], event["target_type"]) == (alice, "transaction")
    sent = (await api.ledger.Transfer(transfer_request(alice, bob, USD, request_id=rid()))).transaction
    event = await _event(api, sent.id, "ledger.Transfer")
    assert event["summary"] == {"amount_micros": USD, "currency_code": "USD", "to_user_id": bob}
    assert event["user_id"] == alice
    refunded = (await api.ledger.Refund(refund_request(alice, charged.id, USD, request_id=rid()))).transaction
    event = await _event(api, refunded.id, "ledger.Refund")
    assert event["summary"] == {"amount_micros": USD, "original_transaction_id": charged.id}
    deposited = (await api.ledger.Deposit(deposit_request(alice, USD, request_id=rid()))).transaction
    event = await _event(api, deposited.id, "ledger.Deposit")
    assert event["summary"]["amount_micros"] == USD and "source" in event["summary"]


async def test_audit_events_of_holds_carry_what_they_always_did(api):
    alice = await new_user(api, funds=10 * USD)
    hold = (await api.ledger.CreateHold(hold_request(alice, 4 * USD, request_id=rid()))).hold
    event = await _event(api, hold.id, "ledger.CreateHold")
    assert set(event["summary"]) == {"amount_micros", "currency_code", "ttl_seconds"}
    assert (event["summary"]["amount_micros"], event["target_type"]) == (4 * USD, "hold")
    captured = await api.ledger.CaptureHold(capture_request(alice, hold.id, 3 * USD, request_id=rid()))
    event = await _event(api, hold.id, "ledger.CaptureHold")
    assert event["summary"] == {"amount_micros": 3 * USD, "transaction_id": captured.transaction.id}
    other = (await api.ledger.CreateHold(hold_request(alice, USD, request_id=rid()))).hold
    await api.ledger.ReleaseHold(release_request(alice, other.id, request_id=rid()))
    event = await _event(api, other.id, "ledger.ReleaseHold")
    assert event["summary"] == {}
