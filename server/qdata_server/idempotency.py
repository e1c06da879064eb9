"""Request-id idempotency for every mutating RPC.

`run_idempotent` claims (user, caller, request_id) in the same transaction as the change, so the
change and its recorded response commit or vanish together. The claim is the SQL function
idempotency_claim (db/functions/idempotency.sql), which the usage batch's plpgsql calls too; the
one comparison that answers REQUEST_ID_REUSED is check_same_request, for every path:
- first call: the key is claimed, the work runs, its response is stored;
- replay with the same parameters: the stored response comes back, the work does not run;
- concurrent replays: the later claims wait on the key's unique index until the first commits,
  then see its response (one effect);
- same request_id, different parameters or method: ALREADY_EXISTS (reason REQUEST_ID_REUSED);
  parameters compare as understood, defaults filled in (a left-out currency equals "USD");
- a call that fails (bad input, business rejection) rolls back and leaves no trace, so it can be
  retried with the same request_id once corrected;
- records older than the retention (QDATA_IDEMPOTENCY_RETENTION_HOURS) are purged in the
  background (`purge_expired`); a replay after that is a new request, except for a money-moving
  request (`remembered` given): the ledger rows it created carry its key (method and fingerprint
  included) forever, under a unique index, so a late replay is answered from them with the first
  answer, or REQUEST_ID_REUSED, and never takes effect twice (0009_ledger_request_keys.sql).
Secret fields (passwords, API key secrets) are left out of the parameter fingerprint, so none of
them is stored even as a fast hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from google.protobuf.message import Message

from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import callctx
from qdata_server.db import transactions
from qdata_server.db.connection import Conn, Pool
from qdata_server.db.sql import execute, fetch_one, fetch_row
from qdata_server.errors import AlreadyExists, RequestRemembered, invalid

R = TypeVar("R", bound=Message)
NO_USER = transactions.NO_USER_ID
MAX_REQUEST_ID_LENGTH = 128


def check_request_id(request_id: str) -> None:
    """Raises INVALID_ARGUMENT unless request_id is 1 to 128 printable characters."""
    if not request_id.strip():
        raise invalid("request_id", "is required (a UUID4 is recommended)")
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise invalid("request_id", f"must be at most {MAX_REQUEST_ID_LENGTH} characters")
    if not request_id.isprintable():
        raise invalid("request_id", "must not contain control characters")


def fingerprint(request: Message, secret_fields: Iterable[str] = ()) -> bytes:
    """SHA-256 of the request's deterministic encoding, without request_id and secret fields."""
    copy = type(request)()
    copy.CopyFrom(request)
    for name in ("request_id", *secret_fields):
        copy.ClearField(name)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


def _key(request: Message, user_id: uuid.UUID | None) -> dict[str, object]:
    ctx = callctx.current()
    return {
        "user_id": user_id or NO_USER,
        "actor": ctx.actor if ctx else "anonymous",
        "request_id": request.request_id,  # type: ignore[attr-defined]
    }


@dataclasses.dataclass(frozen=True)
class RequestKey:
    """A request's idempotency key with what tells a replay from a reuse: method and fingerprint."""

    user_id: uuid.UUID
    actor: str
    request_id: str
    method: str
    request_hash: bytes

    def ids(self) -> dict[str, object]:
        """The key alone, as the idempotency queries take it (user_id, actor, request_id)."""
        return {"user_id": self.user_id, "actor": self.actor, "request_id": self.request_id}

    def params(self) -> dict[str, object]:
        """The key as the ledger functions take it (request_id, actor, method, request_hash)."""
        return {
            "request_id": self.request_id,
            "actor": self.actor,
            "method": self.method,
            "request_hash": self.request_hash,
        }


def request_key(
    request: Message,
    *,
    user_id: uuid.UUID | None = None,
    canonical: Message | None = None,
    secret_fields: Iterable[str] = (),
) -> RequestKey:
    """The key run_idempotent claims for request (see its canonical argument)."""
    check_request_id(request.request_id)  # type: ignore[attr-defined]
    ctx = callctx.current()
    return RequestKey(
        **_key(request, user_id),  # type: ignore[arg-type]
        method=ctx.method if ctx else type(request).DESCRIPTOR.full_name,
        request_hash=fingerprint(request if canonical is None else canonical, secret_fields),
    )


def reused() -> AlreadyExists:
    """The answer to a request_id already used for another method or other parameters.

    Raised by check_same_request only: every path compares there.
    """
    return AlreadyExists(
        "request_id was already used for a different request; use a new request_id",
        reason=ErrorReason.ERROR_REASON_REQUEST_ID_REUSED,
    )


def check_same_request(key: RequestKey, method: str, request_hash: bytes) -> None:
    """Raises REQUEST_ID_REUSED unless the stored method and fingerprint are key's."""
    if method != key.method or bytes(request_hash) != key.request_hash:
        raise reused()


async def was_recorded(pool: Pool, request: Message, *, user_id: uuid.UUID | None = None) -> bool:
    """True if this request_id already has a committed response (the call is a replay)."""
    check_request_id(request.request_id)  # type: ignore[attr-defined]
    key = _key(request, user_id)

    async def read(conn: Conn) -> bool:
        return await fetch_one(conn, "get_request_id", key) is not None

    return await transactions.run(pool, read, acting=transactions.acting_for(user_id))


async def run_idempotent(
    pool: Pool,
    request: Message,
    response_type: type[R],
    work: Callable[[Conn], Awaitable[R]],
    *,
    user_id: uuid.UUID | None = None,
    acting: transactions.Acting | None = None,
    secret_fields: Iterable[str] = (),
    canonical: Message | None = None,
    key: RequestKey | None = None,
    remembered: Callable[[Conn], Awaitable[R]] | None = None,
    committed: Callable[[R], None] | None = None,
    retries: int = 5,
) -> R:
    """Runs work(conn) once per request_id and returns its (stored) response.

    canonical, when given, is the request as the server understood it (defaults filled in); it is
    fingerprinted instead, so a replay that spells a default out (currency "USD" for "") matches.
    key, when given, is request_key(...) of the same arguments, computed by a caller whose work
    needs it. remembered answers a money-moving request whose work raised RequestRemembered (the
    ledger already carries its key, the idempotency record is gone): it runs in a transaction of
    its own, reads the first answer from the ledger rows or raises REQUEST_ID_REUSED, and
    changes nothing. committed, when given, is called with the response once the transaction that
    ran work has committed, and never for a replay (the metrics of what moved, counted once).
    """
    if key is None:
        key = request_key(request, user_id=user_id, canonical=canonical, secret_fields=secret_fields)
    ids = key.ids()

    async def transaction(conn: Conn) -> tuple[R, bool]:
        claim = await fetch_row(
            conn, "claim_request_id", {**ids, "method": key.method, "request_hash": key.request_hash}
        )
        if not claim["claimed"]:
            return _answer_held(key, response_type, Held.of(claim)), False
        response = await work(conn)
        await execute(conn, "store_response", {**ids, "response": response.SerializeToString()})
        return response, True

    return await _run(
        pool,
        transaction,
        acting=acting or transactions.acting_for(user_id),
        remembered=remembered,
        committed=committed,
        retries=retries,
    )


@dataclasses.dataclass(frozen=True)
class Held:
    """A key that a committed request holds, as idempotency_claim reports it when it did not claim."""

    method: str
    request_hash: bytes
    response: bytes

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Held:
        """From a row with idempotency_claim's stored_method, stored_hash and stored_response."""
        return cls(row["stored_method"], bytes(row["stored_hash"]), bytes(row["stored_response"]))


def _answer_held(key: RequestKey, response_type: type[R], held: Held) -> R:
    """The stored first answer of a replay, or REQUEST_ID_REUSED (check_same_request)."""
    check_same_request(key, held.method, held.request_hash)
    _note_replay()
    return response_type.FromString(held.response)


async def run_claiming(
    pool: Pool,
    response_type: type[R],
    work: Callable[[Conn], Awaitable[R | Held]],
    *,
    key: RequestKey,
    acting: transactions.Acting,
    remembered: Callable[[Conn], Awaitable[R]] | None = None,
    committed: Callable[[R], None] | None = None,
    retries: int = 5,
) -> R:
    """run_idempotent for work whose one database call claims key itself.

    work calls a SQL function that runs idempotency_claim first and does its change only if it
    took the key, in the same statement that answers (the ledger's *_once functions): it returns
    the response, or Held (Held.of its row) when a committed request holds the key. The response
    is stored with the commit, in the same flush; a Held one is answered as run_idempotent
    answers it (the stored response, or REQUEST_ID_REUSED), and remembered and committed as there too.
    """

    async def transaction(conn: Conn) -> tuple[R, bool]:
        outcome = await work(conn)
        if isinstance(outcome, Held):
            return _answer_held(key, response_type, outcome), False
        await execute(conn, "store_response", {**key.ids(), "response": outcome.SerializeToString()})
        return outcome, True

    return await _run(pool, transaction, acting=acting, remembered=remembered, committed=committed, retries=retries)


async def _run(
    pool: Pool,
    transaction: Callable[[Conn], Awaitable[tuple[R, bool]]],
    *,
    acting: transactions.Acting,
    remembered: Callable[[Conn], Awaitable[R]] | None,
    committed: Callable[[R], None] | None,
    retries: int,
) -> R:
    """Runs the claiming transaction; a RequestRemembered is answered by remembered (see above).

    transaction returns the response and whether it ran the work (False: it answered a replay);
    the attempt that committed decides, so a retried attempt never counts twice for committed.
    """
    try:
        response, ran_work = await transactions.run(pool, transaction, acting=acting, retries=retries)
    except RequestRemembered:
        if remembered is None:
            raise
    else:
        if ran_work and committed is not None:
            committed(response)
        return response
    _note_replay()
    return await transactions.run(pool, remembered, acting=acting, retries=retries)


def _note_replay() -> None:
    """Marks the running call as a replay (its log line and qdata_idempotent_replays_total)."""
    ctx = callctx.current()
    if ctx is not None:
        ctx.replay = True


async def purge_expired(pool: Pool, retention_seconds: float, *, batch: int = 1000) -> int:
    """Deletes idempotency records older than retention_seconds, in batches; returns the count.

    Each batch is its own short transaction on the cross-user path (records of every user).
    """
    total = 0
    params = {"retention_seconds": retention_seconds, "limit": batch}

    async def one_batch(conn: Conn) -> int:
        purged: int = (await fetch_row(conn, "purge_request_ids", params))["purged"]
        return purged

    while True:
        purged = await transactions.run(pool, one_batch, acting=transactions.ACTING_FOR_ALL_USERS)
        total += purged
        if purged < batch:
            return total
