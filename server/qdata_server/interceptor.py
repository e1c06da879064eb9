"""The server interceptor every RPC passes through.

It authenticates and authorizes the caller first (auth.py: bearer token or mapped mTLS client
certificate, permission per RPC; a refusal goes through the same error mapping and log line as
any other failure), binds the per-call context (method, caller, deadline, request_id), maps
every outcome to a status in one place (domain errors to rich statuses, NotImplementedError to
UNIMPLEMENTED, request bytes that do not parse to INVALID_ARGUMENT MALFORMED_REQUEST, any other
exception to a generic INTERNAL carrying an error id, whose log line has the redacted stack, see
logs.redacted_stack), and writes one structured log line per RPC: method, status code, duration,
request_id and `replay` on an idempotent replay, never request contents. With tracing on
(tracing.py) each call is a server span continuing the caller's trace, current while the handler
runs, so the call's log lines carry its trace_id.

It also keeps the calls in flight (`InFlight`): once shutdown begins, new calls are refused with
UNAVAILABLE (reason SHUTTING_DOWN, retryable) while running ones drain, and the ones still running
when the grace period ends are cancelled (app.py). A streaming call whose reader goes away is
closed by its generator's finalizer, possibly in another task's context, so the stream wrapper
resets its context variable only where it set it, and always writes its log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import inspect
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import callctx, logs, tracing
from qdata_server.auth import Authenticator, Principal
from qdata_server.callctx import ServicerContext
from qdata_server.errors import Internal, QdataError, Unavailable, Unimplemented, malformed, to_grpc_status
from qdata_server.metrics import MethodMetrics, ServerMetrics

log = logging.getLogger("qdata.rpc")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

# Services whose calls are not logged per call (probes would drown the log).
_QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclasses.dataclass(frozen=True)
class _Undecodable:
    """Stands for a request whose bytes did not parse; the handler answers INVALID_ARGUMENT."""

    message_type: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wraps a request deserializer so undecodable bytes reach the handler as _Undecodable.

    grpc.aio parses the request before any handler or interceptor code runs, and answers a parse
    failure itself with UNKNOWN, naming the exception class and logging it as a servicer error.
    """
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    message_type = getattr(getattr(message_class, "DESCRIPTOR", None), "full_name", "request message")

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError:
            return _Undecodable(message_type)

    return deserialize


def _refuse_undecodable(method: str, request: Any) -> None:
    """Raises INVALID_ARGUMENT MALFORMED_REQUEST for undecodable bytes (a client error: WARNING)."""
    if isinstance(request, _Undecodable):
        log.warning("undecodable request", extra={"method": method, "message_type": request.message_type})
        raise malformed(request.message_type)


def _context_for(method: str, request: Any, context: ServicerContext, actor: str) -> callctx.CallContext:
    remaining = context.time_remaining()
    deadline = time.monotonic() + remaining if remaining is not None else None
    request_id = getattr(request, "request_id", "")
    return callctx.CallContext(
        method=method,
        actor=actor,
        deadline=deadline,
        request_id=request_id if isinstance(request_id, str) else "",
    )


def _as_domain_error(exc: BaseException, method: str) -> QdataError:
    if isinstance(exc, QdataError):
        return exc
    if isinstance(exc, NotImplementedError):
        return Unimplemented(f"{method.lstrip('/')} is not implemented yet")
    error_id = uuid.uuid4().hex[:12]
    # Type, SQLSTATE, error id and the frames: exception text may carry SQL, values or secrets.
    log.error(
        "unexpected error",
        extra={
            "method": method,
            "error_type": type(exc).__name__,
            "sqlstate": getattr(exc, "sqlstate", None),
            "error_id": error_id,
            "stack": logs.redacted_stack(exc),
        },
    )
    return Internal(f"internal error (error id {error_id}); the server log has the details")


class _Outcome:
    """Collects what the log line reports about one call."""

    def __init__(
        self,
        method: str,
        ctx: callctx.CallContext,
        metrics: MethodMetrics | None = None,
        span: tracing.CallSpan | None = None,
    ):
        self.method = method
        self.ctx = ctx
        self.code = grpc.StatusCode.OK
        self.reason = ""
        self.metrics = metrics
        self.span = span
        self.started = time.perf_counter()

    def failed(self, error: QdataError) -> None:
        self.code = error.code
        self.reason = error.reason

    def log(self, *, detach: bool = True) -> None:
        """Writes the call's log line, records its metrics and ends its span (when they are on).

        detach is False where the span's context cannot be detached (a stream finalized in
        another task's context, see _wrap_stream).
        """
        seconds = time.perf_counter() - self.started
        if self.metrics is not None:
            self.metrics.handled(self.code.name, seconds, self.ctx.actor, self.reason, replay=self.ctx.replay)
        try:
            self._write(seconds)
        finally:
            if self.span is not None:
                self.span.end(self.code, self.reason, replay=self.ctx.replay, detach=detach)

    def _write(self, seconds: float) -> None:
        if self.method.startswith(_QUIET_PREFIXES) or not log.isEnabledFor(logging.INFO):
            return
        fields = {
            "method": self.method,
            "code": self.code.name,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": self.ctx.request_id,
            "actor": self.ctx.actor,
        }
        if self.reason:
            fields["reason"] = self.reason
        if self.ctx.replay:
            fields["replay"] = True
        log.info("rpc", extra=fields)


# A call's invocation metadata: (key, value) pairs.
_Metadata = Sequence[tuple[str, str | bytes]]
# The caller, or the error that refuses it (decided before the handler body runs).
_Caller = Principal | QdataError
# Decides the caller of one call from its ServicerContext (None: no context, metadata only).
_Decide = Callable[[ServicerContext | None], _Caller]


def _actor(caller: _Caller) -> str:
    if isinstance(caller, Principal):
        return caller.service
    # A refused caller with a valid token is named (PermissionDenied carries its service).
    return caller.metadata.get("service", "unauthenticated")


class InFlight:
    """The calls running in one server, and whether it still admits new ones."""

    def __init__(self) -> None:
        self.draining = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def admit(self, method: str) -> QdataError | None:
        """Registers the running call; during shutdown refuses it instead (the error to raise).

        Health and reflection are neither refused nor waited for: health answers NOT_SERVING
        during shutdown, and a health Watch never ends on its own.
        """
        if method.startswith(_QUIET_PREFIXES):
            return None
        if self.draining:
            return Unavailable(
                "the server is shutting down; retry the call", reason=ErrorReason.ERROR_REASON_SHUTTING_DOWN
            )
        task = asyncio.current_task()
        if task is not None and task not in self._tasks:
            self._tasks.add(task)
            self._idle.clear()
            # The call's task ends however the call ends (even a stream abandoned mid-way).
            task.add_done_callback(self._forget)
        return None

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    def refuse_new(self) -> None:
        """From now on, new calls get UNAVAILABLE (SHUTTING_DOWN)."""
        self.draining = True

    async def drain(self, wait_seconds: float) -> bool:
        """Refuses new calls; waits up to wait_seconds for the running ones (True if none is left)."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), wait_seconds)
        return not self._tasks

    async def cancel(self, wait_seconds: float) -> int:
        """Cancels the calls still running, waits up to wait_seconds for them to end; returns how many.

        Cancelling a call's task makes psycopg cancel the statement it waits on in the server, and
        the transaction helper roll back and return the connection.
        """
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            # gRPC has usually cancelled the task already (the call ended with the grace period);
            # a second cancel would interrupt psycopg while it cancels the statement in the server,
            # and psycopg would then just drop the socket, leaving the backend waiting on its lock.
            if not task.cancelling():
                task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=wait_seconds)
        return len(tasks)


def _begin(
    method: str,
    request: Any,
    context: ServicerContext,
    decide: _Decide,
    in_flight: InFlight,
    metrics: MethodMetrics | None,
    metadata: _Metadata,
) -> tuple[_Caller, _Outcome, contextvars.Token[callctx.CallContext | None]]:
    """Starts one call: admits it (or keeps the refusal), decides its caller, binds its context.

    Returns the caller (or the error that refuses it, raised by _refuse inside the handler's
    error mapping), the call's outcome and the token that unbinds its context.
    """
    if metrics is not None:
        metrics.started.inc()
        metrics.received.inc()  # the request (unary and server-streaming calls receive one)
    # First, so that whatever the call logs (its refusal too) is in its trace. Health and
    # reflection are not traced, as they are not logged per call (probes would drown the traces).
    span = tracing.start_call(method, metadata) if tracing.ON and not method.startswith(_QUIET_PREFIXES) else None
    refused = in_flight.admit(method)
    caller = refused or decide(context)
    ctx = _context_for(method, request, context, _actor(caller))
    token = callctx.bind(ctx)
    return caller, _Outcome(method, ctx, metrics, span), token


def _refuse(caller: _Caller, method: str, request: Any) -> None:
    """Raises the error that refuses the caller, or MALFORMED_REQUEST for undecodable bytes."""
    if isinstance(caller, QdataError):
        raise caller
    _refuse_undecodable(method, request)


def _propagates(exc: BaseException, outcome: _Outcome, *, stream: bool = False) -> bool:
    """True for what a handler re-raises as it is instead of mapping it to a status.

    An abort already sent, an interpreter exit, or the call's cancellation (logged as CANCELLED;
    for a stream also GeneratorExit: gRPC stopped reading it because the call was cancelled).
    """
    if isinstance(exc, (aio.AbortError, KeyboardInterrupt, SystemExit)):
        return True
    if (stream and isinstance(exc, GeneratorExit)) or _is_cancellation(exc):
        outcome.code = grpc.StatusCode.CANCELLED
        return True
    return False


async def _abort(context: ServicerContext, outcome: _Outcome, exc: BaseException) -> None:
    """Ends the call with exc as its status: a domain error as it is, anything else mapped."""
    error = _as_domain_error(exc, outcome.method)
    outcome.failed(error)
    await context.abort_with_status(to_grpc_status(error))


def _wrap_unary(
    method: str,
    decide: _Decide,
    behavior: Callable[..., Any],
    in_flight: InFlight,
    metrics: MethodMetrics | None = None,
    metadata: _Metadata = (),
) -> Callable[..., Awaitable[Any]]:
    # behavior is a coroutine function, or (context.write, an unimplemented base method) a plain one.
    async def handler(request: Any, context: ServicerContext) -> Any:
        caller, outcome, token = _begin(method, request, context, decide, in_flight, metrics, metadata)
        try:
            _refuse(caller, method, request)
            result = behavior(request, context)
            response = await result if inspect.isawaitable(result) else result
            if metrics is not None and response is not None:
                metrics.sent.inc()
            return response
        except BaseException as exc:
            if _propagates(exc, outcome):
                raise
            await _abort(context, outcome, exc)
        finally:
            callctx.unbind(token)
            outcome.log()

    return handler


def _wrap_stream(
    method: str,
    decide: _Decide,
    behavior: Callable[..., AsyncGenerator[Any, None]],
    in_flight: InFlight,
    metrics: MethodMetrics | None = None,
    metadata: _Metadata = (),
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
        caller, outcome, token = _begin(method, request, context, decide, in_flight, metrics, metadata)
        call_task = asyncio.current_task()
        try:
            _refuse(caller, method, request)
            # aclosing: when this generator is closed (the call was cancelled while a message was
            # on its way), the service's generator is closed with it, here, not by the collector.
            async with contextlib.aclosing(behavior(request, context)) as items:
                async for item in items:
                    yield item
                    if metrics is not None:
                        metrics.sent.inc()
        except BaseException as exc:
            if _propagates(exc, outcome, stream=True):
                raise
            await _abort(context, outcome, exc)
        finally:
            # A generator abandoned mid-stream (gRPC stopped reading it) is finalized later, in a
            # task of its own with a copied Context where the token cannot be reset. The token
            # belongs to the call's task, whose Context ends with that task.
            own_task = asyncio.current_task() is call_task
            outcome.log(detach=own_task)
            if own_task:
                callctx.unbind(token)

    return handler


def _replace(
    handler: grpc.RpcMethodHandler[_Request, _Response], **fields: Any
) -> grpc.RpcMethodHandler[_Request, _Response]:
    """handler with some of its fields replaced.

    grpc's handlers are namedtuples (grpc._utilities.RpcMethodHandler); the stubs declare only
    the abstract class.
    """
    replaced: grpc.RpcMethodHandler[_Request, _Response] = handler._replace(**fields)  # type: ignore[attr-defined]
    return replaced


def _bound(metrics: ServerMetrics | None, method: str, grpc_type: str) -> MethodMetrics | None:
    """The method's metric children, or None when metrics are off."""
    return metrics.method(method, grpc_type) if metrics is not None else None


def _is_cancellation(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError)


class ServiceInterceptor(aio.ServerInterceptor):
    """Wraps unary-unary and unary-stream handlers with auth, context, error mapping and logging."""

    def __init__(self, authenticator: Authenticator, metrics: ServerMetrics | None = None) -> None:
        self.authenticator = authenticator
        self.in_flight = InFlight()
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata

        def decide(context: ServicerContext | None) -> _Caller:
            # The auth context (the verified client certificate under mTLS) exists only on the
            # call's ServicerContext, so the caller is decided when the handler runs.
            try:
                peer = context.auth_context() if context is not None else None
                return self.authenticator.authorize(method, metadata, peer)
            except QdataError as exc:
                return exc

        metrics = self.metrics
        call_metadata: _Metadata = metadata or ()
        if handler.unary_unary is not None:
            return _replace(
                handler,
                request_deserializer=_tolerant(handler.request_deserializer),
                unary_unary=_wrap_unary(
                    method, decide, handler.unary_unary, self.in_flight, _bound(metrics, method, "UNARY"), call_metadata
                ),
            )
        if handler.unary_stream is not None:
            behavior = handler.unary_stream
            deserializer = _tolerant(handler.request_deserializer)
            if inspect.isasyncgenfunction(behavior):
                return _replace(
                    handler,
                    request_deserializer=deserializer,
                    unary_stream=_wrap_stream(
                        method,
                        decide,
                        behavior,
                        self.in_flight,
                        _bound(metrics, method, "SERVER_STREAM"),
                        call_metadata,
                    ),
                )
            # Handlers that write with context.write (health's Watch) or that raise at once
            # (an unimplemented base method) are wrapped like unary ones.
            return _replace(
                handler,
                request_deserializer=deserializer,
                unary_stream=_wrap_unary(
                    method, decide, behavior, self.in_flight, _bound(metrics, method, "SERVER_STREAM"), call_metadata
                ),
            )
        # Client-streaming handlers (only reflection's, exempt) are decided from metadata alone:
        # a certificate-only caller of such a method would be refused (fail closed).
        caller = decide(None)
        if isinstance(caller, QdataError):
            # Client-streaming handlers (only reflection's, which is exempt) are not wrapped, but a
            # refused caller is refused whatever the handler's shape.
            async def refuse(_requests: Any, context: ServicerContext) -> None:
                await context.abort_with_status(to_grpc_status(caller))

            if handler.stream_unary is not None:
                return _replace(handler, stream_unary=refuse)
            return _replace(handler, stream_stream=refuse)
        return handler
