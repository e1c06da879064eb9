"""The dump format (docs/import.md): one JSON object per line, one line per user of the old services.

Everything is validated before anything is written. A user with any bad record is reported (every
problem, with its line and JSON path) and skipped as a whole; the others import. The validation
is the domain code's own: each record becomes the request its domain function takes, and the
function runs with a Deps that stops right before the database (`_Checking`), so a record is
refused here exactly when the serving path would refuse it.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, Any, NoReturn

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from qdata.v1 import chat_pb2, ledger_pb2, usage_pb2, user_pb2
from qdata_server.chat import messages as chat_messages
from qdata_server.chat import rules as chat_rules
from qdata_server.chat import sessions as chat_sessions
from qdata_server.errors import InvalidArgument, QdataError
from qdata_server.ledger import operations as ledger
from qdata_server.usage import ratings
from qdata_server.users import api_keys, passwords, preferences
from qdata_server.users import rules as user_rules
from qdata_server.validation import Violations

# Ids and request_ids derive from the old keys under this namespace (uuid5): the same dump always
# names the same qdata rows, on every run, a week apart or a year apart.
NAMESPACE = uuid.UUID("6f1c8f1e-4b7a-5d7e-9a3c-2f0d1e5b7c11")
MICROS = decimal.Decimal(1_000_000)
_ROLES = {
    "system": chat_pb2.MESSAGE_ROLE_SYSTEM,
    "user": chat_pb2.MESSAGE_ROLE_USER,
    "assistant": chat_pb2.MESSAGE_ROLE_ASSISTANT,
    "tool": chat_pb2.MESSAGE_ROLE_TOOL,
}
_THEMES = {
    "": user_pb2.THEME_UNSPECIFIED,
    "system": user_pb2.THEME_SYSTEM,
    "light": user_pb2.THEME_LIGHT,
    "dark": user_pb2.THEME_DARK,
}
_STATUSES = {"active": user_pb2.USER_STATUS_ACTIVE, "disabled": user_pb2.USER_STATUS_DISABLED}
_USER_FIELDS = {
    "key",
    "email",
    "username",
    "display_name",
    "status",
    "password_hash",
    "balance",
    "currency",
    "transactions",
    "chat_sessions",
    "ratings",
    "preferences",
    "api_keys",
}


# The dump's names of an opening balance's request fields (anything else is about the balance).
_BALANCE_FIELDS = {"amount_micros": "balance", "currency_code": "currency"}
# A violation of one message of an AppendMessages request ("messages[3].content").
_MESSAGE_FIELD = re.compile(r"messages\[(?P<index>\d+)\](?P<rest>.*)")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One bad record: where it is (line and JSON path) and what is wrong with it."""

    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.path}: {self.message}"


@dataclasses.dataclass
class Step:
    """One idempotent unit of a user's import: a request for one domain function."""

    kind: str  # import_log.step
    request_id: str
    request: Message
    legacy: dict[str, Any]  # the record it came from, secrets left out (kept in import_log)
    # The session whose messages these are (chat_messages steps): its create step's request_id.
    session_of: str = ""


@dataclasses.dataclass
class UserPlan:
    """A valid user of the dump and what importing it takes."""

    line: int
    key: str
    user_id: uuid.UUID
    balance_micros: int
    currency: str
    steps: list[Step]
    message_count: int
    rating_count: int

    @property
    def records(self) -> int:
        """Records of the dump this user stands for (the user, each history entry, session,
        message, rating, preferences and key), the unit of the throughput figure."""
        return 1 + self.history + self.message_count + self.rating_count + self.other

    history: int = 0
    other: int = 0


@dataclasses.dataclass
class Parsed:
    plans: list[UserPlan]
    problems: list[Problem]
    bad_users: int
    lines: int


def derived_id(*parts: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, "\x1f".join(parts))


def request_id(user_key: str, *parts: str) -> str:
    """The request_id of one step, derived from the old keys (at most 128 characters whatever
    the keys' length)."""
    return f"import-{derived_id('request', user_key, *parts)}"


def to_micros(value: Any) -> int:
    """Dollars as the dump's JSON text wrote them (read as Decimal, never float) to micro-units.

    Refuses more than 6 decimals (it would round), negatives, and anything that is not a number.
    """
    if isinstance(value, bool) or not isinstance(value, (int, decimal.Decimal)):
        raise ValueError("must be a number of dollars")
    amount = decimal.Decimal(value)
    if not amount.is_finite():
        raise ValueError("must be a finite number")
    if abs(amount) >= 10**13:
        raise ValueError("must be below 10^13 (the ledger holds at most 10^18 micro-units)")
    # Exact arithmetic: 13 integer digits and any number of decimals fit in this precision.
    with decimal.localcontext(prec=64) as exact:
        micros = exact.multiply(amount, MICROS)
    if micros != micros.to_integral_value():
        raise ValueError("has more than 6 decimals (1 micro-unit is 0.000001)")
    return int(micros)


class _Checked(Exception):
    """A domain function's validation passed: it reached the database."""


class _Checking:
    """A stand-in for Deps that stops a domain function where its database work would start."""

    def __init__(self, settings: Any, key_ring: Any) -> None:
        self.settings = settings
        self.key_ring = key_ring

    async def idempotent(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise _Checked

    async def idempotent_once(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise _Checked

    async def transaction(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise _Checked


Check = Callable[..., Awaitable[Any]]


async def _domain_check(checking: _Checking, check: Check, request: Message) -> list[tuple[str, str]]:
    """The field violations the domain function finds in request (empty: it would run)."""
    probe = type(request)()
    probe.CopyFrom(request)
    probe.request_id = "import-validation"  # type: ignore[attr-defined]  # each step's is set once valid
    try:
        await check(checking, probe)
    except _Checked:
        return []
    except InvalidArgument as exc:
        return [(x.field, x.description) for x in exc.violations] or [("", exc.message)]
    except QdataError as exc:
        return [("", exc.message)]
    raise AssertionError("a domain function returned without reaching the database")


def _lines(stream: IO[str]) -> Iterator[tuple[int, str]]:
    for number, text in enumerate(stream, start=1):
        if text.strip():
            yield number, text


async def parse(stream: IO[str], *, settings: Any, key_ring: Any, known_models: set[str]) -> Parsed:
    """Reads and validates the whole dump; returns the valid users' plans and every problem."""
    checking = _Checking(settings, key_ring)
    plans: list[UserPlan] = []
    problems: list[Problem] = []
    bad_users = 0
    seen: dict[tuple[str, str], int] = {}
    lines = 0
    for number, text in _lines(stream):
        lines += 1
        found: list[Problem] = []
        try:
            record = json.loads(text, parse_float=decimal.Decimal)
        except ValueError as exc:
            problems.append(Problem(number, "$", f"not JSON: {exc}"))
            bad_users += 1
            continue
        plan = await _user(number, record, found, checking, known_models)
        if plan is not None:
            for what in ("key", "email", "username"):
                value = record.get(what)
                if what != "key":
                    value = str(value).strip().lower()
                earlier = seen.setdefault((what, value), number)
                if earlier != number:
                    found.append(Problem(number, f"$.{what}", f"same {what} as line {earlier}"))
        if found:
            problems.extend(found)
            bad_users += 1
        elif plan is not None:
            plans.append(plan)
    return Parsed(plans=plans, problems=problems, bad_users=bad_users, lines=lines)


async def _user(
    line: int, record: Any, found: list[Problem], checking: _Checking, known_models: set[str]
) -> UserPlan | None:
    def bad(path: str, message: str) -> None:
        found.append(Problem(line, path, message))

    if not isinstance(record, dict):
        bad("$", "must be a JSON object (one user)")
        return None
    for extra in sorted(set(record) - _USER_FIELDS):
        bad(f"$.{extra}", "is not a field of the dump format")
    key = record.get("key")
    if not isinstance(key, str) or not key or len(key) > 200:
        bad("$.key", "must be the old service's user key, 1 to 200 characters")
        return None
    user_id = derived_id("user", key)
    uid = str(user_id)

    # The user: ImportUsers' own rules.
    v = Violations()
    user_rules.normalize_email(v, "email", _text(record, "email"))
    user_rules.normalize_username(v, "username", _text(record, "username"))
    user_rules.check_display_name(v, "display_name", _text(record, "display_name"))
    for item in v.items:
        bad(f"$.{item.field}", item.description)
    status = record.get("status", "active")
    if not isinstance(status, str) or status not in _STATUSES:
        bad("$.status", "must be 'active' or 'disabled'")
    try:
        passwords.parse_legacy(_text(record, "password_hash"))
    except passwords.LegacyHashError as exc:
        bad("$.password_hash", str(exc))
    imported = user_pb2.ImportedUser(
        email=_text(record, "email"),
        username=_text(record, "username"),
        display_name=_text(record, "display_name"),
        legacy_password_hash=_text(record, "password_hash"),
        status=_STATUSES.get(status, user_pb2.USER_STATUS_ACTIVE)
        if isinstance(status, str)
        else user_pb2.USER_STATUS_ACTIVE,
    )
    # import_log keeps rows forever, so they hold the old keys, never personal data: DeleteUser
    # erases email, username and display name, and a copy here would outlive that erasure.
    legacy_user = {k: record[k] for k in ("key", "status") if k in record}
    steps = [Step("user", request_id(key, "user"), user_pb2.ImportUsersRequest(users=[imported]), legacy_user)]

    # The opening balance, and the history it closes (kept as the legacy record, not replayed).
    currency = _text(record, "currency") or "USD"
    balance = 0
    try:
        balance = to_micros(record.get("balance", 0))
    except ValueError as exc:
        bad("$.balance", str(exc))
    history = record.get("transactions", [])
    if not isinstance(history, list):
        bad("$.transactions", "must be a list")
        history = []
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            bad(f"$.transactions[{i}]", "must be an object")
            continue
        try:
            amount = entry.get("amount")
            to_micros(
                abs(amount) if isinstance(amount, decimal.Decimal | int) and not isinstance(amount, bool) else None
            )
        except ValueError as exc:
            bad(f"$.transactions[{i}].amount", str(exc))
    if balance < 0:
        bad("$.balance", "must not be negative")
    if balance > 0 or history:
        request = ledger_pb2.DepositRequest(
            user_id=uid, amount_micros=balance, currency_code=currency, description="Opening balance (import)"
        )
        legacy = {"balance": _json(record.get("balance", 0)), "currency": currency, "transactions": _json(history)}
        if balance > 0:
            await _check(found, line, "$", checking, ledger.open_balance, request, _BALANCE_FIELDS)
            steps.append(Step("opening_balance", request_id(key, "opening_balance"), request, legacy))

    # Chat sessions and their messages, in the old order, at most 100 messages per append.
    message_count = 0
    sessions = record.get("chat_sessions", [])
    if not isinstance(sessions, list):
        bad("$.chat_sessions", "must be a list")
        sessions = []
    for i, session in enumerate(sessions):
        at = f"$.chat_sessions[{i}]"
        if not isinstance(session, dict) or not isinstance(session.get("id"), str) or not session["id"]:
            bad(at, "must be an object with the old session's id")
            continue
        create = chat_pb2.CreateSessionRequest(
            user_id=uid,
            model_id=_text(session, "model_id"),
            title=_text(session, "title"),
            tags=[str(t) for t in session["tags"]] if isinstance(session.get("tags"), list) else [],
        )
        await _check(found, line, at, checking, chat_sessions.create_session, create)
        create_id = request_id(key, "chat_session", session["id"])
        steps.append(Step("chat_session", create_id, create, {"id": session["id"]}))
        messages = session.get("messages", [])
        if not isinstance(messages, list):
            bad(f"{at}.messages", "must be a list")
            continue
        inputs: list[chat_pb2.MessageInput] = []
        for j, message in enumerate(messages):
            mat = f"{at}.messages[{j}]"
            if (
                not isinstance(message, dict)
                or not isinstance(message.get("role"), str)
                or message["role"] not in _ROLES
            ):
                bad(mat, "must be an object with role 'system', 'user', 'assistant' or 'tool'")
                continue
            inputs.append(
                chat_pb2.MessageInput(
                    role=_ROLES[message["role"]],
                    content=_text(message, "content"),
                    model_id=_text(message, "model_id"),
                    input_tokens=_int(message, "input_tokens"),
                    output_tokens=_int(message, "output_tokens"),
                    tool_call_id=_text(message, "tool_call_id"),
                )
            )
        message_count += len(inputs)
        for start in range(0, len(inputs), chat_rules.MAX_MESSAGES_PER_APPEND):
            chunk = inputs[start : start + chat_rules.MAX_MESSAGES_PER_APPEND]
            append = chat_pb2.AppendMessagesRequest(user_id=uid, session_id=uid, messages=chunk)
            await _check(
                found,
                line,
                at,
                checking,
                chat_messages.append_messages,
                append,
                message_offset=start,
            )
            steps.append(
                Step(
                    "chat_messages",
                    request_id(key, "chat_messages", session["id"], str(start)),
                    append,
                    {"session": session["id"], "from": start, "count": len(chunk)},
                    session_of=create_id,
                )
            )

    # Ratings of catalog models.
    rating_list = record.get("ratings", [])
    if not isinstance(rating_list, list):
        bad("$.ratings", "must be a list")
        rating_list = []
    for i, rating in enumerate(rating_list):
        at = f"$.ratings[{i}]"
        if not isinstance(rating, dict):
            bad(at, "must be an object")
            continue
        rate = usage_pb2.RateModelRequest(
            user_id=uid, model_id=_text(rating, "model_id"), stars=_int(rating, "stars"), review=_text(rating, "review")
        )
        await _check(found, line, at, checking, ratings.rate_model, rate)
        if rate.model_id and rate.model_id not in known_models:
            bad(f"{at}.model_id", "is not a model of the catalog")
        steps.append(Step("rating", request_id(key, "rating", rate.model_id), rate, {"model_id": rate.model_id}))

    other = 0
    prefs = record.get("preferences")
    if prefs is not None:
        if not isinstance(prefs, dict):
            bad("$.preferences", "must be an object")
        else:
            theme = prefs.get("theme", "")
            if not isinstance(theme, str) or theme not in _THEMES:
                theme = None
                bad("$.preferences.theme", "must be 'system', 'light', 'dark' or empty")
            extra = prefs.get("extra", {})
            update = user_pb2.UpdatePreferencesRequest(
                preferences=user_pb2.Preferences(
                    user_id=uid,
                    default_model_id=_text(prefs, "default_model_id"),
                    language=_text(prefs, "language"),
                    theme=_THEMES.get(theme, user_pb2.THEME_UNSPECIFIED),
                    extra={str(k): str(x) for k, x in extra.items()} if isinstance(extra, dict) else {},
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["default_model_id", "language", "theme", "extra"]),
            )
            await _check(found, line, "$", checking, preferences.update_preferences, update)
            steps.append(Step("preferences", request_id(key, "preferences"), update, {}))
            other += 1

    keys = record.get("api_keys", [])
    if not isinstance(keys, list):
        bad("$.api_keys", "must be a list")
        keys = []
    for i, stored in enumerate(keys):
        at = f"$.api_keys[{i}]"
        if not isinstance(stored, dict) or not isinstance(stored.get("id"), str) or not stored["id"]:
            bad(at, "must be an object with the old key's id")
            continue
        create_key = user_pb2.CreateApiKeyRequest(
            user_id=uid,
            provider=_text(stored, "provider"),
            label=_text(stored, "label"),
            secret=_text(stored, "secret"),
        )
        await _check(found, line, at, checking, api_keys.create_api_key, create_key)
        kept = {"id": stored["id"], "provider": create_key.provider}
        steps.append(Step("api_key", request_id(key, "api_key", stored["id"]), create_key, kept))
        other += 1

    if found:
        return None
    for step in steps:
        step.request.request_id = step.request_id  # type: ignore[attr-defined]
    plan = UserPlan(
        line=line,
        key=key,
        user_id=user_id,
        balance_micros=balance,
        currency=currency,
        steps=steps,
        message_count=message_count,
        rating_count=len(rating_list),
    )
    plan.history = len(history)
    plan.other = other + len(sessions)
    return plan


async def _check(
    found: list[Problem],
    line: int,
    at: str,
    checking: _Checking,
    check: Check,
    request: Message,
    renamed: dict[str, str] | None = None,
    *,
    message_offset: int | None = None,
) -> None:
    """Records the domain function's violations of request as problems at the dump's paths."""
    for field, message in await _domain_check(checking, check, request):
        numbered = _MESSAGE_FIELD.fullmatch(field) if message_offset is not None else None
        if renamed is not None:
            path = f"{at}.{renamed.get(field, 'balance')}"
        elif numbered and message_offset is not None:
            path = f"{at}.messages[{message_offset + int(numbered['index'])}]{numbered['rest']}"
        elif not field:
            path = at
        else:
            path = f"{at}.{field.removeprefix('preferences.')}"
        found.append(Problem(line, path, message))


def _text(record: dict[str, Any], name: str) -> str:
    value = record.get(name, "")
    return value if isinstance(value, str) else str(value)


def _int(record: dict[str, Any], name: str) -> int:
    value = record.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**62) < value < 2**62:
        return -1  # refused by the domain rules (negative counts, stars out of range)
    return value


def _json(value: Any) -> Any:
    """A dump value as JSON again (Decimals as the text the dump held)."""
    return json.loads(json.dumps(value, default=str))
