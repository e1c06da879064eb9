"""Validation of ledger inputs: amounts, currencies, texts and hold lifetimes."""

from __future__ import annotations

import datetime

from google.protobuf import duration_pb2

from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server.errors import FieldViolation, InvalidArgument
from qdata_server.validation import CURRENCY_CODE, Violations

MAX_AMOUNT_MICROS = 10**15
MAX_DESCRIPTION_LENGTH = 500
MAX_REFERENCE_LENGTH = 200
DEFAULT_HOLD_TTL = datetime.timedelta(minutes=15)
MIN_HOLD_TTL = datetime.timedelta(seconds=1)
MAX_HOLD_TTL = datetime.timedelta(hours=24)


def amount(v: Violations, field: str, value: int) -> int:
    """1 to 10^15 micro-units."""
    if value <= 0:
        v.add(field, "must be greater than 0 (micro-units; 1 USD = 1,000,000)")
    elif value > MAX_AMOUNT_MICROS:
        v.add(field, f"must be at most {MAX_AMOUNT_MICROS} micro-units")
    return value


def currency(v: Violations, field: str, value: str) -> str:
    """A well-formed ISO 4217 code; empty means USD (check_supported tells whether it is enabled)."""
    return v.matches(field, value or "USD", CURRENCY_CODE)


def check_supported(field: str, code: str, enabled: tuple[str, ...]) -> None:
    """Raises INVALID_ARGUMENT (reason UNSUPPORTED_CURRENCY) for a well-formed but disabled code."""
    if code not in enabled:
        raise InvalidArgument(
            [FieldViolation(field, f"currency {code} is not enabled; enabled: {', '.join(enabled)}")],
            reason=ErrorReason.ERROR_REASON_UNSUPPORTED_CURRENCY,
        )


def _nanoseconds(value: datetime.timedelta) -> int:
    return value // datetime.timedelta(microseconds=1) * 1000


def hold_ttl(v: Violations, field: str, ttl: duration_pb2.Duration, present: bool) -> float:
    """Seconds a hold lasts: unset or zero means 15 minutes; 1 second to 24 hours."""
    if not present or (ttl.seconds == 0 and ttl.nanos == 0):
        return DEFAULT_HOLD_TTL.total_seconds()
    # Integer nanoseconds: ToTimedelta() overflows on huge seconds (a caller's value, not a bug).
    nanos = ttl.seconds * 1_000_000_000 + ttl.nanos
    if not _nanoseconds(MIN_HOLD_TTL) <= nanos <= _nanoseconds(MAX_HOLD_TTL):
        v.add(field, "must be between 1 second and 24 hours")
    return nanos / 1e9
