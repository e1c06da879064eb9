"""A thin, typed client for qdata over the generated ``qdata.v1`` stubs.

Two clients share one design: :class:`AsyncQdataClient` (``grpc.aio``, for asyncio services) and
:class:`QdataClient` (blocking ``grpc``, for threads). Each owns one channel and exposes the four
services as ``.users``, ``.ledger``, ``.chat`` and ``.usage``. These are the generated stubs,
wrapped by one small proxy: you call the RPCs by their proto names with the generated request
messages and get the generated response messages back. Nothing about the messages is
re-implemented here::

    async with AsyncQdataClient("127.0.0.1:50051") as qdata:
        reply = await qdata.users.GetUser(user_pb2.GetUserRequest(email="ada@example.com"))

    with QdataClient("127.0.0.1:50051") as qdata:
        reply = qdata.users.GetUser(user_pb2.GetUserRequest(email="ada@example.com"))

Every call made through the proxy

* gets a deadline: ``default_timeout`` seconds unless the call passes ``timeout=``. A call never
  waits forever by accident; pass a longer timeout for long streams such as ExportSession.
* gets a ``request_id`` when its request message has that field and it is empty: a fresh UUID4,
  written into the request object you passed, so you can log it and so that sending the same
  object again replays the same id. Nested ids (the records of RecordUsageBatch) are the caller's.
* sends ``authorization: Bearer <token>`` when the client was given a token, plus any metadata
  given to the client or to the call.
* raises :class:`QdataError` (a subclass for the common codes) instead of ``grpc.RpcError``,
  carrying the status code, the ErrorInfo reason and metadata, and the BadRequest field
  violations. The original gRPC error stays attached as ``__cause__``.

Server-streaming RPCs (ChatService.ExportSession) return an iterator (``async for`` on the async
client, ``for`` on the blocking one); errors that end the stream are converted the same way.

Retries
-------
The client never retries on its own: whether a retry is safe depends on the call, and a hidden
retry loop multiplies load exactly when the server is struggling. The cases a caller may retry
are :class:`Unavailable` (the server or its database could not be reached, the database is
read-only or short of resources, or the server is shutting down: reason ``SHUTTING_DOWN``, so
another replica will take the retry; ``reason`` says which) and :class:`Aborted` (reason
CONTENTION: concurrent transactions kept colliding on the same rows, or CONCURRENT_CHANGE), on an
idempotent call:

* a read (Get*, List*, Search*, ExportSession, VerifyLedger; not Authenticate, whose every
  attempt with a wrong password counts toward the lockout), or
* a mutation that carries a ``request_id``, sent again with the *same* request_id and the same
  parameters. qdata stores the outcome of every accepted request_id and answers a replay with the
  first response without a second effect, and a request that was rejected or never arrived leaves
  no trace, so replaying is safe by design whether or not the first attempt took effect. Resending
  the same request object does exactly this, since the generated id was written into it.
  A new request_id makes it a new operation (a second charge, a second user). A request that
  moves money (every ledger write, a billed RecordUsage) is remembered forever; any other (users,
  chat, catalog, ratings, unbilled usage) for the server's idempotency retention, 7 days unless
  the operator sets another, after which a replay is a new request (see each service's proto
  comment).

Retry with a bounded number of attempts and jittered backoff. Other codes describe the request,
not the transport, and are not worth retrying as they are. After DEADLINE_EXCEEDED on a mutation
the outcome is unknown; resending it under the same request_id (with a longer timeout) finds out
safely, but that is the caller's decision, not a loop.

Blocking client and asyncio: :class:`QdataClient` blocks its thread for the whole call. Never use
it on an event loop's thread; use :class:`AsyncQdataClient` there (or ``asyncio.to_thread``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol, Self, cast

import grpc
import grpc.aio
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from qdata.v1 import chat_pb2_grpc, ledger_pb2_grpc, usage_pb2_grpc, user_pb2_grpc
from qdata.v1.error_reason_pb2 import ErrorReason

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncQdataClient",
    "AsyncResponseStream",
    "ErrorReason",
    "FailedPrecondition",
    "InvalidArgument",
    "MetadataPairs",
    "NotFound",
    "QdataClient",
    "QdataError",
    "ResponseStream",
    "Service",
    "Unavailable",
    "Unimplemented",
    "from_rpc_error",
]

MetadataPairs = Sequence[tuple[str, str | bytes]]
"""gRPC metadata as (key, value) pairs; keys in lower case, binary values under keys ending "-bin"."""

# --------------------------------------------------------------------------------------------------
# Errors


class QdataError(Exception):
    """A qdata call failed. Subclasses exist for the codes callers commonly handle.

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
    """UNIMPLEMENTED: the server does not implement this RPC (yet)."""


_ERROR_CLASSES: dict[grpc.StatusCode, type[QdataError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


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
    cls = _ERROR_CLASSES.get(code, QdataError)
    return cls(error.details() or "", code=code, reason=reason, metadata=metadata, field_violations=violations)


# --------------------------------------------------------------------------------------------------
# Per-call defaults and the generic service proxy


class _CallDefaults:
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


class _AsyncUnary:
    """An async unary-unary RPC: ``await method(request, timeout=..., metadata=...)``."""

    def __init__(self, method: grpc.aio.UnaryUnaryMultiCallable[Any, Any], defaults: _CallDefaults) -> None:
        self._method = method
        self._defaults = defaults

    async def __call__(
        self,
        request: Message,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, also sent to the server
        metadata: MetadataPairs | None = None,
        **kwargs: Any,
    ) -> Any:
        """Sends request and returns the response message; raises QdataError on failure."""
        call_kwargs = self._defaults.prepare(request, timeout, metadata)
        try:
            return await self._method(request, **call_kwargs, **kwargs)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc


class AsyncResponseStream:
    """The responses of an async server-streaming call; iterate with ``async for``.

    Breaking out early leaves the call open until its deadline; call :meth:`cancel` to end it.
    """

    def __init__(self, call: grpc.aio.UnaryStreamCall[Any, Any]) -> None:
        self._call = call

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        if item is grpc.aio.EOF:
            raise StopAsyncIteration
        return item

    def cancel(self) -> bool:
        """Cancels the call; returns False if it had already finished."""
        return self._call.cancel()


class _AsyncServerStream:
    """An async unary-stream RPC: ``async for response in method(request, ...)``."""

    def __init__(self, method: grpc.aio.UnaryStreamMultiCallable[Any, Any], defaults: _CallDefaults) -> None:
        self._method = method
        self._defaults = defaults

    def __call__(
        self, request: Message, *, timeout: float | None = None, metadata: MetadataPairs | None = None, **kwargs: Any
    ) -> AsyncResponseStream:
        """Starts the call and returns its responses as an async iterator."""
        call_kwargs = self._defaults.prepare(request, timeout, metadata)
        return AsyncResponseStream(self._method(request, **call_kwargs, **kwargs))


class _SyncUnary:
    """A blocking unary-unary RPC: ``method(request, timeout=..., metadata=...)``."""

    def __init__(self, method: grpc.UnaryUnaryMultiCallable[Any, Any], defaults: _CallDefaults) -> None:
        self._method = method
        self._defaults = defaults

    def __call__(
        self, request: Message, *, timeout: float | None = None, metadata: MetadataPairs | None = None, **kwargs: Any
    ) -> Any:
        """Sends request and returns the response message; raises QdataError on failure."""
        call_kwargs = self._defaults.prepare(request, timeout, metadata)
        try:
            return self._method(request, **call_kwargs, **kwargs)
        except grpc.RpcError as exc:
            # grpc's failed calls are both; the stubs declare trailing_metadata differently on each.
            if isinstance(exc, grpc.Call):  # type: ignore[unreachable]
                raise from_rpc_error(exc) from exc
            raise


class _BlockingStreamCall(Protocol):
    """A blocking server-streaming call (grpc's _MultiThreadedRendezvous): a Call and an iterator."""

    def __next__(self) -> Any: ...
    def cancel(self) -> bool: ...


class ResponseStream:
    """The responses of a blocking server-streaming call; iterate with ``for``.

    Breaking out early leaves the call open until its deadline; call :meth:`cancel` to end it.
    """

    def __init__(self, call: _BlockingStreamCall) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
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


class _SyncServerStream:
    """A blocking unary-stream RPC: ``for response in method(request, ...)``."""

    def __init__(self, method: grpc.UnaryStreamMultiCallable[Any, Any], defaults: _CallDefaults) -> None:
        self._method = method
        self._defaults = defaults

    def __call__(
        self, request: Message, *, timeout: float | None = None, metadata: MetadataPairs | None = None, **kwargs: Any
    ) -> ResponseStream:
        """Starts the call and returns its responses as an iterator."""
        call_kwargs = self._defaults.prepare(request, timeout, metadata)
        return ResponseStream(self._method(request, **call_kwargs, **kwargs))


def _wrap(method: object, defaults: _CallDefaults) -> Callable[..., Any]:
    # The aio classes do not derive from the blocking ones, so the order of the checks is free.
    if isinstance(method, grpc.aio.UnaryUnaryMultiCallable):
        return _AsyncUnary(method, defaults)
    if isinstance(method, grpc.aio.UnaryStreamMultiCallable):
        return _AsyncServerStream(method, defaults)
    if isinstance(method, grpc.UnaryUnaryMultiCallable):
        return _SyncUnary(method, defaults)
    if isinstance(method, grpc.UnaryStreamMultiCallable):
        return _SyncServerStream(method, defaults)
    raise TypeError(f"unsupported RPC shape: {type(method).__name__} (qdata.v1 has only unary requests)")


class Service:
    """One qdata service: the generated stub with every RPC wrapped (timeout, request_id, errors).

    ``service.GetUser(request, timeout=..., metadata=..., **grpc_kwargs)`` calls the stub's RPC of
    that name. ``timeout`` is in seconds; None (the default) means the client's default_timeout.
    ``metadata`` is added to the client's. Other keyword arguments (``wait_for_ready``,
    ``compression``, ...) go to gRPC unchanged.
    """

    def __init__(self, stub: object, defaults: _CallDefaults) -> None:
        self._stub = stub
        self._defaults = defaults

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            method = getattr(self._stub, name)
        except AttributeError:
            raise AttributeError(f"{type(self._stub).__name__} has no RPC {name!r}") from None
        wrapped = _wrap(method, self._defaults)
        setattr(self, name, wrapped)  # cache: later lookups skip __getattr__
        return wrapped

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *(n for n in vars(self._stub) if not n.startswith("_"))})

    def __repr__(self) -> str:
        return f"<qdata Service {type(self._stub).__name__}>"


# --------------------------------------------------------------------------------------------------
# Clients


def _channel_options(max_message_bytes: int | None, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    base: list[tuple[str, Any]] = []
    if max_message_bytes is not None:
        base += [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
    return base + list(options)  # explicit options come last, so they win


def _client_metadata(token: str | None, metadata: MetadataPairs) -> tuple[tuple[str, str | bytes], ...]:
    pairs: list[tuple[str, str | bytes]] = [("authorization", f"Bearer {token}")] if token else []
    return (*pairs, *metadata)


class _ClientBase:
    """The parts both clients share: the channel's settings and the four wrapped services."""

    users: Service
    """UserService: accounts, login, preferences, provider API keys, audit events."""
    ledger: Service
    """LedgerService: balances, deposits, charges, refunds, transfers, holds."""
    chat: Service
    """ChatService: sessions and messages; ExportSession streams."""
    usage: Service
    """UsageService: the model catalog and usage records."""

    def _bind(self, channel: Any, default_timeout: float | None, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        defaults = _CallDefaults(default_timeout, metadata)
        self.users = Service(user_pb2_grpc.UserServiceStub(channel), defaults)
        self.ledger = Service(ledger_pb2_grpc.LedgerServiceStub(channel), defaults)
        self.chat = Service(chat_pb2_grpc.ChatServiceStub(channel), defaults)
        self.usage = Service(usage_pb2_grpc.UsageServiceStub(channel), defaults)


class AsyncQdataClient(_ClientBase):
    """qdata over one ``grpc.aio`` channel. Create and use it on the event loop that runs it.

    Args:
        target: The server's address, e.g. ``"qdata:50051"`` or ``"dns:///qdata.internal:50051"``.
        default_timeout: Deadline in seconds for calls that pass no ``timeout``; None for none.
        credentials: TLS channel credentials (``grpc.ssl_channel_credentials(...)``); None for a
            plaintext channel.
        token: Bearer token sent as ``authorization: Bearer <token>`` on every call. Send tokens
            over TLS only.
        max_message_bytes: Largest message sent or received, in bytes; None keeps gRPC's default
            (4 MiB received). Match the server's QDATA_MAX_MESSAGE_BYTES.
        options: Further gRPC channel options as (name, value) pairs; they override the above.
        metadata: Further metadata sent on every call.
    """

    def __init__(
        self,
        target: str,
        *,
        default_timeout: float | None = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        max_message_bytes: int | None = None,
        options: Sequence[tuple[str, Any]] = (),
        metadata: MetadataPairs = (),
    ) -> None:
        opts = _channel_options(max_message_bytes, options)
        self.channel: grpc.aio.Channel = (
            grpc.aio.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=opts)
        )
        self._bind(self.channel, default_timeout, _client_metadata(token, metadata))

    async def close(self, grace: float | None = None) -> None:
        """Closes the channel; calls still running get ``grace`` seconds, then are cancelled."""
        await self.channel.close(grace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class QdataClient(_ClientBase):
    """qdata over one blocking ``grpc`` channel, safe to share between threads.

    Do not call it from an event loop's thread: it blocks. Takes the same arguments as
    :class:`AsyncQdataClient`.
    """

    def __init__(
        self,
        target: str,
        *,
        default_timeout: float | None = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        max_message_bytes: int | None = None,
        options: Sequence[tuple[str, Any]] = (),
        metadata: MetadataPairs = (),
    ) -> None:
        opts = _channel_options(max_message_bytes, options)
        self.channel: grpc.Channel = (
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self._bind(self.channel, default_timeout, _client_metadata(token, metadata))

    def close(self) -> None:
        """Closes the channel, cancelling calls still running."""
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
