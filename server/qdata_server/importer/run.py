"""Runs an import: the valid users of a dump through the domain functions, resumably.

Each step of a user (the user, the opening balance, each chat session, each batch of its
messages, each rating, the preferences, each API key) is one call of its domain function, so
validation, audit, row-level security and idempotency stay one implementation each. `_Logging`
adds one thing to each of those transactions: the step's import_log row (migration 0013), keyed
by a request_id derived from the old keys and never purged. A step whose row exists is not run
again, so a re-run after a crash (or a week later, when the idempotency records are gone)
resumes and creates nothing twice. A user is complete once its last step's row and the
`complete` row are written; the reconciliation names any user that is not.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import IO, Any, TypeVar, cast

from google.protobuf.message import Message
from psycopg.types.json import Jsonb

from qdata.v1 import chat_pb2, ledger_pb2, user_pb2
from qdata_server import callctx
from qdata_server.chat import messages as chat_messages
from qdata_server.chat import sessions as chat_sessions
from qdata_server.db.connection import Conn
from qdata_server.db.sql import execute, fetch_all
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS, acting_for
from qdata_server.deps import Deps, Work
from qdata_server.errors import QdataError
from qdata_server.idempotency import Held
from qdata_server.importer.dump import Parsed, Problem, Step, UserPlan, parse
from qdata_server.ledger import operations as ledger
from qdata_server.ledger import reads as ledger_reads
from qdata_server.usage import ratings
from qdata_server.users import accounts, api_keys, preferences

log = logging.getLogger("qdata.import")
M = TypeVar("M", bound=Message)
# The method import's requests are remembered under (idempotency records, ledger request keys).
METHOD = "qdata-server/import"


class UserRefused(Exception):
    """ImportUsers refused the user (EMAIL_TAKEN, USERNAME_TAKEN): nothing of it was imported."""


@dataclasses.dataclass(frozen=True)
class _Current:
    plan: UserPlan
    step: Step


_current: contextvars.ContextVar[_Current] = contextvars.ContextVar("qdata_import_step")


def _resume_record(response: Message) -> bytes:
    """What a later run needs of a step's answer: the new session's id, and nothing else.

    import_log rows are never deleted, so they keep no answer that carries personal data or
    content (a user's email, a message's text) that DeleteUser or DeleteMessage must be able to erase.
    """
    if isinstance(response, chat_pb2.CreateSessionResponse):
        return chat_pb2.CreateSessionResponse(session=chat_pb2.Session(id=response.session.id)).SerializeToString()
    return b""


class _Logging(Deps):
    """Deps whose idempotent transactions also write the running step's import_log row."""

    async def idempotent(self, request: Message, response_type: type[M], work: Work[M], **kwargs: Any) -> M:
        current = _current.get()

        async def logged(conn: Conn) -> M:
            response = await work(conn)
            if isinstance(response, user_pb2.ImportUsersResponse) and not response.imported_count:
                return response  # no user, nothing to log (the user's import failed)
            await _log_step(conn, current, response)
            return response

        return await super().idempotent(request, response_type, logged, **kwargs)

    async def idempotent_once(
        self, response_type: type[M], work: Callable[[Conn], Awaitable[M | Held]], **kwargs: Any
    ) -> M:
        current = _current.get()

        async def logged(conn: Conn) -> M | Held:
            outcome = await work(conn)
            if not isinstance(outcome, Held):  # a key already held ran nothing: nothing to log
                await _log_step(conn, current, outcome)
            return outcome

        return await super().idempotent_once(response_type, logged, **kwargs)


async def _log_step(conn: Conn, current: _Current, response: Message) -> None:
    """Writes the running step's import_log row in the step's transaction."""
    await execute(
        conn,
        "import_log_insert",
        {
            "user_id": current.plan.user_id,
            "request_id": current.step.request_id,
            "step": current.step.kind,
            "legacy_key": current.plan.key,
            "legacy": Jsonb(current.step.legacy),
            "response": _resume_record(response),
        },
    )


@dataclasses.dataclass
class UserOutcome:
    """One user's line of the reconciliation report."""

    key: str
    user_id: uuid.UUID
    old_balance_micros: int
    balance_micros: int
    old_messages: int
    messages: int
    old_ratings: int
    ratings: int
    complete: bool
    error: str = ""

    @property
    def exact(self) -> bool:
        return (
            self.complete
            and not self.error
            and self.old_balance_micros == self.balance_micros
            and self.old_messages == self.messages
            and self.old_ratings == self.ratings
        )


@dataclasses.dataclass
class Report:
    """What an import did and found."""

    lines: int
    problems: list[Problem]
    bad_users: int
    valid_users: int
    steps_run: int = 0
    steps_skipped: int = 0
    records: int = 0  # records of the users this run imported something of
    seconds: float = 0.0
    users: list[UserOutcome] = dataclasses.field(default_factory=list)
    ledger_discrepancies: int = -1  # -1: not verified (dry run)
    dry_run: bool = False

    @property
    def failed(self) -> list[UserOutcome]:
        return [u for u in self.users if not u.exact]

    @property
    def ok(self) -> bool:
        """Every valid user reconciled exactly and VerifyLedger is clean (bad records aside)."""
        return not self.failed and self.ledger_discrepancies == 0

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def lines_of(self) -> Iterable[str]:
        """The report as text lines (the command prints them)."""
        yield f"read {self.lines} user line(s): {self.valid_users} valid, {self.bad_users} refused"
        for problem in self.problems:
            yield f"bad record: {problem}"
        if self.dry_run:
            yield "dry run: nothing written"
            return
        yield (
            f"steps: {self.steps_run} run, {self.steps_skipped} already imported; {self.records} record(s) in "
            f"{self.seconds:.2f} s ({self.records_per_second:.0f} records/s)"
        )
        yield "reconciliation (user key, user id, old -> imported balance in micro-units, messages, ratings):"
        for u in self.users:
            mark = "ok" if u.exact else "MISMATCH"
            yield (
                f"  {mark} {u.key} {u.user_id} balance {u.old_balance_micros} -> {u.balance_micros}, messages "
                f"{u.old_messages} -> {u.messages}, ratings {u.old_ratings} -> {u.ratings}"
                + ("" if u.complete else ", INCOMPLETE")
                + (f", error: {u.error}" if u.error else "")
            )
        found = self.ledger_discrepancies
        yield f"VerifyLedger: {'clean' if found == 0 else f'{found} discrepancies'}"
        exact = len(self.users) - len(self.failed)
        verdict = "reconciled exactly" if self.ok else "NOT reconciled"
        yield f"import {verdict}: {exact} of {len(self.users)} user(s) exact"


class Progress:
    """On a terminal, one count line rewritten in place (users done of total, records/s); else a
    count in the logs every 5 seconds and at the end. No dependency: a bar library would add a
    runtime pin for one line of output."""

    def __init__(self, total: int, records: int, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._done = 0
        self._records = 0
        self._total = total
        self._started = self._last = time.monotonic()

    def advance(self, records: int) -> None:
        self._done += 1
        self._records += records
        now = time.monotonic()
        if self._done < self._total and now - self._last < (0.2 if self._tty else 5.0):
            return
        self._last = now
        rate = self._records / max(now - self._started, 1e-9)
        if self._tty:
            self._stream.write(f"\rimport: {self._done}/{self._total} users, {rate:.0f} records/s")
            self._stream.flush()
        else:
            log.info("import progress", extra={"users_done": self._done, "users_total": self._total})

    def close(self) -> None:
        if self._tty and self._done:
            self._stream.write("\n")
            self._stream.flush()


async def run_import(
    deps: Deps,
    stream: IO[str],
    *,
    dry_run: bool = False,
    jobs: int = 4,
    progress_stream: IO[str] | None = None,
    after_step: Callable[[UserPlan, Step], None] | None = None,
) -> Report:
    """Validates the whole dump, then imports its valid users (`jobs` at a time) and reconciles.

    Raises nothing for bad records (they are in the report); `after_step` is called after each
    step that ran (tests interrupt an import there).
    """
    models = await deps.transaction(lambda conn: fetch_all(conn, "import_model_ids"), acting=ACTING_FOR_ALL_USERS)
    parsed: Parsed = await parse(
        stream, settings=deps.settings, key_ring=deps.key_ring, known_models={m["model_id"] for m in models}
    )
    report = Report(
        lines=parsed.lines,
        problems=parsed.problems,
        bad_users=parsed.bad_users,
        valid_users=len(parsed.plans),
        dry_run=dry_run,
    )
    if dry_run:
        return report
    logging_deps = _Logging(settings=deps.settings, pool=deps.pool, passwords=deps.passwords, key_ring=deps.key_ring)
    done: dict[tuple[uuid.UUID, str], bytes] = {}
    ids = [p.user_id for p in parsed.plans]
    for row in await deps.transaction(
        lambda conn: fetch_all(conn, "import_log_for_users", {"user_ids": ids}), acting=ACTING_FOR_ALL_USERS
    ):
        done[(row["user_id"], row["request_id"])] = bytes(row["response"])
    errors: dict[uuid.UUID, str] = {}
    bar = Progress(len(parsed.plans), sum(p.records for p in parsed.plans), progress_stream)
    started = time.monotonic()
    token = callctx.bind(callctx.CallContext(method=METHOD, actor="import"))
    try:
        queue: asyncio.Queue[UserPlan] = asyncio.Queue()
        for plan in parsed.plans:
            queue.put_nowait(plan)

        async def worker() -> None:
            while not queue.empty():
                plan = queue.get_nowait()
                try:
                    await _import_user(logging_deps, plan, done, report, after_step)
                except QdataError as exc:
                    errors[plan.user_id] = f"{exc.reason}: {exc.message}"
                except UserRefused as exc:
                    errors[plan.user_id] = str(exc)
                bar.advance(plan.records)

        # A failure that is not one user's (the database gone, an interruption) stops every worker:
        # what committed stays, and the next run resumes from the import_log.
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, jobs)):
                group.create_task(worker())
    finally:
        callctx.unbind(token)
        bar.close()
    report.seconds = time.monotonic() - started
    await _reconcile(deps, parsed.plans, errors, report)
    return report


async def _import_user(
    deps: _Logging,
    plan: UserPlan,
    done: dict[tuple[uuid.UUID, str], bytes],
    report: Report,
    after_step: Callable[[UserPlan, Step], None] | None,
) -> None:
    """Runs the user's steps that no earlier run finished, in order, then marks the user complete.

    The user's records count towards the throughput figure when any of its steps ran here.
    """
    sessions: dict[str, str] = {}  # create step's request_id -> the qdata session id
    ran = False
    for step in plan.steps:
        stored = done.get((plan.user_id, step.request_id))
        if stored is not None:
            report.steps_skipped += 1
            if step.kind == "chat_session":
                sessions[step.request_id] = chat_pb2.CreateSessionResponse.FromString(stored).session.id
            continue
        token = _current.set(_Current(plan, step))
        try:
            response = await _call(deps, plan, step, sessions)
        finally:
            _current.reset(token)
        if isinstance(response, user_pb2.ImportUsersResponse) and not response.imported_count:
            result = response.results[0]
            raise UserRefused(f"{result.error_reason}: {result.error_message}")
        if isinstance(response, chat_pb2.CreateSessionResponse):
            sessions[step.request_id] = response.session.id
        report.steps_run += 1
        if not ran:
            ran = True
            report.records += plan.records
        if after_step is not None:
            after_step(plan, step)
    if (plan.user_id, "complete") not in done:
        await deps.transaction(
            lambda conn: execute(
                conn,
                "import_log_insert",
                {
                    "user_id": plan.user_id,
                    "request_id": "complete",
                    "step": "complete",
                    "legacy_key": plan.key,
                    "legacy": Jsonb({"steps": len(plan.steps)}),
                    "response": b"",
                },
            ),
            acting=acting_for(plan.user_id),
        )


async def _call(deps: _Logging, plan: UserPlan, step: Step, sessions: dict[str, str]) -> Message:
    request = step.request
    if step.kind == "user":
        return await accounts.import_users(deps, cast(user_pb2.ImportUsersRequest, request), user_ids=[plan.user_id])
    if step.kind == "opening_balance":
        return await ledger.open_balance(deps, cast(ledger_pb2.DepositRequest, request))
    if step.kind == "chat_session":
        return await chat_sessions.create_session(deps, cast(chat_pb2.CreateSessionRequest, request))
    if step.kind == "chat_messages":
        append = cast(chat_pb2.AppendMessagesRequest, request)
        append.session_id = sessions[step.session_of]
        return await chat_messages.append_messages(deps, append)
    if step.kind == "rating":
        return await ratings.rate_model(deps, cast(Any, request))
    if step.kind == "preferences":
        return await preferences.update_preferences(deps, cast(user_pb2.UpdatePreferencesRequest, request))
    if step.kind == "api_key":
        return await api_keys.create_api_key(deps, cast(user_pb2.CreateApiKeyRequest, request))
    raise AssertionError(f"unknown import step {step.kind!r}")


async def _reconcile(deps: Deps, plans: list[UserPlan], errors: dict[uuid.UUID, str], report: Report) -> None:
    """Reads back each user's balance, messages and ratings, then runs VerifyLedger."""
    params = {"user_ids": [p.user_id for p in plans], "currencies": [p.currency for p in plans]}
    rows = await deps.transaction(lambda conn: fetch_all(conn, "import_reconcile", params), acting=ACTING_FOR_ALL_USERS)
    by_id = {r["user_id"]: r for r in rows}
    for plan in plans:
        row = by_id[plan.user_id]
        report.users.append(
            UserOutcome(
                key=plan.key,
                user_id=plan.user_id,
                old_balance_micros=plan.balance_micros,
                balance_micros=row["balance_micros"],
                old_messages=plan.message_count,
                messages=row["message_count"],
                old_ratings=plan.rating_count,
                ratings=row["rating_count"],
                complete=row["complete"],
                error=errors.get(plan.user_id, ""),
            )
        )
    verified = await ledger_reads.verify_ledger(deps, ledger_pb2.VerifyLedgerRequest(max_discrepancies=1000))
    report.ledger_discrepancies = len(verified.discrepancies)
    if verified.discrepancies:
        log.error("VerifyLedger found discrepancies after the import", extra={"count": len(verified.discrepancies)})
