"""Per-call conversions made cheap keep their exact results: times as Timestamps, the log line."""

from __future__ import annotations

import datetime
import json
import logging
import random

from google.protobuf import timestamp_pb2

from qdata_server import logs
from qdata_server.convert import timestamp

# Around the epoch, leap days, the year 1 and 9999, sub-millisecond edges, and now.
EDGES = [
    datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC),
    datetime.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=datetime.UTC),
    datetime.datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=datetime.UTC),
    datetime.datetime(1, 1, 1, tzinfo=datetime.UTC),
    datetime.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=datetime.UTC),
    datetime.datetime.now(datetime.UTC),
    datetime.datetime(2026, 6, 1, 10, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=-7, minutes=-30))),
    datetime.datetime(2026, 6, 1, 10, 0, 0, 500),  # naive: UTC, as FromDatetime takes it
]


def from_datetime(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def test_a_timestamp_is_what_from_datetime_makes():
    rng = random.Random(13)
    values = EDGES + [
        datetime.datetime.fromtimestamp(rng.uniform(-6e10, 2.5e11), datetime.UTC).replace(
            microsecond=rng.randrange(1_000_000)
        )
        for _ in range(20_000)
    ]
    for value in values:
        assert timestamp(value) == from_datetime(value), value
    assert timestamp(None) is None


def test_the_line_time_is_the_records_time_in_milliseconds():
    rng = random.Random(12)
    cache: list[object] = [None, ""]
    created = [0.0, 0.9999996, 1.9999995, 1_700_000_000.9999999, 1e9 + 0.0005, -0.25]
    created += [rng.uniform(0, 4e9) for _ in range(20_000)]
    created += [1.8e9 + rng.random() * 3 for _ in range(20_000)]  # the cached second in use
    for value in created:
        expected = datetime.datetime.fromtimestamp(value, datetime.UTC).isoformat(timespec="milliseconds")
        assert logs._iso_utc_milliseconds(value, cache) == expected, value


def test_a_call_line_keeps_every_field():
    record = logging.makeLogRecord(
        {
            "name": "qdata.rpc",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "rpc",
            "created": 1_800_000_000.1234,
            "process": 4321,
            "method": "/qdata.v1.LedgerService/GetBalance",
            "code": "OK",
            "duration_ms": 1.25,
            "request_id": "",
            "actor": "anonymous",
            "when": datetime.date(2026, 1, 2),
        }
    )
    assert json.loads(logs.JsonFormatter().format(record)) == {
        "time": "2027-01-15T08:00:00.123+00:00",
        "level": "INFO",
        "logger": "qdata.rpc",
        "pid": 4321,
        "message": "rpc",
        "method": "/qdata.v1.LedgerService/GetBalance",
        "code": "OK",
        "duration_ms": 1.25,
        "request_id": "",
        "actor": "anonymous",
        "when": "2026-01-02",
    }
