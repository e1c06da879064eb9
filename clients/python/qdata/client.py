"""A thin, typed client for qdata over the generated ``qdata.v1`` stubs.

Two clients share one design: :class:`AsyncQdataClient` (``grpc.aio``, for asyncio services) and
:class:`QdataClient` (blocking ``grpc``, for threads). Each owns one channel and exposes the five
services as ``.users``, ``.ledger``, ``.chat``, ``.usage`` and ``.budgets``. Every RPC is a typed method of its
service (generated from the contract into :mod:`qdata._rpcs`): you call it by its proto name with
the generated request message and get the generated response message back, and a type checker
(mypy, pyright) knows both. Nothing about the messages is re-implemented here::

    async with AsyncQdataClient("127.0.0.1:50051") as qdata:
        reply = await qdata.users.GetUser(user_pb2.GetUserRequest(email="ada@example.com"))

    with QdataClient("127.0.0.1:50051") as qdata:
        reply = qdata.users.GetUser(user_pb2.GetUserRequest(email="ada@example.com"))

Every call

* gets a deadline: ``default_timeout`` seconds unless the call passes ``timeout=``. A call never
  waits forever by accident; pass a longer timeout for long streams such as ExportSession.
* gets a ``request_id`` when its request message has that field and it is empty: a fresh UUID4,
  written into the request object you passed, so you can log it and so that sending the same
  object again replays the same id. Nested ids (the records of RecordUsageBatch) are the caller's.
* sends ``authorization: Bearer <token>`` when the client was given a token, plus any metadata
  given to the client or to the call, and the user-agent ``qdata-client/<version>``.
* raises :class:`QdataError` (one subclass per status code: :class:`NotFound`,
  :class:`DeadlineExceeded`, :class:`PermissionDenied`, ...) instead of ``grpc.RpcError``, carrying
  the status code, the ErrorInfo reason and metadata, and the BadRequest field violations. The
  original gRPC error stays attached as ``__cause__``.

Server-streaming RPCs (ChatService.ExportSession) return an iterator (``async for`` on the async
client, ``for`` on the blocking one); errors that end the stream are converted the same way.

Retries
-------
The client does not retry unless asked: pass ``retry=RetryPolicy()`` (or ``retry=True``). It then
gives the channel a gRPC service config (``grpc.service_config``) whose ``retryPolicy`` resends a
call that failed with UNAVAILABLE or ABORTED, with exponential jittered backoff and a bounded
number of attempts, for the RPCs that are safe to resend (``RETRY_SAFE_METHODS``, generated from
the contract):

* the reads (the RPCs whose permission is ``<family>.read``: Get*, List*, Search*,
  ExportSession). Not Authenticate, whose every attempt with a wrong password counts toward the
  lockout, nor RevealApiKey or VerifyLedger, whose permissions are not reads.
* the mutations that carry a ``request_id``. gRPC resends the same bytes, so the retry carries
  the same request_id and parameters: qdata stores the outcome of every accepted request_id and
  answers a replay with the first response without a second effect, and a request that was
  rejected or never arrived leaves no trace, so replaying is safe whether or not the first attempt
  took effect. A request that moves money (every ledger write, a billed RecordUsage) is
  remembered forever; any other (users, chat, catalog, ratings, unbilled usage) for the server's
  idempotency retention, 7 days unless the operator sets another. RecordUsageBatch has no
  request_id of its own and is not retried.

UNAVAILABLE covers a server or database that could not be reached, a read-only or overloaded
database and a server that is shutting down (reason ``SHUTTING_DOWN``: another replica takes the
retry); ABORTED is reason CONTENTION (concurrent transactions kept colliding on the same rows) or
CONCURRENT_CHANGE. Retries stay within the call's deadline. Other codes describe the request,
not the transport, and are not retried. After DEADLINE_EXCEEDED on a mutation the outcome is
unknown; resending the same request object (same request_id, longer timeout) finds out safely,
but that is the caller's decision. Without ``retry`` the same rules tell a caller what it may
retry by hand.

Blocking client and asyncio: :class:`QdataClient` blocks its thread for the whole call. Never use
it on an event loop's thread; use :class:`AsyncQdataClient` there (or ``asyncio.to_thread``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio

from qdata import __version__
from qdata._calls import (
    _ERROR_CLASSES,
    Aborted,
    AlreadyExists,
    AsyncResponseStream,
    CallDefaults,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MetadataPairs,
    NotFound,
    OutOfRange,
    PermissionDenied,
    QdataError,
    ResourceExhausted,
    ResponseStream,
    Service,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    from_rpc_error,
)
from qdata._rpcs import (
    RETRY_SAFE_METHODS,
    AsyncBudgetService,
    AsyncChatService,
    AsyncLedgerService,
    AsyncUsageService,
    AsyncUserService,
    BudgetService,
    ChatService,
    LedgerService,
    UsageService,
    UserService,
)
from qdata.v1.error_reason_pb2 import ErrorReason

__all__ = [
    "RETRY_SAFE_METHODS",
    "USER_AGENT",
    "Aborted",
    "AlreadyExists",
    "AsyncBudgetService",
    "AsyncChatService",
    "AsyncLedgerService",
    "AsyncQdataClient",
    "AsyncResponseStream",
    "AsyncUsageService",
    "AsyncUserService",
    "BudgetService",
    "Cancelled",
    "ChatService",
    "DataLoss",
    "DeadlineExceeded",
    "ErrorReason",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "LedgerService",
    "MetadataPairs",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "QdataClient",
    "QdataError",
    "ResourceExhausted",
    "ResponseStream",
    "RetryPolicy",
    "Service",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "UsageService",
    "UserService",
    "from_rpc_error",
]

_ = _ERROR_CLASSES  # re-exported: the status code -> class table, for tests and tools

USER_AGENT = f"qdata-client/{__version__}"
"""Sent as the channel's primary user-agent (gRPC appends its own), so servers can tell versions."""


# --------------------------------------------------------------------------------------------------
# Channel settings


@dataclass(frozen=True)
class RetryPolicy:
    """The opt-in retry policy, as a gRPC service-config ``retryPolicy`` for RETRY_SAFE_METHODS.

    Attributes:
        max_attempts: Attempts in all, the first included (gRPC caps it at 5).
        initial_backoff: Seconds before the first retry; each retry waits a random time between 0
            and the current backoff (gRPC's jitter).
        max_backoff: The backoff's ceiling, in seconds.
        backoff_multiplier: The backoff grows by this factor after each attempt.
        codes: The status codes that are retried (names of ``grpc.StatusCode``).
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    backoff_multiplier: float = 2.0
    codes: tuple[str, ...] = ("UNAVAILABLE", "ABORTED")

    def service_config(self) -> str:
        """The channel's ``grpc.service_config`` JSON for this policy."""
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{"service": service, "method": method} for service, method in RETRY_SAFE_METHODS],
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": f"{self.initial_backoff}s",
                            "maxBackoff": f"{self.max_backoff}s",
                            "backoffMultiplier": self.backoff_multiplier,
                            "retryableStatusCodes": list(self.codes),
                        },
                    }
                ]
            }
        )


def _channel_options(
    max_message_bytes: int | None,
    retry: RetryPolicy | bool,
    keepalive: float | None,
    options: Sequence[tuple[str, Any]],
) -> list[tuple[str, Any]]:
    base: list[tuple[str, Any]] = [("grpc.primary_user_agent", USER_AGENT)]
    if max_message_bytes is not None:
        base += [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
    policy = RetryPolicy() if retry is True else retry or None
    if policy is not None:
        base += [("grpc.enable_retries", 1), ("grpc.service_config", policy.service_config())]
    if keepalive is not None:
        base += [
            ("grpc.keepalive_time_ms", int(keepalive * 1000)),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    explicit = {name for name, _ in options}
    return [pair for pair in base if pair[0] not in explicit] + list(options)  # explicit options win


def _client_metadata(token: str | None, metadata: MetadataPairs) -> tuple[tuple[str, str | bytes], ...]:
    pairs: list[tuple[str, str | bytes]] = [("authorization", f"Bearer {token}")] if token else []
    return (*pairs, *metadata)


# --------------------------------------------------------------------------------------------------
# Clients


class AsyncQdataClient:
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
        retry: ``RetryPolicy()`` (or True for the default one) to resend RETRY_SAFE_METHODS that
            fail with UNAVAILABLE or ABORTED (see the module's Retries notes); False (the
            default) never retries.
        keepalive: Seconds between HTTP/2 keepalive pings while calls are open (a dead connection
            then fails its calls with UNAVAILABLE after 20 s instead of hanging until the
            deadline); None (the default) sends none. gRPC servers refuse pings more frequent than
            every 300 s unless configured otherwise, so keep it at 300 or more.
        options: Further gRPC channel options as (name, value) pairs; they override the above.
        metadata: Further metadata sent on every call.
    """

    users: AsyncUserService
    """UserService: accounts, login, preferences, provider API keys, audit events."""
    ledger: AsyncLedgerService
    """LedgerService: balances, deposits, charges, refunds, transfers, holds."""
    chat: AsyncChatService
    """ChatService: sessions and messages; ExportSession streams; share links (CreateShareLink returns
    the token once, GetSharedSession and ListSharedMessages need only chat.shared.read)."""
    usage: AsyncUsageService
    """UsageService: the model catalog and usage records."""
    budgets: AsyncBudgetService
    """BudgetService: users' spend caps (budgets.read / budgets.write) and the alert feed
    ListBudgetAlerts (budgets.alerts.read), whose next_page_token is always set: store it and pass
    it back to get the alerts committed since."""

    def __init__(
        self,
        target: str,
        *,
        default_timeout: float | None = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        max_message_bytes: int | None = None,
        retry: RetryPolicy | bool = False,
        keepalive: float | None = None,
        options: Sequence[tuple[str, Any]] = (),
        metadata: MetadataPairs = (),
    ) -> None:
        opts = _channel_options(max_message_bytes, retry, keepalive, options)
        self.channel: grpc.aio.Channel = (
            grpc.aio.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=opts)
        )
        defaults = CallDefaults(default_timeout, _client_metadata(token, metadata))
        self.users = AsyncUserService(self.channel, defaults)
        self.ledger = AsyncLedgerService(self.channel, defaults)
        self.chat = AsyncChatService(self.channel, defaults)
        self.usage = AsyncUsageService(self.channel, defaults)
        self.budgets = AsyncBudgetService(self.channel, defaults)

    async def close(self, grace: float | None = None) -> None:
        """Closes the channel; calls still running get ``grace`` seconds, then are cancelled."""
        await self.channel.close(grace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class QdataClient:
    """qdata over one blocking ``grpc`` channel, safe to share between threads.

    Do not call it from an event loop's thread: it blocks. Takes the same arguments as
    :class:`AsyncQdataClient`.
    """

    users: UserService
    """UserService: accounts, login, preferences, provider API keys, audit events."""
    ledger: LedgerService
    """LedgerService: balances, deposits, charges, refunds, transfers, holds."""
    chat: ChatService
    """ChatService: sessions and messages; ExportSession streams; share links (CreateShareLink returns
    the token once, GetSharedSession and ListSharedMessages need only chat.shared.read)."""
    usage: UsageService
    """UsageService: the model catalog and usage records."""
    budgets: BudgetService
    """BudgetService: users' spend caps (budgets.read / budgets.write) and the alert feed
    ListBudgetAlerts (budgets.alerts.read), whose next_page_token is always set: store it and pass
    it back to get the alerts committed since."""

    def __init__(
        self,
        target: str,
        *,
        default_timeout: float | None = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        max_message_bytes: int | None = None,
        retry: RetryPolicy | bool = False,
        keepalive: float | None = None,
        options: Sequence[tuple[str, Any]] = (),
        metadata: MetadataPairs = (),
    ) -> None:
        opts = _channel_options(max_message_bytes, retry, keepalive, options)
        self.channel: grpc.Channel = (
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        defaults = CallDefaults(default_timeout, _client_metadata(token, metadata))
        self.users = UserService(self.channel, defaults)
        self.ledger = LedgerService(self.channel, defaults)
        self.chat = ChatService(self.channel, defaults)
        self.usage = UsageService(self.channel, defaults)
        self.budgets = BudgetService(self.channel, defaults)

    def close(self) -> None:
        """Closes the channel, cancelling calls still running."""
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
