"""Input checks shared by every service: collect all violations, then fail once.

    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    v.max_length("title", request.title, 200)
    v.raise_if_any()

A request with several bad fields gets one INVALID_ARGUMENT listing each of them.

The rules several services share live here, each once: free text (length, no control
characters), identifier patterns (model ids, provider names) and timestamp ranges. Where two
services differ, each difference is a named constant that says why (a database CHECK that holds
the same rule, arithmetic that must stay representable); docs/architecture.md says which rules
are checked here and which in the database.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import uuid
from collections.abc import Collection, Iterable

from google.protobuf import timestamp_pb2

from qdata_server.errors import FieldViolation, InvalidArgument


def is_control(ch: str) -> bool:
    """A C0 or C1 control character (NUL included, which PostgreSQL text cannot hold)."""
    return ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0


def has_control_characters(value: str) -> bool:
    return any(is_control(ch) for ch in value)


@dataclasses.dataclass(frozen=True)
class Pattern:
    """An identifier's shape and the sentence a violation states.

    The whole value must match (fullmatch): with re.match, "$" also matches before a trailing
    newline, which PostgreSQL's "~" in the CHECK that holds the same pattern does not accept.
    """

    regex: re.Pattern[str]
    rule: str


# ISO 4217 currency codes, wherever one is given (ledger requests, prices, QDATA_LEDGER_CURRENCIES);
# the CHECKs ledger_accounts_currency_format, models_currency_format and
# model_prices_currency_format hold the same pattern.
CURRENCY_CODE = Pattern(re.compile(r"^[A-Z]{3}$"), "must be an ISO 4217 code of three upper-case letters, e.g. USD")
# Model ids in the catalog; the models table's CHECK models_id_format holds the same pattern.
MODEL_ID = Pattern(
    re.compile(r"^[A-Za-z0-9._:/-]{1,200}$"),
    "must be 1 to 200 characters of a-z, A-Z, 0-9, '.', '_', '-', ':' and '/'",
)
# The longest model id anywhere (a chat's or a preference's model_id is free text of this length).
MODEL_ID_MAX_LENGTH = 200
# Providers come in two shapes, each held by its table's CHECK as well: a catalog model's provider
# (models_provider_format, 0004_usage.sql) has no '.', an API key's provider
# (user_api_keys_provider_valid, 0005_api_keys.sql) may have one. Unifying them is a schema change.
MODEL_PROVIDER = Pattern(re.compile(r"^[a-z0-9_-]{1,64}$"), "must be 1 to 64 characters of a-z, 0-9, '_' and '-'")
API_KEY_PROVIDER = Pattern(re.compile(r"^[a-z0-9_.-]{1,64}$"), "must be 1 to 64 characters of a-z, 0-9, '_', '.', '-'")


@dataclasses.dataclass(frozen=True)
class TimeSpan:
    """The Timestamps a field accepts: seconds since the epoch from min to max, nanos 0 to 10^9 - 1."""

    min_seconds: int
    max_seconds: int
    rule: str


# Everything a Timestamp can hold (0001-01-01 to 9999-12-31): the ledger's ListTransactions filters.
ANY_TIMESTAMP = TimeSpan(
    -62_135_596_800, 253_402_300_799, "must be a valid Timestamp (years 1 to 9999, nanos 0 to 999,999,999)"
)
# The epoch to the end of year 9999: ListAuditEvents' filters (no event predates the epoch; the
# narrower lower bound is kept because callers see it, not because anything depends on it).
SINCE_EPOCH = TimeSpan(0, 253_402_300_799, "must be a timestamp from 1970-01-01 to 9999-12-31 (nanos 0 to 999,999,999)")
# The epoch to 9000-01-01: every UsageService time, so that window arithmetic (the previous window
# of ListTopModels, days rounded up) stays representable as a datetime.
USAGE_TIMES = TimeSpan(0, 221_845_392_000, "must be a timestamp from 1970 to 9000 (nanos 0 to 999,999,999)")


class Violations:
    """Accumulates field violations for one request."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)

    def uuid(self, field: str, value: str, *, required: bool = True) -> uuid.UUID | None:
        """Parses a canonical UUID; records a violation and returns None otherwise."""
        if not value:
            if required:
                self.add(field, "is required")
            return None
        if len(value) != 36:
            self.add(field, "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000")
            return None
        try:
            return uuid.UUID(value)
        except ValueError:
            self.add(field, "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000")
            return None

    def max_length(self, field: str, value: str, limit: int) -> None:
        if len(value) > limit:
            self.add(field, f"must be at most {limit} characters (got {len(value)})")

    def printable(self, field: str, value: str) -> None:
        """Rejects control characters (including NUL, which PostgreSQL text cannot hold)."""
        if has_control_characters(value):
            self.add(field, "must not contain control characters")

    def text(self, field: str, value: str, limit: int) -> str:
        """Free text of at most limit characters without control characters; returns value."""
        self.max_length(field, value, limit)
        self.printable(field, value)
        return value

    def matches(self, field: str, value: str, pattern: Pattern, *, required: bool = True) -> str:
        """An identifier of pattern's shape (empty: a violation if required); returns value."""
        if not value:
            if required:
                self.add(field, "is required")
        elif not pattern.regex.fullmatch(value):
            self.add(field, pattern.rule)
        return value

    def timestamp(self, field: str, value: timestamp_pb2.Timestamp, span: TimeSpan) -> datetime.datetime | None:
        """An aware UTC datetime, or None and a violation for a Timestamp outside span."""
        if not span.min_seconds <= value.seconds <= span.max_seconds or not 0 <= value.nanos < 10**9:
            self.add(field, span.rule)
            return None
        return value.ToDatetime(datetime.UTC)


def require_uuid(field: str, value: str) -> uuid.UUID:
    """Parses one required UUID field or raises INVALID_ARGUMENT."""
    v = Violations()
    parsed = v.uuid(field, value)
    v.raise_if_any()
    assert parsed is not None
    return parsed


def mask_paths(field: str, paths: list[str], allowed: set[str], *, prefixes: tuple[str, ...] = ()) -> list[str]:
    """Checks a field mask against its whitelist; empty, unknown or repeated paths are invalid."""
    v = Violations()
    if not paths:
        v.add(field, f"must name at least one of: {', '.join(sorted(allowed))}")
    for path in paths:
        if path not in allowed and not path.startswith(prefixes):
            v.add(field, f"unknown or immutable path {path[:100]!r}; allowed: {', '.join(sorted(allowed))}")
    if len(set(paths)) != len(paths):
        v.add(field, "names a path twice")
    v.raise_if_any()
    return paths


def mask_flags(paths: Collection[str], allowed: Iterable[str]) -> dict[str, bool]:
    """The set_<path> parameters of an update query: which of the allowed columns the mask changes."""
    return {f"set_{p}": p in paths for p in allowed}
