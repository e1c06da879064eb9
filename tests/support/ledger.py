"""Helpers shared by the LedgerService behaviour tests (tests/api/test_ledger_*.py).

Everything here goes through the public gRPC API, except `ledger_state` and `age_holds`, which
read or move the test's rows directly (tests/support/database.py).
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from google.protobuf import duration_pb2

from qdata.v1 import ledger_pb2
from tests.support.calls import create_user, expect_error, rid
from tests.support.database import scalar, sql, table_rows
from tests.support.server import Api

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

USD = 1_000_000  # micro-units per currency unit
MAX_AMOUNT = 10**15

DEPOSIT = ledger_pb2.TRANSACTION_KIND_DEPOSIT
CHARGE = ledger_pb2.TRANSACTION_KIND_CHARGE
REFUND = ledger_pb2.TRANSACTION_KIND_REFUND
TRANSFER = ledger_pb2.TRANSACTION_KIND_TRANSFER
HOLD_CAPTURE = ledger_pb2.TRANSACTION_KIND_HOLD_CAPTURE

ACTIVE = ledger_pb2.HOLD_STATUS_ACTIVE
CAPTURED = ledger_pb2.HOLD_STATUS_CAPTURED
RELEASED = ledger_pb2.HOLD_STATUS_RELEASED
EXPIRED = ledger_pb2.HOLD_STATUS_EXPIRED


# ---- direct SQL ---------------------------------------------------------------------------------


STATE_TABLES = (
    "ledger_accounts",
    "ledger_transactions",
    "ledger_postings",
    "ledger_holds",
    "idempotency_keys",
    "audit_events",
)


async def ledger_state(api: Api) -> dict[str, Any]:
    """Every row a ledger request could write, to prove that a rejected request changed nothing."""
    return await table_rows(api, *STATE_TABLES)


async def age_holds(api: Api, seconds: float, *hold_ids: str) -> None:
    """Moves holds (every hold without hold_ids) `seconds` into the past, creation and expiry
    alike, as if that much time had passed for them.

    Holds expire by the database's now(), in SQL, read by every path alike (reads, the sweeper,
    the lazy sweep of a new hold or a charge); moving the rows, not the clock, lets a test see a
    hold expire without sleeping and without a clock only tests would use.
    """
    await sql(
        api,
        "UPDATE ledger_holds SET created_at = created_at - make_interval(secs => %(s)s),"
        " expire_at = expire_at - make_interval(secs => %(s)s)"
        " WHERE cardinality(%(ids)s::uuid[]) = 0 OR hold_id = ANY(%(ids)s::uuid[])",
        {"s": seconds, "ids": list(hold_ids)},
    )


async def rejected(api: Api, method, request, code: grpc.StatusCode, reason: str | None = None):
    """Calls method(request), asserts it fails with code (and reason) and that nothing changed."""
    before = await ledger_state(api)
    error = await expect_error(method(request), code, reason)
    after = await ledger_state(api)
    for name in STATE_TABLES:
        assert after[name] == before[name], f"{name} changed by a rejected {type(request).__name__}"
    return error


async def count(api: Api, table: str) -> int:
    return await scalar(api, f"SELECT count(*) FROM {table}")  # table names are literals in tests


# ---- API shortcuts ------------------------------------------------------------------------------


async def new_user(api: Api, funds: int = 0) -> str:
    """A fresh user's id, with `funds` micro-units deposited when non-zero."""
    user = await create_user(api)
    if funds:
        await deposit(api, user.id, funds)
    return user.id


def deposit_request(user_id: str, amount: int, /, **fields: Any) -> ledger_pb2.DepositRequest:
    values: dict[str, Any] = {
        "request_id": rid(),
        "user_id": user_id,
        "amount_micros": amount,
        "external_reference": f"ch_{uuid.uuid4().hex}",
    }
    values.update(fields)
    return ledger_pb2.DepositRequest(**values)


async def deposit(api: Api, user_id: str, amount: int, **fields: Any) -> ledger_pb2.Transaction:
    return (await api.ledger.Deposit(deposit_request(user_id, amount, **fields))).transaction


def charge_request(user_id: str, amount: int, /, **fields: Any) -> ledger_pb2.ChargeRequest:
    return ledger_pb2.ChargeRequest(**{"request_id": rid(), "user_id": user_id, "amount_micros": amount, **fields})


async def charge(api: Api, user_id: str, amount: int, **fields: Any) -> ledger_pb2.Transaction:
    return (await api.ledger.Charge(charge_request(user_id, amount, **fields))).transaction


def transfer_request(from_id: str, to_id: str, amount: int, /, **fields: Any) -> ledger_pb2.TransferRequest:
    values = {"request_id": rid(), "from_user_id": from_id, "to_user_id": to_id, "amount_micros": amount}
    return ledger_pb2.TransferRequest(**{**values, **fields})


async def transfer(api: Api, from_id: str, to_id: str, amount: int, **fields: Any) -> ledger_pb2.Transaction:
    return (await api.ledger.Transfer(transfer_request(from_id, to_id, amount, **fields))).transaction


def refund_request(user_id: str, original_id: str, amount: int, /, **fields: Any) -> ledger_pb2.RefundRequest:
    values = {"request_id": rid(), "user_id": user_id, "original_transaction_id": original_id, "amount_micros": amount}
    return ledger_pb2.RefundRequest(**{**values, **fields})


async def refund(api: Api, user_id: str, original_id: str, amount: int, **fields: Any) -> ledger_pb2.Transaction:
    return (await api.ledger.Refund(refund_request(user_id, original_id, amount, **fields))).transaction


def ttl(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def hold_request(user_id: str, amount: int, /, **fields: Any) -> ledger_pb2.CreateHoldRequest:
    return ledger_pb2.CreateHoldRequest(**{"request_id": rid(), "user_id": user_id, "amount_micros": amount, **fields})


async def create_hold(api: Api, user_id: str, amount: int, **fields: Any) -> ledger_pb2.Hold:
    return (await api.ledger.CreateHold(hold_request(user_id, amount, **fields))).hold


def capture_request(user_id: str, hold_id: str, amount: int, /, **fields: Any) -> ledger_pb2.CaptureHoldRequest:
    values = {"request_id": rid(), "user_id": user_id, "hold_id": hold_id, "amount_micros": amount}
    return ledger_pb2.CaptureHoldRequest(**{**values, **fields})


async def capture(api: Api, user_id: str, hold_id: str, amount: int, **fields: Any) -> ledger_pb2.CaptureHoldResponse:
    return await api.ledger.CaptureHold(capture_request(user_id, hold_id, amount, **fields))


def release_request(user_id: str, hold_id: str, /, **fields: Any) -> ledger_pb2.ReleaseHoldRequest:
    return ledger_pb2.ReleaseHoldRequest(**{"request_id": rid(), "user_id": user_id, "hold_id": hold_id, **fields})


async def release(api: Api, user_id: str, hold_id: str, **fields: Any) -> ledger_pb2.Hold:
    return (await api.ledger.ReleaseHold(release_request(user_id, hold_id, **fields))).hold


async def get_hold(api: Api, user_id: str, hold_id: str) -> ledger_pb2.Hold:
    return (await api.ledger.GetHold(ledger_pb2.GetHoldRequest(user_id=user_id, hold_id=hold_id))).hold


async def get_transaction(api: Api, user_id: str, transaction_id: str) -> ledger_pb2.Transaction:
    request = ledger_pb2.GetTransactionRequest(user_id=user_id, transaction_id=transaction_id)
    return (await api.ledger.GetTransaction(request)).transaction


async def balance(api: Api, user_id: str, currency: str = "") -> ledger_pb2.Balance:
    request = ledger_pb2.GetBalanceRequest(user_id=user_id, currency_code=currency)
    return (await api.ledger.GetBalance(request)).balance


async def amounts(api: Api, user_id: str, currency: str = "") -> tuple[int, int, int]:
    """(posted, held, available) of a user's account."""
    b = await balance(api, user_id, currency)
    return b.posted_micros, b.held_micros, b.available_micros


async def list_all(api: Api, user_id: str, page_size: int = 0, **filters: Any) -> list[ledger_pb2.Transaction]:
    """Every transaction ListTransactions returns for these filters, walking all pages."""
    found: list[ledger_pb2.Transaction] = []
    token = ""
    while True:
        request = ledger_pb2.ListTransactionsRequest(user_id=user_id, page_size=page_size, page_token=token, **filters)
        page = await api.ledger.ListTransactions(request)
        found.extend(page.transactions)
        token = page.next_page_token
        if not token:
            return found


async def verify(api: Api, user_id: str = "", max_discrepancies: int = 0) -> ledger_pb2.VerifyLedgerResponse:
    request = ledger_pb2.VerifyLedgerRequest(user_id=user_id, max_discrepancies=max_discrepancies)
    return await api.ledger.VerifyLedger(request)


async def assert_ledger_clean(api: Api) -> ledger_pb2.VerifyLedgerResponse:
    """VerifyLedger finds nothing and every posting in the database sums to zero."""
    report = await verify(api)
    assert list(report.discrepancies) == [], report
    assert not report.truncated
    assert await scalar(api, "SELECT coalesce(sum(amount_micros), 0) FROM ledger_postings") == 0
    return report


def assert_balanced(tx: ledger_pb2.Transaction) -> None:
    """A transaction's postings sum to zero, one leg per side, each of the transaction's amount."""
    assert len(tx.postings) == 2, tx
    assert sum(p.amount_micros for p in tx.postings) == 0, tx
    assert sorted(p.amount_micros for p in tx.postings) == [-tx.amount_micros, tx.amount_micros]


def postings(tx: ledger_pb2.Transaction) -> dict[str, int]:
    """{account: signed amount} of a transaction's postings."""
    return {p.account: p.amount_micros for p in tx.postings}
