"""The redacted stack an INTERNAL's log line carries (logs.redacted_stack), and the JSON lines."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from qdata_server import logs

SECRET = "hunter2-s3cr3t"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("cur = await conn.execute(query(name), params or {})", "cur = await conn.execute(query(name), params or {})"),
        ('raise RuntimeError(f"bad {value}")', "raise RuntimeError(<redacted>)"),
        ("x = 'it\\'s' + y", "x = <redacted> + y"),
        ('doc = """SELECT a""" + b', "doc = <redacted> + b"),
        ('sql = """SELECT password', "sql = <redacted><redacted>"),
        ("dsn = base  # postgresql://admin:pw@db/qdata", "dsn = base  # <redacted>"),
        ("connect(password=pw, user=u)", "connect(<redacted> user=u)"),
        ("headers = bearer qdt_abc123", "headers = <redacted>"),
        ("key = sk-abcdefghijkl", "key = <redacted>"),
    ],
)
def test_source_lines_lose_their_literals_and_secret_shapes(line, expected):
    assert logs.redact_source(line) == expected


def _fail() -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        raise RuntimeError(f"postgresql://admin:{SECRET}@db/qdata") from exc


def test_the_stack_keeps_frames_and_types_and_no_message():
    try:
        _fail()
    except RuntimeError as exc:
        exc.add_note(SECRET)
        stack = logs.redacted_stack(exc)
    assert [element["type"] for element in stack] == ["RuntimeError", "KeyError"]
    assert [frame["function"] for frame in stack[0]["frames"]] == [
        "test_the_stack_keeps_frames_and_types_and_no_message",
        "_fail",
    ]
    [*_, raising] = stack[0]["frames"]
    assert raising["file"] == __file__
    assert raising["code"] == "raise RuntimeError(<redacted>) from exc"
    assert isinstance(raising["line"], int)
    assert SECRET not in json.dumps(stack) and "missing" not in json.dumps(stack)


def test_a_database_error_keeps_its_sqlstate_not_its_text():
    import psycopg.errors

    error = psycopg.errors.UniqueViolation(f"duplicate key value (email)=({SECRET})")
    [element] = logs.redacted_stack(error)
    assert element == {"type": "psycopg.errors.UniqueViolation", "frames": [], "sqlstate": "23505"}


def test_the_json_line_writes_stack_but_never_the_records_own_traceback():
    try:
        _fail()
    except RuntimeError as exc:
        record = logging.LogRecord("qdata.rpc", logging.ERROR, __file__, 1, "unexpected error", None, sys.exc_info())
        record.stack = logs.redacted_stack(exc)
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["stack"][0]["type"] == "RuntimeError"
    assert SECRET not in json.dumps(line) and "Traceback" not in json.dumps(line)
    assert "trace_id" not in line  # tracing is off in this process
