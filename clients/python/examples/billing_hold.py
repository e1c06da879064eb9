"""Billing service: top a user up, then hold credits around a model call and capture its cost.

    QDATA_ADDRESS=127.0.0.1:50051 QDATA_TOKEN=qdt_... python billing_hold.py --user alice

The calling service's token needs users.read (GetUser), ledger.read and ledger.write.
Amounts are integer micro-units (1 USD = 1,000,000): never floats.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from decimal import Decimal

from google.protobuf import duration_pb2

from qdata.client import FailedPrecondition, QdataClient
from qdata.v1 import ledger_pb2, user_pb2

MICROS = 1_000_000


def micros(amount: str) -> int:
    """A decimal amount such as "10.00" in micro-units, exactly (no float on the way)."""
    value = Decimal(amount) * MICROS
    if value != value.to_integral_value():
        raise SystemExit(f"{amount} has more than 6 decimals")
    return int(value)


def units(amount_micros: int) -> str:
    sign = "-" if amount_micros < 0 else ""
    whole, fraction = divmod(abs(amount_micros), MICROS)
    return f"{sign}{whole}.{fraction:06d}"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=os.environ.get("QDATA_ADDRESS", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("QDATA_TOKEN"), help="default: $QDATA_TOKEN")
    parser.add_argument("--user", default="alice", help="username (default: alice of the sample data)")
    parser.add_argument("--top-up", default="10.00", help="USD deposited, as a decimal")
    parser.add_argument("--hold", default="0.50", help="USD reserved before the model call")
    parser.add_argument("--cost", default="0.123456", help="USD the model call turned out to cost")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    with QdataClient(args.address, token=args.token) as qdata:
        user_id = qdata.users.GetUser(user_pb2.GetUserRequest(username=args.user)).user.id
        before = qdata.ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=user_id)).balance
        print(f"{args.user} available before: {units(before.available_micros)} USD")

        # Top-up: the payment provider's charge id goes in external_reference (unique among
        # deposits), the request_id makes a resend of this request harmless.
        payment_id = f"example-payment-{uuid.uuid4()}"
        deposit = qdata.ledger.Deposit(
            ledger_pb2.DepositRequest(
                user_id=user_id,
                amount_micros=micros(args.top_up),
                source=ledger_pb2.DEPOSIT_SOURCE_PAYMENT,
                external_reference=payment_id,
                description="Credits bought",
            )
        )
        print(f"deposited {units(deposit.transaction.amount_micros)} USD transaction={deposit.transaction.id}")

        # A model call: reserve first (fails with INSUFFICIENT_FUNDS if the user cannot pay),
        # call the model, then capture what it cost; the rest of the hold is released.
        call_id = f"example-call-{uuid.uuid4()}"
        try:
            held = qdata.ledger.CreateHold(
                ledger_pb2.CreateHoldRequest(
                    request_id=f"{call_id}/hold",
                    user_id=user_id,
                    amount_micros=micros(args.hold),
                    ttl=duration_pb2.Duration(seconds=300),
                    reference=call_id,
                    description="Model call",
                )
            ).hold
        except FailedPrecondition as exc:
            print(f"cannot reserve {args.hold} USD: {exc.reason}")
            return 1
        print(f"held {units(held.amount_micros)} USD hold={held.id}")
        captured = qdata.ledger.CaptureHold(
            ledger_pb2.CaptureHoldRequest(
                request_id=f"{call_id}/capture", user_id=user_id, hold_id=held.id, amount_micros=micros(args.cost)
            )
        )
        print(f"captured {units(captured.hold.captured_micros)} USD transaction={captured.transaction.id}")

        # A model call that failed: release the hold, nothing is charged.
        failed_call = f"example-call-{uuid.uuid4()}"
        second = qdata.ledger.CreateHold(
            ledger_pb2.CreateHoldRequest(
                request_id=f"{failed_call}/hold",
                user_id=user_id,
                amount_micros=micros(args.hold),
                reference=failed_call,
            )
        ).hold
        released = qdata.ledger.ReleaseHold(
            ledger_pb2.ReleaseHoldRequest(request_id=f"{failed_call}/release", user_id=user_id, hold_id=second.id)
        )
        print(f"released hold={released.hold.id} status={ledger_pb2.HoldStatus.Name(released.hold.status)}")

        after = qdata.ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=user_id)).balance
        print(f"{args.user} available after: {units(after.available_micros)} USD ({after.available_micros} micros)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
