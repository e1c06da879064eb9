"""Ledger rows to qdata.v1 messages."""

from __future__ import annotations

import datetime
from typing import Any

from qdata.v1 import ledger_pb2
from qdata_server.convert import optional_id, same_named, timestamp

KIND_TO_PROTO = {
    "deposit": ledger_pb2.TRANSACTION_KIND_DEPOSIT,
    "charge": ledger_pb2.TRANSACTION_KIND_CHARGE,
    "refund": ledger_pb2.TRANSACTION_KIND_REFUND,
    "transfer": ledger_pb2.TRANSACTION_KIND_TRANSFER,
    "hold_capture": ledger_pb2.TRANSACTION_KIND_HOLD_CAPTURE,
    "opening_balance": ledger_pb2.TRANSACTION_KIND_OPENING_BALANCE,
}
KIND_FROM_PROTO = {v: k for k, v in KIND_TO_PROTO.items()}
SOURCE_TO_PROTO = {
    "": ledger_pb2.DEPOSIT_SOURCE_UNSPECIFIED,
    "payment": ledger_pb2.DEPOSIT_SOURCE_PAYMENT,
    "promotion": ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
}
HOLD_STATUS_TO_PROTO = {
    "active": ledger_pb2.HOLD_STATUS_ACTIVE,
    "captured": ledger_pb2.HOLD_STATUS_CAPTURED,
    "released": ledger_pb2.HOLD_STATUS_RELEASED,
    "expired": ledger_pb2.HOLD_STATUS_EXPIRED,
}


def transaction(row: dict[str, Any]) -> ledger_pb2.Transaction:
    """A Transaction from a ledger_get_transaction / ledger_list_transactions row."""
    return ledger_pb2.Transaction(
        id=str(row["transaction_id"]),
        kind=KIND_TO_PROTO[row["kind"]],
        user_id=str(row["user_id"]),
        counterparty_user_id=optional_id(row["counterparty_user_id"]),
        deposit_source=SOURCE_TO_PROTO[row["deposit_source"]],
        original_transaction_id=optional_id(row["original_transaction_id"]),
        hold_id=optional_id(row["hold_id"]),
        **same_named(
            row, "amount_micros currency_code description reference external_reference refunded_micros request_id"
        ),
        postings=[
            ledger_pb2.Posting(account=p["account"], amount_micros=p["amount_micros"]) for p in row["postings"] or []
        ],
        create_time=timestamp(row["created_at"]),
    )


def hold(row: dict[str, Any], now: datetime.datetime) -> ledger_pb2.Hold:
    """A Hold as of `now`: an active hold past its expiry reads EXPIRED before any sweep."""
    status = row["status"]
    resolved = row["resolved_at"]
    if status == "active" and row["expire_at"] <= now:
        status, resolved = "expired", row["expire_at"]
    return ledger_pb2.Hold(
        id=str(row["hold_id"]),
        user_id=str(row["user_id"]),
        status=HOLD_STATUS_TO_PROTO[status],
        **same_named(row, "amount_micros currency_code description reference captured_micros"),
        capture_transaction_id=optional_id(row["capture_transaction_id"]),
        create_time=timestamp(row["created_at"]),
        expire_time=timestamp(row["expire_at"]),
        resolve_time=timestamp(resolved),
    )
