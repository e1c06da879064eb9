"""Ledger reads: balances, transactions, holds, and the VerifyLedger audit of invariants."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from google.protobuf.message import Message

from qdata.v1 import ledger_pb2
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server.db.connection import Conn, Row
from qdata_server.db.sql import fetch_all, fetch_one, fetch_row
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS, acting_for
from qdata_server.errors import NotFound
from qdata_server.ledger import convert, rules
from qdata_server.pagination import page_size
from qdata_server.users.convert import timestamp
from qdata_server.validation import ANY_TIMESTAMP, Violations

if TYPE_CHECKING:
    from qdata_server.deps import Deps

MAX_KINDS = 5
# The scope page tokens are sealed for; the suffix names the cursor's shape, so a token from before
# the position order (0012_listing_commit_order.sql) is refused as INVALID_ARGUMENT, not misread.
LIST_TRANSACTIONS_PAGES = "ListTransactions/position"


def _user_never_existed() -> NotFound:
    return NotFound("user not found", reason=ErrorReason.ERROR_REASON_USER_NOT_FOUND)


async def _require_user(conn: Conn, user_id: uuid.UUID) -> None:
    """Users that ever existed, deleted ones included (their money stays readable)."""
    if await fetch_one(conn, "ledger_user_state", {"user_id": user_id}) is None:
        raise _user_never_existed()


async def get_balance(deps: Deps, request: ledger_pb2.GetBalanceRequest) -> ledger_pb2.GetBalanceResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    currency = rules.currency(v, "currency_code", request.currency_code)
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed
    rules.check_supported("currency_code", currency, deps.settings.ledger_currencies)

    # One statement, one round trip: whether the user ever existed and the balance.
    row = await deps.statement_row(
        "ledger_get_balance", {"user_id": user_id, "currency_code": currency}, acting=acting_for(user_id)
    )
    if row is None:
        raise _user_never_existed()
    balance = ledger_pb2.Balance(user_id=str(user_id), currency_code=currency)
    if row["posted_micros"] is not None:
        balance.posted_micros = row["posted_micros"]
        balance.held_micros = row["held_micros"]
        balance.available_micros = row["posted_micros"] - row["held_micros"]
        balance.update_time.CopyFrom(timestamp(row["updated_at"]))
    return ledger_pb2.GetBalanceResponse(balance=balance)


class _ForUser(Protocol):
    """A request that names one of a user's rows."""

    @property
    def user_id(self) -> str: ...


async def _owned(deps: Deps, request: _ForUser, id_field: str, query_name: str, missing: Callable[[], NotFound]) -> Row:
    """The user's row that request's id_field names, read by query_name; missing() if there is none.

    Both ids are checked first (INVALID_ARGUMENT lists every bad one).
    """
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    row_id = v.uuid(id_field, getattr(request, id_field))
    v.raise_if_any()
    row = await deps.statement_row(query_name, {"user_id": user_id, id_field: row_id}, acting=acting_for(user_id))
    if row is None:
        raise missing()
    return row


async def get_transaction(deps: Deps, request: ledger_pb2.GetTransactionRequest) -> ledger_pb2.GetTransactionResponse:
    row = await _owned(
        deps,
        request,
        "transaction_id",
        "ledger_get_transaction",
        lambda: NotFound("transaction not found", reason=ErrorReason.ERROR_REASON_TRANSACTION_NOT_FOUND),
    )
    return ledger_pb2.GetTransactionResponse(transaction=convert.transaction(row))


async def get_hold(deps: Deps, request: ledger_pb2.GetHoldRequest) -> ledger_pb2.GetHoldResponse:
    row = await _owned(
        deps,
        request,
        "hold_id",
        "ledger_get_hold",
        lambda: NotFound("hold not found", reason=ErrorReason.ERROR_REASON_HOLD_NOT_FOUND),
    )
    return ledger_pb2.GetHoldResponse(hold=convert.hold(row, row["read_at"]))


def _time(v: Violations, request: Message, field: str) -> datetime.datetime | None:
    """A Timestamp field as a datetime, None when unset; out-of-range values are violations."""
    if not request.HasField(field):
        return None
    return v.timestamp(field, getattr(request, field), ANY_TIMESTAMP)


async def list_transactions(
    deps: Deps, request: ledger_pb2.ListTransactionsRequest
) -> ledger_pb2.ListTransactionsResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    limit = page_size(request.page_size)
    start = _time(v, request, "start_time")
    end = _time(v, request, "end_time")
    if start and end and end <= start:
        v.add("end_time", "must be after start_time")
    if len(request.kinds) > MAX_KINDS:
        v.add("kinds", f"must hold at most {MAX_KINDS} entries")
    kinds = []
    for index, kind in enumerate(request.kinds):
        if kind not in convert.KIND_FROM_PROTO:
            v.add(f"kinds[{index}]", "must be a known TransactionKind other than UNSPECIFIED")
        else:
            kinds.append(convert.KIND_FROM_PROTO[kind])
    currency = rules.currency(v, "currency_code", request.currency_code) if request.currency_code else None
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed
    filters = {
        "user_id": str(user_id),
        "start_time": start and start.isoformat(),
        "end_time": end and end.isoformat(),
        "kinds": sorted(kinds),
        "currency_code": currency,
    }
    tokens = await deps.page_tokens()
    cursor = tokens.open(request.page_token, LIST_TRANSACTIONS_PAGES, filters)

    page = {
        "user_id": user_id,
        "start_time": start,
        "end_time": end,
        "kinds": kinds or None,
        "currency_code": currency,
        "before_position": int(cursor[0]) if cursor else None,
        "limit": limit + 1,
    }
    # The user check and the page in one round trip (neither needs the other's answer).
    user, rows = await deps.statements(
        [("ledger_user_state", {"user_id": user_id}), ("ledger_list_transactions", page)], acting=acting_for(user_id)
    )
    if not user:
        raise _user_never_existed()
    rows, next_token = tokens.page(
        rows,
        limit,
        LIST_TRANSACTIONS_PAGES,
        filters,
        lambda last: [last["list_position"]],
    )
    return ledger_pb2.ListTransactionsResponse(
        transactions=[convert.transaction(r) for r in rows], next_page_token=next_token
    )


# The cached totals of an account row that VerifyLedger compares with the sums they cache:
# (kind, cached column, summed column, detail).
_CACHED_TOTALS = (
    (
        ledger_pb2.DISCREPANCY_KIND_BALANCE_MISMATCH,
        "posted_micros",
        "postings_total",
        "cached posted balance differs from the sum of the account's postings",
    ),
    (
        ledger_pb2.DISCREPANCY_KIND_HELD_MISMATCH,
        "held_micros",
        "holds_total",
        "cached held amount differs from the sum of the account's active holds",
    ),
)


def _discrepancy(
    kind: ledger_pb2.DiscrepancyKind, row: Row, expected: int, actual: int, detail: str, **where: str
) -> ledger_pb2.LedgerDiscrepancy:
    """One VerifyLedger finding in row's currency; where names its transaction, hold or account."""
    return ledger_pb2.LedgerDiscrepancy(
        kind=kind,
        currency_code=row["currency_code"],
        expected_micros=expected,
        actual_micros=actual,
        detail=detail,
        **where,
    )


async def verify_ledger(deps: Deps, request: ledger_pb2.VerifyLedgerRequest) -> ledger_pb2.VerifyLedgerResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id, required=False)
    if request.max_discrepancies < 0:
        v.add("max_discrepancies", "must not be negative")
    v.raise_if_any()
    limit = page_size(request.max_discrepancies, field="max_discrepancies", default=100)
    params = {"user_id": user_id, "limit": limit + 1}

    async def work(conn: Conn) -> tuple[list[Row], list[Row], list[Row], list[Row], Row]:
        if user_id is not None:
            await _require_user(conn, user_id)
        return (
            await fetch_all(conn, "ledger_verify_unbalanced", params),
            await fetch_all(conn, "ledger_verify_accounts", params),
            await fetch_all(conn, "ledger_verify_holds", params),
            await fetch_all(conn, "ledger_verify_refunds", params),
            await fetch_row(conn, "ledger_verify_counts", params),
        )

    # Checking the whole ledger is the cross-user path by definition.
    unbalanced, accounts, holds, refunds, counts = await deps.transaction(
        work, snapshot=True, acting=ACTING_FOR_ALL_USERS
    )
    found = [
        _discrepancy(
            ledger_pb2.DISCREPANCY_KIND_UNBALANCED_TRANSACTION,
            row,
            0,
            row["total"],
            "the postings of this transaction do not sum to zero (or it lacks its two legs)",
            transaction_id=str(row["transaction_id"]),
        )
        for row in unbalanced
    ]
    for row in accounts:
        account = f"users/{row['user_id']}"
        for kind, cached, summed, detail in _CACHED_TOTALS:
            if row[cached] != row[summed]:
                found.append(_discrepancy(kind, row, row[summed], row[cached], detail, account=account))
        if row["posted_micros"] < row["held_micros"]:
            found.append(
                _discrepancy(
                    ledger_pb2.DISCREPANCY_KIND_NEGATIVE_AVAILABLE,
                    row,
                    0,
                    row["posted_micros"] - row["held_micros"],
                    "available balance is negative",
                    account=account,
                )
            )
    found += [
        _discrepancy(
            ledger_pb2.DISCREPANCY_KIND_HOLD_INCONSISTENT,
            row,
            row["captured_in_transaction"] or 0,
            row["captured_micros"],
            f"hold in status {row['status']} disagrees with its capture transaction",
            hold_id=str(row["hold_id"]),
            account=f"users/{row['user_id']}",
        )
        for row in holds
    ]
    found += [
        _discrepancy(
            ledger_pb2.DISCREPANCY_KIND_REFUND_EXCEEDS_ORIGINAL,
            row,
            row["amount_micros"],
            row["refunded"],
            "refunds of this transaction exceed its amount",
            transaction_id=str(row["transaction_id"]),
        )
        for row in refunds
    ]
    return ledger_pb2.VerifyLedgerResponse(
        discrepancies=found[:limit],
        truncated=len(found) > limit,
        accounts_checked=counts["accounts"],
        transactions_checked=counts["transactions"],
        holds_checked=counts["holds"],
        check_time=timestamp(counts["check_time"]),
    )
