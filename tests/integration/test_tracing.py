"""Traces and logs of a real two-worker server, exported over OTLP/gRPC to a receiver in this test.

One module-wide run: a server with OTEL_* pointing at the receiver gets calls that carry a W3C
traceparent (a CreateUser, its replay, a Deposit, and a CreateUser made INTERNAL by a trigger
that raises with a secret in its message), then stops (graceful shutdown flushes the spans).
The tests read the exported spans and the server's JSON log lines. Off (no OTEL_*, or
OTEL_TRACES_EXPORTER=none), nothing is exported and the OpenTelemetry SDK is never imported.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import secrets
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from qdata.v1 import ledger_pb2_grpc, user_pb2, user_pb2_grpc
from qdata_server.db import sql
from tests.support.calls import PASSWORD, rid
from tests.support.ledger import deposit_request
from tests.support.processes import ServerProcess, server_env
from tests.support.server import create_database, drop_database

pytestmark = pytest.mark.slow

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
SECRET = f"hunter2-{secrets.token_hex(8)}"
AMOUNT = 987_654_321
# Python's own report of every module the interpreter imports (on stderr, i.e. the server's log).
IMPORT_TIME = {"PYTHONPROFILEIMPORTTIME": "1"}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every export request."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._lock = threading.Lock()
        self.endpoint = ""

    def Export(self, request, context):
        with self._lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[dict[str, Any], trace_pb2.Span]]:
        """(resource attributes, span) for every exported span."""
        found = []
        with self._lock:
            for request in self.requests:
                for resource_spans in request.resource_spans:
                    resource = attributes(resource_spans.resource.attributes)
                    for scope_spans in resource_spans.scope_spans:
                        found.extend((resource, span) for span in scope_spans.spans)
        return found


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    found = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(found, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    found.endpoint = f"http://127.0.0.1:{port}"
    yield found
    server.stop(None)


@pytest.fixture(autouse=True, scope="module")
def no_otel_environment() -> Iterator[None]:
    """The server processes inherit this environment: no OTEL_* from outside the test."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


def attributes(values) -> dict[str, Any]:
    result = {}
    for item in values:
        kind = item.value.WhichOneof("value")
        result[item.key] = getattr(item.value, kind) if kind else None
    return result


def traceparent(trace_id: str, span_id: str) -> tuple[tuple[str, str], ...]:
    return (("traceparent", f"00-{trace_id}-{span_id}-01"), ("tracestate", "caller=qdata-test"))


@dataclasses.dataclass
class Trace:
    """The caller's side of one traced call."""

    trace_id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(16))
    parent_id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(8))

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return traceparent(self.trace_id, self.parent_id)


@dataclasses.dataclass
class Run:
    """What the traced run left: the calls' traces, the values sent, the spans and the log."""

    create: Trace
    replay: Trace
    deposit: Trace
    internal: Trace
    sent: list[str]
    internal_error: grpc.RpcError
    spans: list[tuple[dict[str, Any], trace_pb2.Span]]
    lines: list[dict[str, Any]]
    output: str
    exit_code: int

    def trace(self, call: Trace) -> list[trace_pb2.Span]:
        return [span for _, span in self.spans if span.trace_id.hex() == call.trace_id]

    def server_span(self, call: Trace) -> trace_pb2.Span:
        [span] = [span for span in self.trace(call) if span.kind == SERVER]
        return span

    def rpc_line(self, call: Trace) -> dict[str, Any]:
        [line] = [line for line in self.lines if line.get("message") == "rpc" and line.get("trace_id") == call.trace_id]
        return line


def plant_failing_audit(owner_url: str) -> None:
    """Audit rows now fail with a message that holds a secret and the row's target (a user id)."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(
            f"""
            CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'planted: postgresql://admin:{SECRET}@db/qdata %', NEW.target_id
                USING DETAIL = 'password={SECRET}'; END; $$;
            CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events
                FOR EACH ROW EXECUTE FUNCTION refuse_audit();
            """
        )


@pytest.fixture(scope="module")
def traced(postgres_url, template_url, receiver, tmp_path_factory) -> Iterator[Run]:
    database_url = create_database(postgres_url, "qdata_tracing")
    env = server_env(
        database_url,
        QDATA_WORKERS="2",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.endpoint,
        **IMPORT_TIME,
    )
    server = ServerProcess(env, tmp_path_factory.mktemp("tracing") / "serve.log")
    suffix = uuid.uuid4().hex[:8]
    email, username = f"trace-{suffix}@example.com", f"trace{suffix}"
    email2, username2 = f"leak-{suffix}@example.com", f"leak{suffix}"
    calls = Trace(), Trace(), Trace(), Trace()
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            users = user_pb2_grpc.UserServiceStub(channel)
            request = user_pb2.CreateUserRequest(request_id=rid(), email=email, username=username, password=PASSWORD)
            user = users.CreateUser(request, metadata=calls[0].metadata, timeout=10).user
            assert users.CreateUser(request, metadata=calls[1].metadata, timeout=10).user.id == user.id
            deposit = deposit_request(user.id, AMOUNT)
            ledger_pb2_grpc.LedgerServiceStub(channel).Deposit(deposit, metadata=calls[2].metadata, timeout=10)
            plant_failing_audit(database_url)
            leaking = user_pb2.CreateUserRequest(request_id=rid(), email=email2, username=username2, password=PASSWORD)
            with pytest.raises(grpc.RpcError) as failed:
                users.CreateUser(leaking, metadata=calls[3].metadata, timeout=10)
    finally:
        exit_code = server.stop(signal.SIGTERM)
    sent = [
        email,
        username,
        PASSWORD,
        str(AMOUNT),
        user.id,
        request.request_id,
        deposit.request_id,
        deposit.external_reference,
        email2,
        username2,
        leaking.request_id,
        SECRET,
    ]
    yield Run(*calls, sent, failed.value, receiver.spans(), server.lines(), server.output(), exit_code)
    drop_database(postgres_url, database_url)


def test_a_call_is_a_server_span_in_the_callers_trace(traced):
    assert traced.exit_code == 0, traced.output
    span = traced.server_span(traced.create)
    assert span.parent_span_id.hex() == traced.create.parent_id
    assert span.name == "qdata.v1.UserService/CreateUser"
    assert span.trace_state == "caller=qdata-test"
    assert attributes(span.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": "qdata.v1.UserService",
        "rpc.method": "CreateUser",
        "rpc.grpc.status_code": 0,
    }
    assert span.status.code == trace_pb2.Status.STATUS_CODE_UNSET
    replay = traced.server_span(traced.replay)
    assert attributes(replay.attributes)["qdata.replay"] is True


def test_transactions_and_statements_are_child_spans_named_by_their_sql_blocks(traced):
    # A deposit claims its key inside its one ledger call (ledger_deposit_once).
    for call, blocks in (
        (traced.create, {"claim_request_id", "insert_user"}),
        (traced.deposit, {"ledger_deposit_once", "store_response"}),
    ):
        spans = traced.trace(call)
        server = traced.server_span(call)
        [transaction] = [s for s in spans if s.name == "transaction"]
        assert transaction.parent_span_id == server.span_id
        statements = [s for s in spans if s.parent_span_id == transaction.span_id]
        names = {s.name for s in statements}
        assert names <= set(sql.names()), names
        assert {"begin_transaction", *blocks} <= names, names
        if call is traced.deposit:  # nothing read back: the one call answers
            assert names == {"begin_transaction", *blocks}, names
        assert len(spans) == 2 + len(statements), [s.name for s in spans]
        for statement in statements:
            assert attributes(statement.attributes) == {"db.system": "postgresql", "db.system.name": "postgresql"}
    # A replay reads the stored answer: the claim, and no insert.
    replay = {s.name for s in traced.trace(traced.replay)}
    assert "claim_request_id" in replay and "insert_user" not in replay


def test_spans_hold_no_value_of_any_call_nor_a_database_message(traced):
    assert len(traced.spans) > 10
    exported = b"".join(span.SerializeToString() for _, span in traced.spans)
    for value in traced.sent:
        assert value.encode() not in exported, value
    numbers = {v for _, s in traced.spans for v in attributes(s.attributes).values() if isinstance(v, int)}
    assert AMOUNT not in numbers
    assert b"planted" not in exported and b"INSERT" not in exported and b"SELECT" not in exported


def test_an_internal_error_sets_the_span_status_with_code_and_reason_only(traced):
    span = traced.server_span(traced.internal)
    assert span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert span.status.message == "INTERNAL INTERNAL"
    assert attributes(span.attributes)["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    failed = [s for s in traced.trace(traced.internal) if s.status.code == trace_pb2.Status.STATUS_CODE_ERROR]
    database = [s for s in failed if s.kind == trace_pb2.Span.SPAN_KIND_CLIENT]
    assert database, [s.name for s in failed]
    assert {s.status.message for s in database} == {"sqlstate P0001"}
    assert all(not s.events for _, s in traced.spans)  # no exception event (it would carry the message)


def test_every_worker_that_served_exported_its_spans_as_qdata(traced):
    served = {line["pid"] for line in traced.lines if line.get("message") == "rpc"}
    exported = {resource["process.pid"] for resource, _ in traced.spans}
    assert served and served <= exported
    assert {resource["service.name"] for resource, _ in traced.spans} == {"qdata"}
    # The SDK is there when tracing is on (so the test below that says it is not can fail).
    assert re.search(r"\| +opentelemetry\.sdk\.trace$", traced.output, re.MULTILINE)


def test_log_lines_of_a_traced_call_carry_its_trace_and_span(traced):
    line = traced.rpc_line(traced.create)
    assert line["span_id"] == traced.server_span(traced.create).span_id.hex()
    assert line["method"] == "/qdata.v1.UserService/CreateUser" and line["code"] == "OK"
    assert "replay" not in line
    assert traced.rpc_line(traced.replay)["replay"] is True
    assert "replay" not in traced.rpc_line(traced.deposit)
    # Lines outside any call carry no trace.
    assert not [line for line in traced.lines if line.get("message") == "serving" and "trace_id" in line]


def test_an_internal_logs_its_redacted_stack_and_the_caller_sees_none_of_it(traced):
    error = traced.internal_error
    assert error.code() == grpc.StatusCode.INTERNAL
    details = error.details()
    assert "error id" in details
    for leak in ("Traceback", 'File "', "INSERT", "planted", SECRET, ".py"):
        assert leak not in details
    [line] = [line for line in traced.lines if line.get("message") == "unexpected error"]
    assert line["trace_id"] == traced.internal.trace_id
    assert line["error_id"] in details
    [*_, innermost] = line["stack"]
    assert innermost["type"] == "psycopg.errors.RaiseException"
    assert innermost["sqlstate"] == "P0001"
    frames = [frame for element in line["stack"] for frame in element["frames"]]
    assert {"file", "line", "function", "code"} == set(frames[0])
    assert any(f["file"].endswith("qdata_server/db/transactions.py") and f["function"] == "_run_once" for f in frames)
    assert all(isinstance(f["line"], int) and f["code"] for f in frames)
    # Not the secret, nor the values the message and the calls held, anywhere in the log (the
    # request_ids are in it by design: the per-call line names them).
    logged = {traced.rpc_line(call)["request_id"] for call in (traced.create, traced.deposit, traced.internal)}
    assert len(logged) == 3 and logged <= set(traced.sent)
    for value in {SECRET, "planted", *traced.sent} - logged:
        assert value not in traced.output, value


@pytest.mark.parametrize(
    "otel",
    [{}, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "<receiver>"}],
    ids=["no OTEL_*", "OTEL_TRACES_EXPORTER=none"],
)
def test_tracing_off_exports_nothing_and_imports_no_sdk(database_url, receiver, tmp_path, otel):
    otel = {k: receiver.endpoint if v == "<receiver>" else v for k, v in otel.items()}
    before = len(receiver.requests)
    server = ServerProcess(server_env(database_url, QDATA_WORKERS="2", **otel, **IMPORT_TIME), tmp_path / "s.log")
    try:
        server.wait_serving()
        assert len(server.wait_workers(2)) == 2
        with grpc.insecure_channel(server.address) as channel:
            request = user_pb2.CreateUserRequest(
                request_id=rid(), email="off@example.com", username="off", password=PASSWORD
            )
            user_pb2_grpc.UserServiceStub(channel).CreateUser(request, metadata=Trace().metadata, timeout=10)
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.output()
    assert len(receiver.requests) == before
    imported = re.findall(r"^import time:.*\| +(\S+)$", server.output(), re.MULTILINE)
    assert "qdata_server.interceptor" in imported  # the report covers the server's own imports
    assert not [name for name in imported if name.startswith("opentelemetry.sdk")]
    [line] = [line for line in server.lines() if line.get("message") == "rpc" and "CreateUser" in line["method"]]
    assert "trace_id" not in line and "span_id" not in line


def test_an_exporter_qdata_does_not_ship_refuses_the_start(database_url, tmp_path):
    server = ServerProcess(server_env(database_url, OTEL_TRACES_EXPORTER="zipkin"), tmp_path / "s.log")
    assert server.wait() == 2
    assert "OTEL_TRACES_EXPORTER: zipkin is not available" in server.output()
