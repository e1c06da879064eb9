"""Validation of UsageService inputs: catalog fields, prices, token counts, durations, times."""

from __future__ import annotations

import datetime

from google.protobuf import duration_pb2, timestamp_pb2

from qdata.v1 import usage_pb2
from qdata_server.validation import MODEL_ID, MODEL_PROVIDER, USAGE_TIMES, Violations, is_control

MAX_DISPLAY_NAME_LENGTH = 200
MAX_CONTEXT_WINDOW_TOKENS = 100_000_000
MAX_PRICE_MICROS = 10**12
MAX_TOKENS = 10**9
MAX_ERROR_CODE_LENGTH = 100
MAX_REVIEW_LENGTH = 2000
MAX_DURATION_NANOS = 24 * 3600 * 10**9
MAX_CALL_AGE = datetime.timedelta(days=7)
MAX_CALL_AHEAD = datetime.timedelta(minutes=5)
MIN_WINDOW = datetime.timedelta(minutes=1)
MAX_WINDOW = datetime.timedelta(days=366)
DEFAULT_WINDOW = datetime.timedelta(hours=24)

STATUS_TO_PROTO = {"active": usage_pb2.MODEL_STATUS_ACTIVE, "deprecated": usage_pb2.MODEL_STATUS_DEPRECATED}
STATUS_FROM_PROTO: dict[int, str] = {v: k for k, v in STATUS_TO_PROTO.items()}
OUTCOME_TO_PROTO = {"success": usage_pb2.USAGE_OUTCOME_SUCCESS, "error": usage_pb2.USAGE_OUTCOME_ERROR}
OUTCOME_FROM_PROTO = {v: k for k, v in OUTCOME_TO_PROTO.items()}


def model_id(v: Violations, field: str, value: str) -> str:
    """A catalog model id (required)."""
    return v.matches(field, value, MODEL_ID)


def provider(v: Violations, field: str, value: str, *, required: bool) -> str:
    """A catalog model's provider."""
    return v.matches(field, value, MODEL_PROVIDER, required=required)


def review(v: Violations, field: str, value: str) -> str:
    """Free text: line breaks and tabs are fine, other control characters and NUL are not."""
    v.max_length(field, value, MAX_REVIEW_LENGTH)
    if any(is_control(ch) and ch not in "\n\r\t" for ch in value):
        v.add(field, "must not contain control characters other than line breaks and tabs")
    return value


def bounded(v: Violations, field: str, value: int, maximum: int, unit: str = "") -> int:
    if not 0 <= value <= maximum:
        v.add(field, f"must be between 0 and {maximum:,}{unit}")
    return value


def status_filter(v: Violations, field: str, value: int) -> str | None:
    """A ModelStatus filter: UNSPECIFIED means any."""
    if value == usage_pb2.MODEL_STATUS_UNSPECIFIED:
        return None
    if value not in STATUS_FROM_PROTO:
        v.add(field, "is not a known ModelStatus")
        return None
    return STATUS_FROM_PROTO[value]


def provider_filter(v: Violations, field: str, value: str) -> str | None:
    if not value:
        return None
    provider(v, field, value, required=False)
    return value


def duration_nanos(v: Violations, field: str, value: duration_pb2.Duration, present: bool) -> int | None:
    """A Duration of 0 to 24 hours in nanoseconds; None when unset."""
    if not present:
        return None
    if value.seconds < 0 or not 0 <= value.nanos < 10**9:
        v.add(field, "must be a non-negative duration (seconds >= 0, nanos 0 to 999,999,999)")
        return None
    nanos = value.seconds * 10**9 + value.nanos
    if nanos > MAX_DURATION_NANOS:
        v.add(field, "must be at most 24 hours")
        return None
    return nanos


def timestamp(v: Violations, field: str, value: timestamp_pb2.Timestamp) -> datetime.datetime | None:
    """An aware UTC datetime, or a violation for a Timestamp outside 1970 to 9000 (USAGE_TIMES)."""
    return v.timestamp(field, value, USAGE_TIMES)


def window(
    v: Violations,
    request: usage_pb2.GetModelStatsRequest | usage_pb2.ListTopModelsRequest,
    now: datetime.datetime,
    *,
    prefix: str = "",
) -> tuple[datetime.datetime, datetime.datetime] | None:
    """[start, end) of a GetModelStats / ListTopModels request: window ending now, or start_time to
    end_time (end unset: now), or the last 24 hours; 1 minute to 366 days."""
    has_window = request.HasField("window")
    has_start = request.HasField("start_time")
    has_end = request.HasField("end_time")
    if has_window and (has_start or has_end):
        v.add(f"{prefix}window", "set either window or start_time (with an optional end_time), not both")
        return None
    if has_end and not has_start:
        v.add(f"{prefix}end_time", "is only allowed with start_time")
        return None
    if has_window:
        length = request.window
        if length.seconds < 0 or not 0 <= length.nanos < 10**9 or length.seconds > MAX_WINDOW.total_seconds():
            v.add(f"{prefix}window", "must be between 1 minute and 366 days")
            return None
        span = datetime.timedelta(seconds=length.seconds, microseconds=length.nanos // 1000)
        if not MIN_WINDOW <= span <= MAX_WINDOW:
            v.add(f"{prefix}window", "must be between 1 minute and 366 days")
            return None
        return now - span, now
    if has_start:
        start = timestamp(v, f"{prefix}start_time", request.start_time)
        end = timestamp(v, f"{prefix}end_time", request.end_time) if has_end else now
        if start is None or end is None:
            return None
        return time_range(v, start, end, prefix=prefix)
    return now - DEFAULT_WINDOW, now


def time_range(
    v: Violations, start: datetime.datetime, end: datetime.datetime, *, prefix: str = ""
) -> tuple[datetime.datetime, datetime.datetime] | None:
    if end <= start:
        v.add(f"{prefix}end_time", "must be after start_time (and start_time not in the future when end_time is unset)")
        return None
    if end - start > MAX_WINDOW:
        v.add(f"{prefix}end_time", "must be at most 366 days after start_time")
        return None
    return start, end
