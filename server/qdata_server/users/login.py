"""Login and password changes, with an atomic lockout counter.

Authenticate and ChangePassword share one mechanism (`_reserve_check`): the attempt is counted in
the database before the password is checked, in the statement that also refuses a locked account
(reserve_password_check, 0010_login_lockout_reservations.sql), so however many guesses arrive at
once no more than the threshold are ever checked: the attempt that reaches it locks the account at
once. A right password clears the count, also when it cannot log in (a disabled account); a wrong
one stays counted. A login that names no user is counted the same way under a keyed digest, so
that it answers exactly the sequence a real login answers and cannot be told from one. The
password check (bcrypt or legacy PBKDF2, or a dummy bcrypt for an unknown login) runs off the event
loop (on the hasher's own thread pool, see passwords.py) and outside any transaction. The
reservation and the finishing update are each one statement in one round trip
(Deps.statement), so a login costs two round trips around its hash check.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from qdata.v1 import user_pb2
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import audit
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_one
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS, Acting, acting_for
from qdata_server.errors import Aborted, FailedPrecondition
from qdata_server.users import convert, rules
from qdata_server.users.accounts import user_not_found
from qdata_server.validation import Violations

if TYPE_CHECKING:
    from qdata_server.deps import Deps

MAX_LOGIN_LENGTH = 254


async def authenticate(deps: Deps, request: user_pb2.AuthenticateRequest) -> user_pb2.AuthenticateResponse:
    settings = deps.settings
    v = Violations()
    login = request.login.strip().lower()
    if not login:
        v.add("login", "is required")
    v.text("login", login, MAX_LOGIN_LENGTH)
    if not request.password:
        v.add("password", "is required")
    elif len(request.password.encode("utf-8")) > settings.password_max_length:
        v.add("password", f"must be at most {settings.password_max_length} bytes")
    v.raise_if_any()
    # Emails are stored lower-cased after NFC; a login is compared the same way.
    login = login if "@" not in login else _normalized_email_or_raw(login)
    # A login names an email or username, not a user id: finding its user is a cross-user path.
    row = await _reserve_check(deps, ACTING_FOR_ALL_USERS, login=login)
    assert row is not None  # a login is always counted, against its user or as unknown
    if not row["checked"]:
        return user_pb2.AuthenticateResponse(
            outcome=user_pb2.AUTHENTICATE_OUTCOME_LOCKED, locked_until_time=convert.timestamp(row["locked_until"])
        )
    # Unknown logins verify against a dummy hash, so they take as long as a wrong password.
    check = await deps.passwords.verify(request.password, row["password_hash"])
    if row["user_id"] is None or not check.ok:
        await _audit_lock(deps, row)
        return user_pb2.AuthenticateResponse(outcome=user_pb2.AUTHENTICATE_OUTCOME_INVALID_CREDENTIALS)
    if row["status"] == "disabled":
        await _clear_failures(deps, row["user_id"])
        return user_pb2.AuthenticateResponse(outcome=user_pb2.AUTHENTICATE_OUTCOME_DISABLED)

    new_hash = await deps.passwords.hash(request.password) if check.needs_rehash else None
    params = {"user_id": row["user_id"], "new_hash": new_hash, "old_hash": row["password_hash"]}

    async def finish(conn: Conn) -> dict[str, Any] | None:
        done = await fetch_one(conn, "finish_login", params)
        if done is not None:
            await _audit(conn, "users.Authenticate", row["user_id"], {"password_rehashed": True})
        return done

    # The usual login is one statement (one round trip); a rehash also writes its audit event.
    acting = acting_for(row["user_id"])
    if new_hash is None:
        done = await deps.statement_row("finish_login", params, acting=acting)
    else:
        done = await deps.transaction(finish, acting=acting)
    if done is None:  # deleted between the check and now
        return user_pb2.AuthenticateResponse(outcome=user_pb2.AUTHENTICATE_OUTCOME_INVALID_CREDENTIALS)
    return user_pb2.AuthenticateResponse(outcome=user_pb2.AUTHENTICATE_OUTCOME_SUCCESS, user=convert.user(done))


def _normalized_email_or_raw(login: str) -> str:
    v = Violations()
    normalized = rules.normalize_email(v, "login", login)
    return normalized or login


async def _audit(conn: Conn, action: str, user_id: uuid.UUID, summary: dict[str, Any]) -> None:
    """Records an event of the user's own account (the user is both target and owner)."""
    await audit.record(
        conn, action=action, target_type="user", target_id=str(user_id), user_id=user_id, summary=summary
    )


async def _reserve_check(
    deps: Deps, acting: Acting, *, user_id: uuid.UUID | None = None, login: str | None = None
) -> dict[str, Any] | None:
    """Counts one password check for a user id or a login before it runs (see the module doc).

    Returns the reservation: `checked` true with the user's id, status and password hash (all
    None for an unknown login) when the password may be checked, `checked` false with
    `locked_until` when it is locked; None for a user id that names no live user.
    """
    params = {
        "user_id": user_id,
        "login": login,
        "login_digest": deps.passwords.login_digest(login) if login is not None else None,
        "threshold": deps.settings.lockout_threshold,
        "lock_seconds": deps.settings.lockout_seconds,
    }
    return await deps.statement_row("reserve_password_check", params, acting=acting)


async def _clear_failures(deps: Deps, user_id: uuid.UUID) -> None:
    """Forgets the user's counted failures and lock: a right password was given."""
    await deps.statement_row("clear_failed_logins", {"user_id": user_id}, acting=acting_for(user_id))


async def _audit_lock(deps: Deps, row: dict[str, Any]) -> None:
    """Records that this failure locked an account (its count reached the threshold)."""
    if row["user_id"] is None or row["failed_count"] != deps.settings.lockout_threshold:
        return

    summary = {"failed_login_count": row["failed_count"], "locked_until": row["locked_until"].isoformat()}
    await deps.transaction(
        lambda conn: _audit(conn, "users.AccountLocked", row["user_id"], summary), acting=acting_for(row["user_id"])
    )


async def change_password(deps: Deps, request: user_pb2.ChangePasswordRequest) -> user_pb2.ChangePasswordResponse:
    settings = deps.settings
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    if not request.current_password:
        v.add("current_password", "is required")
    rules.check_password(v, "new_password", request.new_password, settings)
    v.raise_if_any()
    assert user_id is not None

    # A replay of a change that already happened must return its first answer, though the
    # current password no longer matches: the idempotency record decides before any check.
    if not await deps.replayed(request, user_id=user_id):
        row = await _reserve_check(deps, acting_for(user_id), user_id=user_id)
        if row is None:
            raise user_not_found()
        if not row["checked"]:
            raise FailedPrecondition(
                "the account is locked after too many failed attempts",
                reason=ErrorReason.ERROR_REASON_ACCOUNT_LOCKED,
                metadata={"locked_until": row["locked_until"].isoformat()},
            )
        check = await deps.passwords.verify(request.current_password, row["password_hash"])
        if not check.ok:
            await _audit_lock(deps, row)
            raise FailedPrecondition("current_password does not match", reason=ErrorReason.ERROR_REASON_WRONG_PASSWORD)
        # Cleared now rather than with the change, so that a change that fails later (a concurrent
        # change, a database error) does not leave a right password counted as a failure.
        await _clear_failures(deps, user_id)
        old_hash = row["password_hash"]
    else:
        old_hash = None
    new_hash = await deps.passwords.hash(request.new_password)

    async def work(conn: Conn) -> user_pb2.ChangePasswordResponse:
        done = await fetch_one(conn, "set_password", {"user_id": user_id, "old_hash": old_hash, "new_hash": new_hash})
        if done is None:
            if await fetch_one(conn, "get_user_by_id", {"user_id": user_id}) is None:
                raise user_not_found()
            raise Aborted(
                "the password changed while this request was checked; retry",
                reason=ErrorReason.ERROR_REASON_CONCURRENT_CHANGE,
            )
        await _audit(conn, "users.ChangePassword", user_id, {"fields": ["password"]})
        return user_pb2.ChangePasswordResponse(user=convert.user(done))

    return await deps.idempotent(
        request,
        user_pb2.ChangePasswordResponse,
        work,
        user_id=user_id,
        secret_fields=("current_password", "new_password"),
    )
