"""LedgerService money movements over real gRPC and PostgreSQL: GetBalance, Deposit, Charge,
Transfer and Refund, their success paths and every documented failure.

Each rejection is checked for its status code and ErrorInfo reason and for leaving every ledger
row, idempotency key and audit event exactly as it was (`rejected`). Bad-input cases are tables
walked inside one test each, because every test pays for a fresh database and server.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from qdata.v1 import ledger_pb2, user_pb2
from tests.support.calls import case_id, error_info, field_violations, rid
from tests.support.database import sql
from tests.support.ledger import (
    CHARGE,
    DEPOSIT,
    EXISTS,
    INVALID,
    MAX_AMOUNT,
    NOT_FOUND,
    PRECONDITION,
    REFUND,
    TRANSFER,
    USD,
    amounts,
    assert_balanced,
    assert_ledger_clean,
    balance,
    capture_request,
    charge,
    charge_request,
    count,
    create_hold,
    deposit,
    deposit_request,
    get_transaction,
    hold_request,
    list_all,
    new_user,
    postings,
    refund,
    refund_request,
    rejected,
    transfer,
    transfer_request,
)
from tests.support.server import serving

BAD_AMOUNTS = [0, -1, -(2**63), MAX_AMOUNT + 1, 2**63 - 1]
MALFORMED_CURRENCIES = ["usd", "US", "XXXX", "U5D", "ÜSD", " USD", "$"]
AMOUNT_AND_CURRENCY_CASES = [({"amount_micros": a}, "amount_micros") for a in BAD_AMOUNTS] + [
    ({"currency_code": c}, "currency_code") for c in MALFORMED_CURRENCIES
]


async def audit_actions(api) -> list[tuple[str, str]]:
    rows = await sql(api, "SELECT action, target_id FROM audit_events WHERE action LIKE 'ledger.%' ORDER BY 1, 2")
    return [(r["action"], r["target_id"]) for r in rows]


# ---- GetBalance ---------------------------------------------------------------------------------


async def test_unused_account_reads_zero_without_update_time(api):
    user_id = await new_user(api)
    b = await balance(api, user_id)
    assert (b.user_id, b.currency_code) == (user_id, "USD")
    assert (b.posted_micros, b.held_micros, b.available_micros) == (0, 0, 0)
    assert not b.HasField("update_time")
    assert (await balance(api, user_id, "USD")) == b
    # Reading creates nothing.
    assert await count(api, "ledger_accounts") == 0


async def test_get_balance_rejects_bad_lookups(api):
    user_id = await new_user(api)
    call = api.ledger.GetBalance
    await rejected(api, call, ledger_pb2.GetBalanceRequest(user_id=str(uuid.uuid4())), NOT_FOUND, "USER_NOT_FOUND")
    error = await rejected(api, call, ledger_pb2.GetBalanceRequest(user_id="nope"), INVALID, "INVALID_ARGUMENT")
    assert set(field_violations(error)) == {"user_id"}
    request = ledger_pb2.GetBalanceRequest(user_id=user_id, currency_code="EUR")
    error = await rejected(api, call, request, INVALID, "UNSUPPORTED_CURRENCY")
    assert set(field_violations(error)) == {"currency_code"}


@pytest.mark.parametrize("code", MALFORMED_CURRENCIES, ids=case_id)
async def test_get_balance_rejects_a_malformed_currency(api, code):
    user_id = await new_user(api)
    request = ledger_pb2.GetBalanceRequest(user_id=user_id, currency_code=code)
    error = await rejected(api, api.ledger.GetBalance, request, INVALID, "INVALID_ARGUMENT")
    assert set(field_violations(error)) == {"currency_code"}


# ---- Deposit ------------------------------------------------------------------------------------


async def test_deposit_credits_the_user_against_payments_received(api):
    user_id = await new_user(api)
    request = deposit_request(user_id, 25 * USD, external_reference="ch_3Nabc", description="25 credits")
    tx = (await api.ledger.Deposit(request)).transaction

    uuid.UUID(tx.id)
    assert tx.kind == DEPOSIT
    assert (tx.user_id, tx.counterparty_user_id) == (user_id, "")
    assert (tx.amount_micros, tx.currency_code) == (25 * USD, "USD")
    assert (tx.description, tx.reference, tx.external_reference) == ("25 credits", "", "ch_3Nabc")
    assert tx.deposit_source == ledger_pb2.DEPOSIT_SOURCE_PAYMENT  # UNSPECIFIED means PAYMENT
    assert (tx.original_transaction_id, tx.hold_id, tx.refunded_micros) == ("", "", 0)
    assert tx.request_id == request.request_id
    assert tx.HasField("create_time")
    assert_balanced(tx)
    assert postings(tx) == {"system/payments_received": -25 * USD, f"users/{user_id}": 25 * USD}

    b = await balance(api, user_id)
    assert (b.posted_micros, b.held_micros, b.available_micros) == (25 * USD, 0, 25 * USD)
    assert b.HasField("update_time")
    assert await get_transaction(api, user_id, tx.id) == tx
    assert await audit_actions(api) == [("ledger.Deposit", tx.id)]

    # The largest single amount is accepted, and deposits add up.
    await deposit(api, user_id, MAX_AMOUNT)
    assert await amounts(api, user_id) == (25 * USD + MAX_AMOUNT, 0, 25 * USD + MAX_AMOUNT)
    await assert_ledger_clean(api)


async def test_promotion_deposit_posts_against_promotions(api):
    user_id = await new_user(api)
    request = deposit_request(
        user_id, 5 * USD, source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION, external_reference="", description="welcome"
    )
    tx = (await api.ledger.Deposit(request)).transaction
    assert tx.deposit_source == ledger_pb2.DEPOSIT_SOURCE_PROMOTION
    assert tx.external_reference == ""
    assert postings(tx) == {"system/promotions": -5 * USD, f"users/{user_id}": 5 * USD}
    # A second promotion without external_reference is fine: only non-empty references are unique.
    await deposit(api, user_id, 1 * USD, source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION, external_reference="")
    # A PROMOTION may carry a reference too, and then it is unique like any other.
    await deposit(api, user_id, 1 * USD, source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION, external_reference="promo-1")
    assert await amounts(api, user_id) == (7 * USD, 0, 7 * USD)
    assert await sql(
        api,
        "SELECT system_account, sum(amount_micros)::bigint AS total FROM ledger_postings"
        " WHERE system_account IS NOT NULL GROUP BY 1",
    ) == [{"system_account": "promotions", "total": -7 * USD}]
    await assert_ledger_clean(api)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"user_id": "not-a-uuid"}, "user_id"),
        ({"external_reference": ""}, "external_reference"),  # PAYMENT needs the provider's reference
        ({"external_reference": "   "}, "external_reference"),
        ({"source": ledger_pb2.DEPOSIT_SOURCE_PAYMENT, "external_reference": ""}, "external_reference"),
        ({"external_reference": "x" * 201}, "external_reference"),
        ({"external_reference": "ch\x00"}, "external_reference"),
        ({"description": "d" * 501}, "description"),
        ({"source": 7}, "source"),
        ({"request_id": ""}, "request_id"),
        ({"request_id": "r" * 129}, "request_id"),
        *AMOUNT_AND_CURRENCY_CASES,
    ],
    ids=case_id,
)
async def test_deposit_rejects_bad_input_and_changes_nothing(api, fields, field):
    user_id = await new_user(api, 1 * USD)
    request = deposit_request(user_id, 10 * USD, **fields)
    error = await rejected(api, api.ledger.Deposit, request, INVALID, "INVALID_ARGUMENT")
    assert field in field_violations(error), field_violations(error)


async def test_deposit_rejects_other_currencies_and_unknown_users(api):
    user_id = await new_user(api, 1 * USD)
    deposit_call = api.ledger.Deposit
    error = await rejected(api, deposit_call, deposit_request(user_id, USD, currency_code="EUR"), INVALID)
    assert error_info(error).reason == "UNSUPPORTED_CURRENCY"
    assert set(field_violations(error)) == {"currency_code"}
    await rejected(api, deposit_call, deposit_request(str(uuid.uuid4()), USD), NOT_FOUND, "USER_NOT_FOUND")
    assert await amounts(api, user_id) == (1 * USD, 0, 1 * USD)


async def test_external_reference_is_unique_among_all_deposits(api):
    alice, bob = await new_user(api), await new_user(api)
    first = await deposit(api, alice, 10 * USD, external_reference="ch_same")
    for user_id in (alice, bob):  # whoever the user: a payment credits at most once
        request = deposit_request(user_id, 10 * USD, external_reference="ch_same")
        error = await rejected(api, api.ledger.Deposit, request, EXISTS, "EXTERNAL_REFERENCE_EXISTS")
        assert dict(error_info(error).metadata) == {"transaction_id": first.id}
    assert await amounts(api, alice) == (10 * USD, 0, 10 * USD)
    assert await amounts(api, bob) == (0, 0, 0)


async def test_concurrent_deposits_with_one_external_reference_credit_once(api):
    users = [await new_user(api) for _ in range(4)]
    requests = [deposit_request(users[i % 4], 3 * USD, external_reference="ch_race") for i in range(12)]
    results = await asyncio.gather(*(api.ledger.Deposit(r) for r in requests), return_exceptions=True)
    winners = [r.transaction for r in results if isinstance(r, ledger_pb2.DepositResponse)]
    losers = [r for r in results if not isinstance(r, ledger_pb2.DepositResponse)]
    assert len(winners) == 1, results
    for error in losers:
        assert isinstance(error, grpc.aio.AioRpcError), error
        assert (error.code(), error_info(error).reason) == (EXISTS, "EXTERNAL_REFERENCE_EXISTS"), error
        assert dict(error_info(error).metadata) == {"transaction_id": winners[0].id}
    totals = [(await balance(api, u)).posted_micros for u in users]
    assert sorted(totals) == [0, 0, 0, 3 * USD]
    assert await count(api, "ledger_transactions") == 1
    await assert_ledger_clean(api)


async def test_deposit_would_exceed_the_balance_limit(api):
    user_id = await new_user(api, 10)
    sender = await new_user(api, 100)
    # Setup only: bring the cached balance near 10^18 (VerifyLedger would report the tampering).
    await sql(api, "UPDATE ledger_accounts SET posted_micros = %s WHERE user_id = %s", (10**18 - 5, user_id))
    error = await rejected(api, api.ledger.Deposit, deposit_request(user_id, 6), PRECONDITION)
    assert error_info(error).reason == "BALANCE_LIMIT_EXCEEDED"
    request = transfer_request(sender, user_id, 6)
    await rejected(api, api.ledger.Transfer, request, PRECONDITION, "BALANCE_LIMIT_EXCEEDED")
    await deposit(api, user_id, 5)
    assert (await balance(api, user_id)).posted_micros == 10**18


# ---- Charge -------------------------------------------------------------------------------------


async def test_charge_debits_available_for_revenue(api):
    user_id = await new_user(api, 10 * USD)
    request = charge_request(user_id, 3 * USD, description="gpt call", reference="usage/42")
    tx = (await api.ledger.Charge(request)).transaction
    assert tx.kind == CHARGE
    assert (tx.user_id, tx.amount_micros, tx.currency_code) == (user_id, 3 * USD, "USD")
    assert (tx.description, tx.reference, tx.external_reference) == ("gpt call", "usage/42", "")
    assert tx.deposit_source == ledger_pb2.DEPOSIT_SOURCE_UNSPECIFIED
    assert (tx.refunded_micros, tx.request_id) == (0, request.request_id)
    assert_balanced(tx)
    assert postings(tx) == {f"users/{user_id}": -3 * USD, "system/revenue": 3 * USD}
    assert await amounts(api, user_id) == (7 * USD, 0, 7 * USD)
    assert await get_transaction(api, user_id, tx.id) == tx

    # The whole available balance can be charged, down to exactly zero.
    await charge(api, user_id, 7 * USD)
    assert await amounts(api, user_id) == (0, 0, 0)
    await assert_ledger_clean(api)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"user_id": "x"}, "user_id"),
        ({"reference": "r" * 201}, "reference"),
        ({"description": "\x07"}, "description"),
        *AMOUNT_AND_CURRENCY_CASES,
    ],
    ids=case_id,
)
async def test_charge_rejects_bad_input_and_changes_nothing(api, fields, field):
    user_id = await new_user(api, 10 * USD)
    error = await rejected(api, api.ledger.Charge, charge_request(user_id, USD, **fields), INVALID, "INVALID_ARGUMENT")
    assert field in field_violations(error), field_violations(error)
    assert await amounts(api, user_id) == (10 * USD, 0, 10 * USD)


async def test_charge_rejects_other_currencies_and_unknown_users(api):
    user_id = await new_user(api, 10 * USD)
    request = charge_request(user_id, USD, currency_code="EUR")
    await rejected(api, api.ledger.Charge, request, INVALID, "UNSUPPORTED_CURRENCY")
    request = charge_request(str(uuid.uuid4()), USD)
    await rejected(api, api.ledger.Charge, request, NOT_FOUND, "USER_NOT_FOUND")
    assert await amounts(api, user_id) == (10 * USD, 0, 10 * USD)


async def test_insufficient_funds_changes_nothing(api):
    user_id = await new_user(api, 10 * USD)
    friend = await new_user(api)
    never_funded = await new_user(api)
    for method, request in [
        (api.ledger.Charge, charge_request(user_id, 10 * USD + 1)),
        (api.ledger.Transfer, transfer_request(user_id, friend, 10 * USD + 1)),
        (api.ledger.CreateHold, hold_request(user_id, 10 * USD + 1)),
        (api.ledger.Charge, charge_request(never_funded, 1)),
        (api.ledger.Transfer, transfer_request(never_funded, friend, 1)),
    ]:
        error = await rejected(api, method, request, PRECONDITION, "INSUFFICIENT_FUNDS")
        assert error_info(error).metadata["available_micros"] in ("0", str(10 * USD))

    # A hold lowers what can be charged, though the posted balance is unchanged.
    await create_hold(api, user_id, 4 * USD)
    assert await amounts(api, user_id) == (10 * USD, 4 * USD, 6 * USD)
    for method, request in [
        (api.ledger.Charge, charge_request(user_id, 6 * USD + 1)),
        (api.ledger.Transfer, transfer_request(user_id, friend, 6 * USD + 1)),
        (api.ledger.CreateHold, hold_request(user_id, 6 * USD + 1)),
    ]:
        error = await rejected(api, method, request, PRECONDITION, "INSUFFICIENT_FUNDS")
        assert error_info(error).metadata["available_micros"] == str(6 * USD)
    assert await amounts(api, user_id) == (10 * USD, 4 * USD, 6 * USD)
    await charge(api, user_id, 6 * USD)
    assert await amounts(api, user_id) == (4 * USD, 4 * USD, 0)
    assert await amounts(api, friend) == (0, 0, 0)
    await assert_ledger_clean(api)


# ---- Transfer -----------------------------------------------------------------------------------


async def test_transfer_moves_credits_and_both_parties_see_it(api):
    alice, bob = await new_user(api, 10 * USD), await new_user(api, 1 * USD)
    request = transfer_request(alice, bob, 4 * USD, description="gift", reference="order-7")
    tx = (await api.ledger.Transfer(request)).transaction
    assert tx.kind == TRANSFER
    assert (tx.user_id, tx.counterparty_user_id, tx.amount_micros) == (alice, bob, 4 * USD)
    assert (tx.description, tx.reference, tx.request_id) == ("gift", "order-7", request.request_id)
    assert_balanced(tx)
    assert postings(tx) == {f"users/{alice}": -4 * USD, f"users/{bob}": 4 * USD}
    assert await amounts(api, alice) == (6 * USD, 0, 6 * USD)
    assert await amounts(api, bob) == (5 * USD, 0, 5 * USD)

    # Both parties read it; a third user does not.
    assert await get_transaction(api, alice, tx.id) == tx
    assert await get_transaction(api, bob, tx.id) == tx
    carol = await new_user(api)
    request = ledger_pb2.GetTransactionRequest(user_id=carol, transaction_id=tx.id)
    await rejected(api, api.ledger.GetTransaction, request, NOT_FOUND, "TRANSACTION_NOT_FOUND")
    assert tx.id in [t.id for t in await list_all(api, alice)]
    assert tx.id in [t.id for t in await list_all(api, bob)]
    assert [t.id for t in await list_all(api, bob, kinds=[TRANSFER])] == [tx.id]
    assert await list_all(api, carol) == []

    # The receiver can pass the gift on (its account was created by the transfer).
    carol_tx = await transfer(api, bob, carol, 5 * USD)
    assert carol_tx.counterparty_user_id == carol
    assert await amounts(api, bob) == (0, 0, 0)
    assert await amounts(api, carol) == (5 * USD, 0, 5 * USD)
    await assert_ledger_clean(api)


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"from_user_id": ""}, "from_user_id"), ({"to_user_id": "bob"}, "to_user_id"), *AMOUNT_AND_CURRENCY_CASES],
    ids=case_id,
)
async def test_transfer_rejects_bad_input_and_changes_nothing(api, fields, field):
    alice, bob = await new_user(api, 10 * USD), await new_user(api)
    request = transfer_request(alice, bob, USD, **fields)
    error = await rejected(api, api.ledger.Transfer, request, INVALID, "INVALID_ARGUMENT")
    assert field in field_violations(error), field_violations(error)
    assert await amounts(api, alice) == (10 * USD, 0, 10 * USD)


async def test_transfer_rejections_change_nothing(api):
    alice, bob = await new_user(api, 10 * USD), await new_user(api)
    call = api.ledger.Transfer
    # To oneself: SELF_TRANSFER, also when the same id is spelled differently.
    for to_id in (alice, alice.upper()):
        error = await rejected(api, call, transfer_request(alice, to_id, USD), INVALID, "SELF_TRANSFER")
        assert set(field_violations(error)) == {"to_user_id"}
    await rejected(api, call, transfer_request(alice, bob, USD, currency_code="EUR"), INVALID, "UNSUPPORTED_CURRENCY")
    ghost = str(uuid.uuid4())
    await rejected(api, call, transfer_request(alice, ghost, USD), NOT_FOUND, "USER_NOT_FOUND")
    await rejected(api, call, transfer_request(ghost, bob, USD), NOT_FOUND, "USER_NOT_FOUND")
    assert await amounts(api, alice) == (10 * USD, 0, 10 * USD)
    assert await amounts(api, bob) == (0, 0, 0)


# ---- Refund -------------------------------------------------------------------------------------


async def test_partial_refunds_up_to_the_original(api):
    user_id = await new_user(api, 10 * USD)
    original = await charge(api, user_id, 6 * USD, reference="usage/9")
    first = await refund(api, user_id, original.id, 2 * USD, description="bad answer")
    assert first.kind == REFUND
    assert (first.user_id, first.amount_micros, first.original_transaction_id) == (user_id, 2 * USD, original.id)
    assert (first.description, first.reference) == ("bad answer", "usage/9")
    assert_balanced(first)
    assert postings(first) == {"system/refunds": -2 * USD, f"users/{user_id}": 2 * USD}
    assert await amounts(api, user_id) == (6 * USD, 0, 6 * USD)
    assert (await get_transaction(api, user_id, original.id)).refunded_micros == 2 * USD

    await refund(api, user_id, original.id, 3 * USD)
    # One micro-unit more than what is left is refused, with what is still refundable.
    error = await rejected(
        api, api.ledger.Refund, refund_request(user_id, original.id, USD + 1), PRECONDITION, "REFUND_EXCEEDS_ORIGINAL"
    )
    assert error_info(error).metadata["refundable_micros"] == str(USD)
    await refund(api, user_id, original.id, USD)
    assert (await get_transaction(api, user_id, original.id)).refunded_micros == 6 * USD
    await rejected(
        api, api.ledger.Refund, refund_request(user_id, original.id, 1), PRECONDITION, "REFUND_EXCEEDS_ORIGINAL"
    )
    assert await amounts(api, user_id) == (10 * USD, 0, 10 * USD)
    # A refund can be refunded by nobody: it is not a CHARGE.
    request = refund_request(user_id, first.id, 1)
    await rejected(api, api.ledger.Refund, request, PRECONDITION, "TRANSACTION_NOT_REFUNDABLE")
    await assert_ledger_clean(api)


async def test_concurrent_refunds_never_exceed_the_original(api):
    user_id = await new_user(api, 10 * USD)
    original = await charge(api, user_id, 5 * USD)
    requests = [refund_request(user_id, original.id, 1 * USD) for _ in range(12)]
    results = await asyncio.gather(*(api.ledger.Refund(r) for r in requests), return_exceptions=True)
    ok = [r for r in results if isinstance(r, ledger_pb2.RefundResponse)]
    assert len(ok) == 5, results
    for error in results:
        if not isinstance(error, ledger_pb2.RefundResponse):
            assert (error.code(), error_info(error).reason) == (PRECONDITION, "REFUND_EXCEEDS_ORIGINAL")
    assert await amounts(api, user_id) == (10 * USD, 0, 10 * USD)
    assert (await get_transaction(api, user_id, original.id)).refunded_micros == 5 * USD
    await assert_ledger_clean(api)


async def test_refund_rejections_change_nothing(api):
    alice, bob = await new_user(api), await new_user(api)
    paid = await deposit(api, alice, 10 * USD)
    charged = await charge(api, alice, 2 * USD)
    gift = await transfer(api, alice, bob, 1 * USD)
    call = api.ledger.Refund
    # Only CHARGE and HOLD_CAPTURE can be refunded.
    for original in (paid, gift):
        await rejected(api, call, refund_request(alice, original.id, 1), PRECONDITION, "TRANSACTION_NOT_REFUNDABLE")
    # Unknown, or another user's (the receiver of a transfer does not own it): TRANSACTION_NOT_FOUND.
    for user_id, original_id in [(alice, str(uuid.uuid4())), (bob, charged.id), (bob, gift.id)]:
        await rejected(api, call, refund_request(user_id, original_id, 1), NOT_FOUND, "TRANSACTION_NOT_FOUND")
    for fields, field in [
        ({"original_transaction_id": ""}, "original_transaction_id"),
        ({"original_transaction_id": "tx-1"}, "original_transaction_id"),
        ({"user_id": "alice"}, "user_id"),
        ({"description": "d" * 501}, "description"),
        *[({"amount_micros": a}, "amount_micros") for a in BAD_AMOUNTS],
    ]:
        error = await rejected(api, call, refund_request(alice, charged.id, 1, **fields), INVALID, "INVALID_ARGUMENT")
        assert field in field_violations(error), (fields, field_violations(error))
    # Over the original in one go.
    await rejected(api, call, refund_request(alice, charged.id, 2 * USD + 1), PRECONDITION, "REFUND_EXCEEDS_ORIGINAL")
    assert await amounts(api, alice) == (7 * USD, 0, 7 * USD)


async def test_hold_capture_can_be_refunded(api):
    user_id = await new_user(api, 10 * USD)
    hold = await create_hold(api, user_id, 4 * USD)
    captured = (await api.ledger.CaptureHold(capture_request(user_id, hold.id, 3 * USD))).transaction
    back = await refund(api, user_id, captured.id, 3 * USD)
    assert back.original_transaction_id == captured.id
    assert (await get_transaction(api, user_id, captured.id)).refunded_micros == 3 * USD
    assert await amounts(api, user_id) == (10 * USD, 0, 10 * USD)
    await assert_ledger_clean(api)


# ---- users that do not exist or were deleted ----------------------------------------------------


async def test_unknown_user_is_not_found_everywhere(api):
    ghost = str(uuid.uuid4())
    friend = await new_user(api, 5 * USD)
    for method, request in [
        (api.ledger.GetBalance, ledger_pb2.GetBalanceRequest(user_id=ghost)),
        (api.ledger.Deposit, deposit_request(ghost, USD)),
        (api.ledger.Charge, charge_request(ghost, USD)),
        (api.ledger.Transfer, transfer_request(ghost, friend, USD)),
        (api.ledger.Transfer, transfer_request(friend, ghost, USD)),
        (api.ledger.CreateHold, hold_request(ghost, USD)),
        (api.ledger.ListTransactions, ledger_pb2.ListTransactionsRequest(user_id=ghost)),
        (api.ledger.VerifyLedger, ledger_pb2.VerifyLedgerRequest(user_id=ghost)),
    ]:
        await rejected(api, method, request, NOT_FOUND, "USER_NOT_FOUND")
    await rejected(
        api,
        api.ledger.GetTransaction,
        ledger_pb2.GetTransactionRequest(user_id=ghost, transaction_id=str(uuid.uuid4())),
        NOT_FOUND,
        "TRANSACTION_NOT_FOUND",
    )
    assert await amounts(api, friend) == (5 * USD, 0, 5 * USD)


async def test_deleted_user_cannot_move_money_but_stays_readable(api):
    gone, friend = await new_user(api, 10 * USD), await new_user(api, 10 * USD)
    charged = await charge(api, gone, 2 * USD)
    await create_hold(api, gone, 1 * USD)
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=gone))

    for method, request in [
        (api.ledger.Deposit, deposit_request(gone, USD)),
        (api.ledger.Charge, charge_request(gone, USD)),
        (api.ledger.Transfer, transfer_request(gone, friend, USD)),
        (api.ledger.Transfer, transfer_request(friend, gone, USD)),
        (api.ledger.CreateHold, hold_request(gone, USD)),
        (api.ledger.Refund, refund_request(gone, charged.id, USD)),
    ]:
        await rejected(api, method, request, NOT_FOUND, "USER_NOT_FOUND")
    # The money stays readable: balance, transactions and the audit of the ledger.
    assert await amounts(api, gone) == (8 * USD, 1 * USD, 7 * USD)
    assert [t.kind for t in await list_all(api, gone)] == [CHARGE, DEPOSIT]
    assert (await get_transaction(api, gone, charged.id)).amount_micros == 2 * USD
    assert list((await api.ledger.VerifyLedger(ledger_pb2.VerifyLedgerRequest(user_id=gone))).discrepancies) == []
    assert await amounts(api, friend) == (10 * USD, 0, 10 * USD)


# ---- currencies ---------------------------------------------------------------------------------


async def test_enabled_currencies_keep_separate_accounts(database_url):
    async with serving(database_url, ledger_currencies=("USD", "EUR")) as api:
        user_id = await new_user(api, 10 * USD)
        friend = await new_user(api)
        euros = await deposit(api, user_id, 3 * USD, currency_code="EUR")
        assert euros.currency_code == "EUR"
        assert await amounts(api, user_id, "EUR") == (3 * USD, 0, 3 * USD)
        assert await amounts(api, user_id) == (10 * USD, 0, 10 * USD)
        # Dollars do not pay for euros.
        request = charge_request(user_id, 4 * USD, currency_code="EUR")
        await rejected(api, api.ledger.Charge, request, PRECONDITION, "INSUFFICIENT_FUNDS")
        charged = await charge(api, user_id, 1 * USD, currency_code="EUR")
        await refund(api, user_id, charged.id, 1 * USD)  # the refund takes the original's currency
        await transfer(api, user_id, friend, 2 * USD, currency_code="EUR")
        assert await amounts(api, user_id, "EUR") == (1 * USD, 0, 1 * USD)
        assert await amounts(api, friend, "EUR") == (2 * USD, 0, 2 * USD)
        assert await amounts(api, friend, "USD") == (0, 0, 0)
        assert {t.currency_code for t in await list_all(api, user_id, currency_code="EUR")} == {"EUR"}
        assert len(await list_all(api, user_id, currency_code="EUR")) == 4
        # A currency that is well-formed but not enabled.
        request = charge_request(user_id, 1, currency_code="GBP")
        await rejected(api, api.ledger.Charge, request, INVALID, "UNSUPPORTED_CURRENCY")
        await assert_ledger_clean(api)
