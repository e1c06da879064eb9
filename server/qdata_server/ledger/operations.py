"""Ledger mutations: each is one idempotent transaction around one ledger_*_once SQL function.

One database call does the whole request (db/functions/ledger.sql, "one-call forms"): it claims
the request's idempotency key, moves the money, appends the audit event and returns the answer
(the new transaction or hold) in the same statement; the answer is stored with the commit, in the
same flush. BEGIN and the acting-user settings leave with the call, so a movement is two round
trips: the call, and the stored answer with COMMIT. A key that a committed request already holds
comes back from the call (idempotency.Held) and is answered by idempotency's one comparison.

The SQL functions (db/functions/ledger.sql) lock the user accounts involved in user_id order, check
funds, append the immutable transaction and its postings and move the cached balances; business
rejections (INSUFFICIENT_FUNDS, HOLD_EXPIRED, ...) roll everything back, including the
request_id claim, so a rejected request leaves no trace and may be retried with the same id.

Every operation here moves money, so the rows it creates carry its idempotency key forever
(0009_ledger_request_keys.sql): a replay whose idempotency record was purged is answered from
them (`remembered` below) with the first answer rebuilt exactly, the transaction or hold as the
request left it (a charge refunded later still shows refunded_micros 0, a hold captured later
still shows ACTIVE), and never takes effect twice.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from google.protobuf.message import Message

from qdata.v1 import ledger_pb2
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import audit, metrics_hooks
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_one, fetch_row
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS, acting_for
from qdata_server.errors import FieldViolation, Internal, InvalidArgument
from qdata_server.idempotency import Held, RequestKey, check_same_request, request_key
from qdata_server.ledger import convert, rules
from qdata_server.validation import Violations

if TYPE_CHECKING:
    from qdata_server.deps import Deps

M = TypeVar("M", bound=Message)
R = TypeVar(
    "R", ledger_pb2.DepositResponse, ledger_pb2.ChargeResponse, ledger_pb2.RefundResponse, ledger_pb2.TransferResponse
)


# The hold's columns in ledger_capture_hold_once's answer (each prefixed hold_ there).
_HOLD_COLUMNS = (
    "user_id hold_id currency_code amount_micros status description reference captured_micros "
    "capture_transaction_id request_id created_at expire_at resolved_at read_at"
).split()


class _Amounted(Protocol):
    """A request that moves an amount of money (its currency field is named by the caller)."""

    @property
    def amount_micros(self) -> int: ...


async def _transaction(conn: Conn, user_id: uuid.UUID, transaction_id: uuid.UUID) -> ledger_pb2.Transaction:
    row = await fetch_row(conn, "ledger_get_transaction", {"user_id": user_id, "transaction_id": transaction_id})
    return convert.transaction(row)


async def _hold(conn: Conn, user_id: uuid.UUID, hold_id: uuid.UUID) -> ledger_pb2.Hold:
    row = await fetch_row(conn, "ledger_get_hold", {"user_id": user_id, "hold_id": hold_id})
    return convert.hold(row, row["read_at"])


async def request_holder(conn: Conn, key: RequestKey) -> dict[str, Any]:
    """The ledger row that carries key, checked to be the same request (else REQUEST_ID_REUSED).

    Only called once a ledger function reported the key as taken, so the row exists.
    """
    row = await fetch_one(conn, "ledger_request_holder", key.ids())
    if row is None:
        raise Internal("internal error: a remembered request has no ledger row")
    check_same_request(key, row["method"], row["request_hash"])
    return row


async def _first_transaction(conn: Conn, user_id: uuid.UUID, transaction_id: uuid.UUID) -> ledger_pb2.Transaction:
    """A transaction as its request first answered it: nothing refunded yet (the rest is immutable)."""
    transaction = await _transaction(conn, user_id, transaction_id)
    transaction.refunded_micros = 0
    return transaction


def _once(action: str, key: RequestKey, **summary: Any) -> dict[str, Any]:
    """The key and the audit event (action ledger.<action>) as a ledger *_once function takes them."""
    return {**key.params(), **audit.params(f"ledger.{action}", summary)}


async def _post(
    deps: Deps,
    request: Message,
    response_type: type[R],
    query_name: str,
    owner: uuid.UUID,
    action: str,
    *,
    kind: str,
    amount: int,
    currency: str | None,
    params: dict[str, Any],
    summary: dict[str, Any] | None = None,
    counterparty: uuid.UUID | None = None,
    understood: dict[str, object] | None = None,
) -> R:
    """Runs one money-moving ledger function idempotently, audits it and answers its transaction,
    all in one database call (query_name names a *_once block: claim, movement, audit, answer).

    Deposit, Charge, Refund and Transfer differ only in the function, its other parameters and
    the rest of the audit summary. The amount, and the currency as resolved (None for a refund,
    which takes its original's), go to the function and the summary; the request is matched on
    replay with that currency and the other understood defaults filled in. The transaction comes
    back as the owner (the sender of a transfer) sees it. A transfer's transaction acts for both
    of its users (it credits the counterparty's account). kind is the ledger transaction kind the
    function writes: qdata_money_moved_micros_total counts it once the first call committed.
    """
    money: dict[str, Any] = {"amount_micros": amount}
    canonical = None
    if currency is not None:
        money["currency_code"] = currency
        canonical = _understood(request, currency_code=currency, **(understood or {}))
    key = request_key(request, user_id=owner, canonical=canonical)

    async def work(conn: Conn) -> R | Held:
        row = await fetch_row(conn, query_name, {**params, **money, **_once(action, key, **money, **(summary or {}))})
        if not row["claimed"]:
            return Held.of(row)
        return response_type(transaction=convert.transaction(row))

    async def remembered(conn: Conn) -> R:
        holder = await request_holder(conn, key)
        return response_type(transaction=await _first_transaction(conn, owner, holder["transaction_id"]))

    def committed(response: R) -> None:
        moved = response.transaction
        metrics_hooks.money_moved(kind, moved.currency_code, moved.amount_micros)

    acting = acting_for(owner, counterparty) if counterparty else acting_for(owner)
    return await deps.idempotent_once(
        response_type, work, key=key, acting=acting, remembered=remembered, committed=committed
    )


def _understood(request: M, **resolved: object) -> M:
    """The request with its defaults filled in as the server resolved them (for replay matching)."""
    copy = type(request)()
    copy.CopyFrom(request)
    for field, value in resolved.items():
        setattr(copy, field, value)
    return copy


def _money(request: _Amounted, v: Violations, *, currency_field: str = "currency_code") -> str:
    rules.amount(v, "amount_micros", request.amount_micros)
    return rules.currency(v, currency_field, getattr(request, currency_field))


async def deposit(deps: Deps, request: ledger_pb2.DepositRequest) -> ledger_pb2.DepositResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    currency = _money(request, v)
    source = {
        ledger_pb2.DEPOSIT_SOURCE_UNSPECIFIED: "payment",
        ledger_pb2.DEPOSIT_SOURCE_PAYMENT: "payment",
        ledger_pb2.DEPOSIT_SOURCE_PROMOTION: "promotion",
    }.get(request.source)
    if source is None:
        v.add("source", "is not a known DepositSource")
    v.text("external_reference", request.external_reference, rules.MAX_REFERENCE_LENGTH)
    if source == "payment" and not request.external_reference.strip():
        v.add("external_reference", "is required for a PAYMENT deposit (the payment provider's reference)")
    v.text("description", request.description, rules.MAX_DESCRIPTION_LENGTH)
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed
    rules.check_supported("currency_code", currency, deps.settings.ledger_currencies)

    return await _post(
        deps,
        request,
        ledger_pb2.DepositResponse,
        "ledger_deposit_once",
        user_id,
        "Deposit",
        kind="deposit",
        amount=request.amount_micros,
        currency=currency,
        params={
            "user_id": user_id,
            "source": source,
            "external_reference": request.external_reference,
            "description": request.description,
        },
        summary={"source": source},
        understood={
            "source": ledger_pb2.DEPOSIT_SOURCE_PAYMENT if source == "payment" else ledger_pb2.DEPOSIT_SOURCE_PROMOTION
        },
    )


async def open_balance(deps: Deps, request: ledger_pb2.DepositRequest) -> ledger_pb2.DepositResponse:
    """Credits an imported user's opening balance (kind OPENING_BALANCE); `qdata-server import` only.

    No RPC reaches this: the request is a DepositRequest of which user_id, amount_micros,
    currency_code, description and request_id count (source and external_reference must be
    unset). The money comes from the opening_balances system account, so revenue and payment
    totals leave it out; like every ledger write it is remembered forever by its request key.
    """
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    currency = _money(request, v)
    if request.source != ledger_pb2.DEPOSIT_SOURCE_UNSPECIFIED:
        v.add("source", "must be unset for an opening balance")
    if request.external_reference:
        v.add("external_reference", "must be empty for an opening balance")
    v.text("description", request.description, rules.MAX_DESCRIPTION_LENGTH)
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed
    rules.check_supported("currency_code", currency, deps.settings.ledger_currencies)
    return await _post(
        deps,
        request,
        ledger_pb2.DepositResponse,
        "ledger_opening_balance_once",
        user_id,
        "OpeningBalance",
        kind="opening_balance",
        amount=request.amount_micros,
        currency=currency,
        params={"user_id": user_id, "description": request.description},
    )


async def charge(deps: Deps, request: ledger_pb2.ChargeRequest) -> ledger_pb2.ChargeResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    currency = _money(request, v)
    v.text("description", request.description, rules.MAX_DESCRIPTION_LENGTH)
    v.text("reference", request.reference, rules.MAX_REFERENCE_LENGTH)
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed
    rules.check_supported("currency_code", currency, deps.settings.ledger_currencies)

    return await _post(
        deps,
        request,
        ledger_pb2.ChargeResponse,
        "ledger_charge_once",
        user_id,
        "Charge",
        kind="charge",
        amount=request.amount_micros,
        currency=currency,
        params={"user_id": user_id, "description": request.description, "reference": request.reference},
    )


async def refund(deps: Deps, request: ledger_pb2.RefundRequest) -> ledger_pb2.RefundResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    original_id = v.uuid("original_transaction_id", request.original_transaction_id)
    rules.amount(v, "amount_micros", request.amount_micros)
    v.text("description", request.description, rules.MAX_DESCRIPTION_LENGTH)
    v.raise_if_any()
    assert user_id is not None and original_id is not None  # raise_if_any() passed

    return await _post(
        deps,
        request,
        ledger_pb2.RefundResponse,
        "ledger_refund_once",
        user_id,
        "Refund",
        kind="refund",
        amount=request.amount_micros,
        currency=None,
        params={"user_id": user_id, "original_transaction_id": original_id, "description": request.description},
        summary={"original_transaction_id": str(original_id)},
    )


async def transfer(deps: Deps, request: ledger_pb2.TransferRequest) -> ledger_pb2.TransferResponse:
    v = Violations()
    from_id = v.uuid("from_user_id", request.from_user_id)
    to_id = v.uuid("to_user_id", request.to_user_id)
    currency = _money(request, v)
    v.text("description", request.description, rules.MAX_DESCRIPTION_LENGTH)
    v.text("reference", request.reference, rules.MAX_REFERENCE_LENGTH)
    v.raise_if_any()
    assert from_id is not None and to_id is not None  # raise_if_any() passed
    if from_id == to_id:
        raise InvalidArgument(
            [FieldViolation("to_user_id", "must differ from from_user_id")],
            reason=ErrorReason.ERROR_REASON_SELF_TRANSFER,
        )
    rules.check_supported("currency_code", currency, deps.settings.ledger_currencies)

    return await _post(
        deps,
        request,
        ledger_pb2.TransferResponse,
        "ledger_transfer_once",
        from_id,
        "Transfer",
        kind="transfer",
        amount=request.amount_micros,
        currency=currency,
        params={
            "from_user_id": from_id,
            "to_user_id": to_id,
            "description": request.description,
            "reference": request.reference,
        },
        summary={"to_user_id": str(to_id)},
        counterparty=to_id,
    )


async def create_hold(deps: Deps, request: ledger_pb2.CreateHoldRequest) -> ledger_pb2.CreateHoldResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    currency = _money(request, v)
    ttl_seconds = rules.hold_ttl(v, "ttl", request.ttl, request.HasField("ttl"))
    v.text("description", request.description, rules.MAX_DESCRIPTION_LENGTH)
    v.text("reference", request.reference, rules.MAX_REFERENCE_LENGTH)
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed
    rules.check_supported("currency_code", currency, deps.settings.ledger_currencies)
    key = request_key(request, user_id=user_id, canonical=_understood(request, currency_code=currency))

    async def work(conn: Conn) -> ledger_pb2.CreateHoldResponse | Held:
        row = await fetch_row(
            conn,
            "ledger_create_hold_once",
            {
                "user_id": user_id,
                "amount_micros": request.amount_micros,
                "currency_code": currency,
                "ttl_seconds": ttl_seconds,
                "description": request.description,
                "reference": request.reference,
                **_once(
                    "CreateHold",
                    key,
                    amount_micros=request.amount_micros,
                    currency_code=currency,
                    ttl_seconds=ttl_seconds,
                ),
            },
        )
        if not row["claimed"]:
            return Held.of(row)
        return ledger_pb2.CreateHoldResponse(hold=convert.hold(row, row["read_at"]))

    async def remembered(conn: Conn) -> ledger_pb2.CreateHoldResponse:
        holder = await request_holder(conn, key)
        row = await fetch_row(conn, "ledger_get_hold", {"user_id": user_id, "hold_id": holder["hold_id"]})
        # The hold as it was created: active, nothing captured (its other columns never change).
        created = {**row, "status": "active", "captured_micros": 0, "capture_transaction_id": None, "resolved_at": None}
        return ledger_pb2.CreateHoldResponse(hold=convert.hold(created, row["created_at"]))

    return await deps.idempotent_once(
        ledger_pb2.CreateHoldResponse, work, key=key, acting=acting_for(user_id), remembered=remembered
    )


async def capture_hold(deps: Deps, request: ledger_pb2.CaptureHoldRequest) -> ledger_pb2.CaptureHoldResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    hold_id = v.uuid("hold_id", request.hold_id)
    rules.amount(v, "amount_micros", request.amount_micros)
    v.text("description", request.description, rules.MAX_DESCRIPTION_LENGTH)
    v.raise_if_any()
    assert user_id is not None and hold_id is not None  # raise_if_any() passed
    key = request_key(request, user_id=user_id)

    async def work(conn: Conn) -> ledger_pb2.CaptureHoldResponse | Held:
        # The audit summary's transaction_id is added by the function, which creates it.
        row = await fetch_row(
            conn,
            "ledger_capture_hold_once",
            {
                "user_id": user_id,
                "hold_id": hold_id,
                "amount_micros": request.amount_micros,
                "description": request.description,
                **_once("CaptureHold", key, amount_micros=request.amount_micros),
            },
        )
        if not row["claimed"]:
            return Held.of(row)
        hold = {column: row[f"hold_{column}"] for column in _HOLD_COLUMNS}
        return ledger_pb2.CaptureHoldResponse(
            hold=convert.hold(hold, hold["read_at"]), transaction=convert.transaction(row)
        )

    async def remembered(conn: Conn) -> ledger_pb2.CaptureHoldResponse:
        holder = await request_holder(conn, key)
        # A captured hold never changes again.
        return ledger_pb2.CaptureHoldResponse(
            hold=await _hold(conn, user_id, holder["hold_id"]),
            transaction=await _first_transaction(conn, user_id, holder["transaction_id"]),
        )

    def committed(response: ledger_pb2.CaptureHoldResponse) -> None:
        moved = response.transaction
        metrics_hooks.money_moved("hold_capture", moved.currency_code, moved.amount_micros)

    return await deps.idempotent_once(
        ledger_pb2.CaptureHoldResponse,
        work,
        key=key,
        acting=acting_for(user_id),
        remembered=remembered,
        committed=committed,
    )


async def release_hold(deps: Deps, request: ledger_pb2.ReleaseHoldRequest) -> ledger_pb2.ReleaseHoldResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    hold_id = v.uuid("hold_id", request.hold_id)
    v.raise_if_any()
    assert user_id is not None and hold_id is not None  # raise_if_any() passed
    key = request_key(request, user_id=user_id)

    async def work(conn: Conn) -> ledger_pb2.ReleaseHoldResponse | Held:
        row = await fetch_row(
            conn, "ledger_release_hold_once", {"user_id": user_id, "hold_id": hold_id, **_once("ReleaseHold", key)}
        )
        if not row["claimed"]:
            return Held.of(row)
        return ledger_pb2.ReleaseHoldResponse(hold=convert.hold(row, row["read_at"]))

    async def remembered(conn: Conn) -> ledger_pb2.ReleaseHoldResponse:
        holder = await request_holder(conn, key)
        # A released hold never changes again.
        return ledger_pb2.ReleaseHoldResponse(hold=await _hold(conn, user_id, holder["hold_id"]))

    return await deps.idempotent_once(
        ledger_pb2.ReleaseHoldResponse, work, key=key, acting=acting_for(user_id), remembered=remembered
    )


async def sweep_expired_holds(deps: Deps, *, batch: int = 500) -> int:
    """Resolves expired holds of up to `batch` accounts (the background sweeper); returns the count."""
    # The background sweeper resolves any user's expired holds: a cross-user path.
    row = await deps.transaction(
        lambda conn: fetch_row(conn, "ledger_sweep_expired_holds", {"limit": batch}), acting=ACTING_FOR_ALL_USERS
    )
    swept: int = row["swept"]
    return swept
