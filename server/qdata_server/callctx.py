"""What the current RPC knows about itself, visible to the code it calls.

The interceptor sets one CallContext per RPC in a context variable; the transaction helper reads
the deadline from it (to bound database work) and audit records read the actor and request_id.
"""

from __future__ import annotations

import contextvars
import dataclasses
import time
from typing import Any, TypeAlias

import grpc.aio

# The context grpc.aio hands a servicer method (the request and response types vary per RPC).
ServicerContext: TypeAlias = grpc.aio.ServicerContext[Any, Any]


@dataclasses.dataclass
class CallContext:
    """Per-RPC facts: the full method name, the caller's identity and the deadline."""

    method: str
    actor: str = "anonymous"
    # Monotonic time by which the caller wants an answer; None when it set no deadline.
    deadline: float | None = None
    request_id: str = ""
    # Set when the call is answered with the stored response of an earlier one (idempotency.py).
    replay: bool = False

    def time_left(self) -> float | None:
        """Seconds left before the deadline, or None without a deadline."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("qdata_call", default=None)


def current() -> CallContext | None:
    """The running RPC's context, or None outside an RPC (CLI commands, tests of domain code)."""
    return _current.get()


def bind(ctx: CallContext) -> contextvars.Token[CallContext | None]:
    return _current.set(ctx)


def unbind(token: contextvars.Token[CallContext | None]) -> None:
    _current.reset(token)
