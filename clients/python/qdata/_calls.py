"""The machinery behind :mod:`qdata.client`: errors, per-call defaults and the typed call helpers.

The generated service classes (:mod:`qdata._rpcs`, written by ``clients/python/generate.py``) call
these helpers; callers import everything from :mod:`qdata.client`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from qdata.v1.error_reason_pb2 import ErrorReason

MetadataPairs = Sequence[tuple[str, str | bytes]]
"""gRPC metadata as (key, value) pairs; keys in lower case, binary values under keys ending "-bin"."""

# --------------------------------------------------------------------------------------------------
# Errors


class QdataError(Exception):
    """A qdata call failed. Each status code has its own subclass (``NotFound``, ``DeadlineExceeded``, ...).

    Attributes:
        code: The gRPC status code.
        message: The status message (human-readable; do not parse it, use ``reason``).
        reason: ``ErrorInfo.reason`` in UPPER_SNAKE_CASE (e.g. ``USER_NOT_FOUND``), or ``""``
            when the status carries no ErrorInfo (errors raised by gRPC itself, such as a
            client-side DEADLINE_EXCEEDED or a connection failure). The contract's
            :class:`ErrorReason` enum (``qdata/v1/error_reason.proto``) documents every reason;
            ``error_reason`` gives it as that enum's value.
        metadata: ``ErrorInfo.metadata``: extra facts about the error, as strings.
        field_violations: ``{field path: description}`` from a BadRequest detail, e.g.
            ``{"email": "is not a valid email address"}``; empty when there is none.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.field_violations = dict(field_violations or {})

    @property
    def error_reason(self) -> ErrorReason:
        """``reason`` as an :class:`ErrorReason` value (``USER_NOT_FOUND`` is
        ``ERROR_REASON_USER_NOT_FOUND``); ``ERROR_REASON_UNSPECIFIED`` when there is no reason or
        the server sent one this client's contract does not know yet."""
        if not self.reason:
            return ErrorReason.ERROR_REASON_UNSPECIFIED
        try:
            return cast(ErrorReason, ErrorReason.Value(f"ERROR_REASON_{self.reason}"))
        except ValueError:
            return ErrorReason.ERROR_REASON_UNSPECIFIED

    def __str__(self) -> str:
        head = f"{self.code.name} {self.reason}" if self.reason else self.code.name
        return f"{head}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, message={self.message!r})"


class InvalidArgument(QdataError):
    """INVALID_ARGUMENT: the request is malformed; ``field_violations`` says what to fix."""


class NotFound(QdataError):
    """NOT_FOUND: the named resource does not exist (``reason`` names which kind)."""


class AlreadyExists(QdataError):
    """ALREADY_EXISTS: a uniqueness conflict (e.g. EMAIL_TAKEN) or a reused request_id."""


class FailedPrecondition(QdataError):
    """FAILED_PRECONDITION: the system is not in a state that allows the call (e.g. WRONG_PASSWORD)."""


class Unavailable(QdataError):
    """UNAVAILABLE: the server or its database could not be reached; see the module's retry notes.

    ``reason`` is DATABASE_UNAVAILABLE, DATABASE_READ_ONLY, DATABASE_OVERLOADED, DATABASE_FULL,
    SCHEMA_NOT_READY (the database is not migrated yet), SHUTTING_DOWN (the server is stopping;
    another replica takes the retry) or PREPARED_STATEMENTS_UNSUPPORTED (a deployment problem of
    that server: its pooler cannot keep prepared statements, which another replica may not have)
    when the server answered; empty when the server itself could not be reached.
    """


class Aborted(QdataError):
    """ABORTED: a concurrent transaction got in the way; retry like Unavailable.

    ``reason`` is CONTENTION (too much contention on the same rows) or CONCURRENT_CHANGE
    (ChangePassword: the password changed while the request was checked).
    """


class Unimplemented(QdataError):
    """UNIMPLEMENTED: the server does not implement this RPC (yet), or not on this server."""


class Cancelled(QdataError):
    """CANCELLED: the call was cancelled, usually by the caller (``cancel()``, a cancelled task)."""


class Unknown(QdataError):
    """UNKNOWN: an error gRPC could not classify, e.g. an exception in an interceptor."""


class DeadlineExceeded(QdataError):
    """DEADLINE_EXCEEDED: the call's deadline passed before it finished.

    ``reason`` is DEADLINE_EXCEEDED when the server noticed (it refuses database work once the
    caller's deadline has passed) and empty when the client's gRPC did. On a mutation the outcome
    is unknown: resending it under the same request_id finds out safely.
    """


class PermissionDenied(QdataError):
    """PERMISSION_DENIED: the caller's credentials lack the permission the RPC needs.

    ``reason`` is MISSING_PERMISSION; ``metadata`` names the permission.
    """


class Unauthenticated(QdataError):
    """UNAUTHENTICATED: the server could not tell who the caller is.

    ``reason`` is UNAUTHENTICATED (no credentials sent), INVALID_TOKEN (a bearer token the server
    does not know) or AMBIGUOUS_CERTIFICATE (a client certificate that names more than one caller).
    """


class ResourceExhausted(QdataError):
    """RESOURCE_EXHAUSTED: a limit was hit, e.g. a message larger than the channel's limit
    (``max_message_bytes``) or the server's; the reason is empty when gRPC itself refused it."""


class OutOfRange(QdataError):
    """OUT_OF_RANGE: a value outside the range the operation allows."""


class Internal(QdataError):
    """INTERNAL: a bug or broken invariant on the server (reason INTERNAL) or in gRPC; report it."""


class DataLoss(QdataError):
    """DATA_LOSS: unrecoverable data loss or corruption."""


_ERROR_CLASSES: dict[grpc.StatusCode, type[QdataError]] = {
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNKNOWN: Unknown,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}
"""The class of every status code a failed call can carry (OK never fails a call)."""


class _FailedCall(Protocol):
    """What both ``grpc.aio.AioRpcError`` and a failed blocking ``grpc.Call`` provide."""

    def code(self) -> grpc.StatusCode: ...
    def details(self) -> str | None: ...
    def trailing_metadata(self) -> Any: ...


def from_rpc_error(error: _FailedCall) -> QdataError:
    """Converts a failed gRPC call (async or blocking) to the matching :class:`QdataError`.

    Reads the ``google.rpc.Status`` from the trailing metadata; a status that is missing or does
    not match the call's code and message leaves ``reason`` and ``field_violations`` empty rather
    than hiding the original error.
    """
    code = error.code()
    reason = ""
    metadata: dict[str, str] = {}
    violations: dict[str, str] = {}
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a status inconsistent with the call's code or message: ignore it
        status = None
    if status is not None:
        for detail in status.details:
            # Unpack fills the message and returns True only if the detail is of its type.
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(bad):
                violations.update((v.field, v.description) for v in bad.field_violations)
    cls = _ERROR_CLASSES.get(code, QdataError)  # every code has a class; OK never gets here
    return cls(error.details() or "", code=code, reason=reason, metadata=metadata, field_violations=violations)


# --------------------------------------------------------------------------------------------------
# Per-call defaults and the typed call helpers the generated services use

_Request = TypeVar("_Request", bound=Message)
_Response = TypeVar("_Response")
_Out = TypeVar("_Out", covariant=True)


class CallDefaults:
    """What every call gets unless it says otherwise: a timeout and the client's metadata."""

    def __init__(self, timeout: float | None, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.timeout = timeout
        self.metadata = metadata

    def prepare(self, request: Message, timeout: float | None, metadata: MetadataPairs | None) -> dict[str, Any]:
        """Fills an empty request_id in place and returns the timeout and metadata arguments."""
        if "request_id" in request.DESCRIPTOR.fields_by_name:
            if isinstance(request.request_id, str) and not request.request_id:  # type: ignore[attr-defined]
                request.request_id = str(uuid.uuid4())  # type: ignore[attr-defined]
        return {
            "timeout": self.timeout if timeout is None else timeout,
            "metadata": self.metadata + tuple(metadata or ()),
        }

    async def async_unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,  # noqa: ASYNC109 - the gRPC deadline, also sent to the server
        metadata: MetadataPairs | None,
        kwargs: dict[str, Any],
    ) -> _Response:
        """Sends request and returns the response message; raises QdataError on failure."""
        call_kwargs = self.prepare(request, timeout, metadata)
        try:
            return await method(request, **call_kwargs, **kwargs)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc

    def async_stream(
        self,
        method: grpc.aio.UnaryStreamMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
        metadata: MetadataPairs | None,
        kwargs: dict[str, Any],
    ) -> AsyncResponseStream[_Response]:
        """Starts a server-streaming call and returns its responses as an async iterator."""
        call_kwargs = self.prepare(request, timeout, metadata)
        return AsyncResponseStream(method(request, **call_kwargs, **kwargs))

    def sync_unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
        metadata: MetadataPairs | None,
        kwargs: dict[str, Any],
    ) -> _Response:
        """Sends request, blocking, and returns the response message; raises QdataError on failure."""
        call_kwargs = self.prepare(request, timeout, metadata)
        try:
            return method(request, **call_kwargs, **kwargs)
        except grpc.RpcError as exc:
            # grpc's failed calls are both; the stubs declare trailing_metadata differently on each.
            if isinstance(exc, grpc.Call):  # type: ignore[unreachable]
                raise from_rpc_error(exc) from exc
            raise

    def sync_stream(
        self,
        method: grpc.UnaryStreamMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
        metadata: MetadataPairs | None,
        kwargs: dict[str, Any],
    ) -> ResponseStream[_Response]:
        """Starts a blocking server-streaming call and returns its responses as an iterator."""
        call_kwargs = self.prepare(request, timeout, metadata)
        return ResponseStream(cast(_BlockingStreamCall[_Response], method(request, **call_kwargs, **kwargs)))


class AsyncResponseStream(Generic[_Response]):
    """The responses of an async server-streaming call; iterate with ``async for``.

    Breaking out early leaves the call open until its deadline; call :meth:`cancel` to end it.
    """

    def __init__(self, call: grpc.aio.UnaryStreamCall[Any, _Response]) -> None:
        self._call = call

    def __aiter__(self) -> AsyncIterator[_Response]:
        return self

    async def __anext__(self) -> _Response:
        try:
            item = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        if item is grpc.aio.EOF:
            raise StopAsyncIteration
        return cast(_Response, item)

    def cancel(self) -> bool:
        """Cancels the call; returns False if it had already finished."""
        return self._call.cancel()


class _BlockingStreamCall(Protocol[_Out]):
    """A blocking server-streaming call (grpc's _MultiThreadedRendezvous): a Call and an iterator."""

    def __next__(self) -> _Out: ...
    def cancel(self) -> bool: ...


class ResponseStream(Generic[_Response]):
    """The responses of a blocking server-streaming call; iterate with ``for``.

    Breaking out early leaves the call open until its deadline; call :meth:`cancel` to end it.
    """

    def __init__(self, call: _BlockingStreamCall[_Response]) -> None:
        self._call = call

    def __iter__(self) -> Iterator[_Response]:
        return self

    def __next__(self) -> _Response:
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            # grpc's failed calls are both; the stubs declare trailing_metadata differently on each.
            if isinstance(exc, grpc.Call):  # type: ignore[unreachable]
                raise from_rpc_error(exc) from exc
            raise

    def cancel(self) -> bool:
        """Cancels the call; returns False if it had already finished."""
        return self._call.cancel()


class Service:
    """One qdata service: its RPCs as typed methods (timeout, request_id, errors), generated per
    service in :mod:`qdata._rpcs` from the contract.

    ``service.GetUser(request, timeout=..., metadata=..., **grpc_kwargs)`` calls the RPC of that
    name. ``timeout`` is in seconds; None (the default) means the client's default_timeout.
    ``metadata`` is added to the client's. Other keyword arguments (``wait_for_ready``,
    ``compression``, ...) go to gRPC unchanged.
    """

    def __init__(self, defaults: CallDefaults) -> None:
        self._defaults = defaults

    def __repr__(self) -> str:
        return f"<qdata Service {type(self).__name__}>"
