"""OpenTelemetry traces: a server span per RPC, a span per transaction and per SQL statement.

Off unless the standard OTEL_* variables configure an exporter (`exporters`): then each serving
process (every SO_REUSEPORT worker, after the fork) makes its own TracerProvider with a batch span
processor (`start`), flushed by `shutdown` at graceful shutdown. Off, the OpenTelemetry packages
are never imported and every hook is one check of the module-level flag `ON`.

What spans carry, and what never: the server span has the RPC semantic conventions (rpc.system,
rpc.service, rpc.method, rpc.grpc.status_code) and continues the caller's W3C `traceparent` /
`tracestate` metadata; a failed call's span carries its status code and ErrorInfo reason, never a
message. A statement's span is named by its SQL block (db/queries/*.sql) and carries
db.system=postgresql and, when it fails, the SQLSTATE: never the SQL text, its parameters or the
database's message (they can hold personal data, money amounts and secrets). Transactions and
statements are traced only inside a traced call (background jobs are not traced). The
documentation is docs/operations.md#tracing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from qdata_server.startup import ConfigError

if TYPE_CHECKING:
    import contextvars

    import grpc
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("qdata.tracing")

# True once `start` made this process's provider; every hook checks it first.
ON = False
_tracer: Tracer | None = None
_provider: TracerProvider | None = None

EXPORTERS = ("otlp", "console")
_GRPC_PROTOCOL = "grpc"


def _first(env: Mapping[str, str], *names: str) -> str:
    """The first of the variables that is set and not blank (the signal-specific one comes first)."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return ""


def exporters(env: Mapping[str, str]) -> tuple[str, ...]:
    """The span exporters the OTEL_* variables in env configure; () means tracing is off.

    OTEL_SDK_DISABLED=true: off. OTEL_TRACES_EXPORTER (comma-separated) names them: `otlp`
    (OTLP over gRPC), `console` (JSON spans on stdout), `none` (off). Unset, an OTLP endpoint
    (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT) turns `otlp` on, the
    specification's default exporter; with neither, tracing stays off (qdata does not send spans
    to localhost:4317 on its own). Raises ConfigError for an exporter or OTLP protocol qdata does
    not ship.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if raw:
        names = tuple(dict.fromkeys(name.strip() for name in raw.split(",") if name.strip()))
    elif _first(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        names = ("otlp",)
    else:
        return ()
    if "none" in names:
        return ()
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not available (qdata ships otlp, console and none)"
        )
    if "otlp" in names:
        protocol = _first(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol and protocol != _GRPC_PROTOCOL:
            raise ConfigError(
                f"OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL={protocol} is not available: qdata exports OTLP over gRPC "
                "(set it to grpc, or leave it unset)"
            )
    return names


def env_problem(env: Mapping[str, str] | None = None) -> str | None:
    """What is wrong with the OTEL_* tracing variables, or None (checked before the fork)."""
    try:
        exporters(os.environ if env is None else env)
    except ConfigError as exc:
        return str(exc)
    return None


def start(env: Mapping[str, str] | None = None) -> bool:
    """Makes this process's tracer provider when OTEL_* configures an exporter; True if tracing is on.

    Call it in each serving process after the fork (a provider's export thread does not survive
    one). The SDK reads its other variables itself (endpoint, headers, certificates, timeout,
    sampler, OTEL_BSP_* batch settings, resource attributes).
    """
    global ON, _tracer, _provider
    names = exporters(os.environ if env is None else env)
    if not names:
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create({"process.pid": os.getpid()})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        # Neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names the service.
        resource = resource.merge(Resource({SERVICE_NAME: "qdata"}))
    provider = TracerProvider(resource=resource)
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("qdata_server")
    ON = True
    log.info("tracing on", extra={"exporters": list(names), "service_name": resource.attributes.get(SERVICE_NAME)})
    return True


def shutdown() -> None:
    """Exports the spans still queued and stops the provider (graceful shutdown); no-op when off."""
    global ON
    if _provider is None:
        return
    ON = False
    _provider.shutdown()


class _Getter:
    """Reads W3C trace context from gRPC invocation metadata (key, value) pairs."""

    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        values = [value for k, value in carrier if k == key and isinstance(value, str)]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _Getter()


class CallSpan:
    """The server span of one call and the context token that makes it current."""

    def __init__(self, span: Span, token: contextvars.Token[Context]) -> None:
        self.span = span
        self.token = token

    def end(self, code: grpc.StatusCode, reason: str, *, replay: bool, detach: bool) -> None:
        """Records the outcome (status code, reason, replay) and ends the span."""
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        span = self.span
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if replay:
            span.set_attribute("qdata.replay", True)
        if code is not type(code).OK:
            span.set_attribute("error.type", code.name)
            if reason:
                span.set_attribute("qdata.error.reason", reason)
            if code in _server_errors():
                span.set_status(Status(StatusCode.ERROR, f"{code.name} {reason}".strip()))
        span.end()
        if detach:
            context.detach(self.token)


@functools.cache
def _server_errors() -> frozenset[grpc.StatusCode]:
    """The codes whose server span has status ERROR (RPC semantic conventions; client errors such
    as NOT_FOUND leave it unset)."""
    import grpc

    codes = grpc.StatusCode
    return frozenset(
        {
            codes.UNKNOWN,
            codes.DEADLINE_EXCEEDED,
            codes.UNIMPLEMENTED,
            codes.INTERNAL,
            codes.UNAVAILABLE,
            codes.DATA_LOSS,
        }
    )


def start_call(method: str, metadata: Sequence[tuple[str, Any]] | None) -> CallSpan:
    """Starts the server span of a call to method (`/package.Service/Method`), made current.

    Continues the trace in the caller's `traceparent` / `tracestate` metadata (the propagators
    OTEL_PROPAGATORS names; W3C trace context and baggage by default).
    """
    from opentelemetry import context, propagate, trace

    assert _tracer is not None
    parent = propagate.extract(tuple(metadata or ()), getter=_GETTER)  # type: ignore[arg-type]
    service, _, name = method.lstrip("/").partition("/")
    span = _tracer.start_span(
        f"{service}/{name}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )
    token = context.attach(trace.set_span_in_context(span, parent))
    return CallSpan(span, token)


def _in_call() -> bool:
    from opentelemetry import trace

    return trace.get_current_span().get_span_context().is_valid


@contextlib.contextmanager
def database_span(name: str, **attributes: str | int) -> Iterator[None]:
    """A child span named name around a database step (a statement or a transaction).

    Only inside a traced call. A failure records its SQLSTATE and exception type, never its text.
    """
    if not _in_call():
        yield
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode

    assert _tracer is not None
    with _tracer.start_as_current_span(
        name,
        kind=SpanKind.CLIENT,
        attributes={"db.system": "postgresql", "db.system.name": "postgresql", **attributes},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except BaseException as exc:
            sqlstate = getattr(exc, "sqlstate", None)
            span.set_attribute("error.type", type(exc).__qualname__)
            if isinstance(sqlstate, str):
                span.set_attribute("db.response.status_code", sqlstate)
            span.set_status(Status(StatusCode.ERROR, f"sqlstate {sqlstate}" if sqlstate else type(exc).__qualname__))
            raise


def log_ids() -> dict[str, str]:
    """`trace_id` and `span_id` (lower-case hex, W3C form) of the span current here, if any."""
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {"trace_id": f"{span_context.trace_id:032x}", "span_id": f"{span_context.span_id:016x}"}
