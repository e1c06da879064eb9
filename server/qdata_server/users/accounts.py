"""Accounts: create, read, list, update, delete, import.

Each mutation is one transaction that also writes its audit record and, through
Deps.idempotent, its idempotency record. Validation happens before any database work, so a bad
request changes nothing and leaves no trace.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qdata.v1 import user_pb2
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import audit
from qdata_server.contract import wire_reason
from qdata_server.db.connection import Conn
from qdata_server.db.sql import execute, fetch_all, fetch_one, fetch_row
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS, acting_for
from qdata_server.errors import InvalidArgument, NotFound
from qdata_server.pagination import keyset, page_size
from qdata_server.users import convert, passwords, rules
from qdata_server.validation import Violations, mask_flags, mask_paths, require_uuid

if TYPE_CHECKING:
    from qdata_server.deps import Deps

MAX_IMPORT_USERS = 1000
_UPDATABLE_USER_PATHS = {"display_name", "email", "username", "status"}
# The reason an imported user gets when another live user holds its email or username.
_TAKEN = {"email": ErrorReason.ERROR_REASON_EMAIL_TAKEN, "username": ErrorReason.ERROR_REASON_USERNAME_TAKEN}


def user_not_found() -> NotFound:
    return NotFound("user not found", reason=ErrorReason.ERROR_REASON_USER_NOT_FOUND)


async def load_live_user(conn: Conn, user_id: uuid.UUID, *, for_update: bool = False) -> dict[str, Any]:
    """The live user's row, or NOT_FOUND (USER_NOT_FOUND)."""
    row = await fetch_one(conn, "get_user_by_id_for_update" if for_update else "get_user_by_id", {"user_id": user_id})
    if row is None:
        raise user_not_found()
    return row


async def audit_user(conn: Conn, action: str, user_id: uuid.UUID, summary: dict[str, Any]) -> None:
    """Records an audit event about a user's account: the account is both its target and its user."""
    await audit.record(
        conn, action=action, target_type="user", target_id=str(user_id), user_id=user_id, summary=summary
    )


async def create_user(deps: Deps, request: user_pb2.CreateUserRequest) -> user_pb2.CreateUserResponse:
    v = Violations()
    email = rules.normalize_email(v, "email", request.email)
    username = rules.normalize_username(v, "username", request.username)
    display_name = rules.check_display_name(v, "display_name", request.display_name)
    rules.check_password(v, "password", request.password, deps.settings)
    v.raise_if_any()
    password_hash = await deps.passwords.hash(request.password)
    # The id is chosen here, so the transaction can act for the user it creates.
    user_id = uuid.uuid4()

    async def work(conn: Conn) -> user_pb2.CreateUserResponse:
        row = await fetch_row(
            conn,
            "insert_user",
            {
                "user_id": user_id,
                "email": email,
                "username": username,
                "display_name": display_name,
                "status": "active",
                "password_hash": password_hash,
            },
        )
        await audit_user(
            conn, "users.CreateUser", row["user_id"], {"fields": ["email", "username", "display_name", "password"]}
        )
        return user_pb2.CreateUserResponse(user=convert.user(row))

    return await deps.idempotent(
        request, user_pb2.CreateUserResponse, work, acting=acting_for(None, user_id), secret_fields=("password",)
    )


async def get_user(deps: Deps, request: user_pb2.GetUserRequest) -> user_pb2.GetUserResponse:
    v = Violations()
    lookup = request.WhichOneof("lookup")
    params: dict[str, Any]
    if lookup == "id":
        params, name = {"user_id": v.uuid("id", request.id)}, "get_user_by_id"
    elif lookup == "email":
        params, name = {"email": rules.normalize_email(v, "email", request.email)}, "get_user_by_email"
    elif lookup == "username":
        params, name = {"username": rules.normalize_username(v, "username", request.username)}, "get_user_by_username"
    else:
        v.add("lookup", "set one of id, email or username")
    v.raise_if_any()

    # Finding a user by email or username is a search across users; by id, it acts for that user.
    acting = acting_for(params["user_id"]) if lookup == "id" else ACTING_FOR_ALL_USERS
    row = await deps.statement_row(name, params, acting=acting)
    if row is None:
        raise user_not_found()
    return user_pb2.GetUserResponse(user=convert.user(row))


async def list_users(deps: Deps, request: user_pb2.ListUsersRequest) -> user_pb2.ListUsersResponse:
    limit = page_size(request.page_size)
    if request.status not in convert.STATUS_FROM_PROTO and request.status != user_pb2.USER_STATUS_UNSPECIFIED:
        raise _bad_status("status")
    status = convert.STATUS_FROM_PROTO.get(request.status)
    tokens = await deps.page_tokens()
    filters = {"status": status}
    cursor = tokens.open(request.page_token, "ListUsers", filters)

    async def work(conn: Conn) -> list[dict[str, Any]]:
        return await fetch_all(
            conn, "list_users", {**filters, **keyset(cursor, "after_created_at after_user_id", limit)}
        )

    rows = await deps.transaction(work, acting=ACTING_FOR_ALL_USERS)  # lists every user
    rows, next_token = tokens.page(
        rows, limit, "ListUsers", filters, lambda last: [last["created_at"].isoformat(), str(last["user_id"])]
    )
    return user_pb2.ListUsersResponse(users=[convert.user(r) for r in rows], next_page_token=next_token)


def _bad_status(field: str) -> InvalidArgument:
    v = Violations()
    v.add(field, "is not a known UserStatus")
    return InvalidArgument(v.items)


async def update_user(deps: Deps, request: user_pb2.UpdateUserRequest) -> user_pb2.UpdateUserResponse:
    paths = mask_paths("update_mask", list(request.update_mask.paths), _UPDATABLE_USER_PATHS)
    v = Violations()
    user_id = v.uuid("user.id", request.user.id)
    values: dict[str, Any] = mask_flags(paths, _UPDATABLE_USER_PATHS)
    values.update(display_name=None, email=None, username=None, status=None, user_id=user_id)
    if "display_name" in paths:
        values["display_name"] = rules.check_display_name(v, "user.display_name", request.user.display_name)
    if "email" in paths:
        values["email"] = rules.normalize_email(v, "user.email", request.user.email)
    if "username" in paths:
        values["username"] = rules.normalize_username(v, "user.username", request.user.username)
    if "status" in paths:
        if request.user.status not in (user_pb2.USER_STATUS_ACTIVE, user_pb2.USER_STATUS_DISABLED):
            v.add("user.status", "must be USER_STATUS_ACTIVE or USER_STATUS_DISABLED (use DeleteUser to delete)")
        values["status"] = convert.STATUS_FROM_PROTO.get(request.user.status)
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed

    async def work(conn: Conn) -> user_pb2.UpdateUserResponse:
        row = await fetch_one(conn, "update_user", values)
        if row is None:
            raise user_not_found()
        await audit_user(conn, "users.UpdateUser", user_id, _update_summary(paths, values))
        return user_pb2.UpdateUserResponse(user=convert.user(row))

    return await deps.idempotent(request, user_pb2.UpdateUserResponse, work, user_id=user_id)


def _update_summary(paths: list[str], values: dict[str, Any]) -> dict[str, Any]:
    """Names the changed fields; only the status value is kept (the others are personal data)."""
    summary: dict[str, Any] = {"fields": sorted(paths)}
    if "status" in paths:
        summary["status"] = values["status"]
    return summary


async def delete_user(deps: Deps, request: user_pb2.DeleteUserRequest) -> user_pb2.DeleteUserResponse:
    user_id = require_uuid("id", request.id)

    async def work(conn: Conn) -> user_pb2.DeleteUserResponse:
        row = await fetch_one(conn, "erase_user", {"user_id": user_id})
        if row is None:
            raise user_not_found()
        await execute(conn, "delete_preferences", {"user_id": user_id})
        await execute(conn, "api_keys_delete_user", {"user_id": user_id})
        await execute(conn, "delete_user_chats", {"user_id": user_id})
        await execute(conn, "usage_delete_user_ratings", {"user_id": user_id})
        erased = ["email", "username", "display_name", "password", "preferences", "api_keys"]
        await audit_user(conn, "users.DeleteUser", user_id, {"erased": erased})
        return user_pb2.DeleteUserResponse(user=convert.user(row))

    return await deps.idempotent(request, user_pb2.DeleteUserResponse, work, user_id=user_id)


async def import_users(
    deps: Deps, request: user_pb2.ImportUsersRequest, *, user_ids: Sequence[uuid.UUID] | None = None
) -> user_pb2.ImportUsersResponse:
    """ImportUsers; `user_ids` (one per user, the server-side importer's ids derived from the old
    keys) replaces the ids the database would draw."""
    v = Violations()
    if user_ids is not None and len(user_ids) != len(request.users):
        raise ValueError("import_users: one user_id per user")
    if not request.users:
        v.add("users", "must hold at least one user")
    elif len(request.users) > MAX_IMPORT_USERS:
        v.add("users", f"must hold at most {MAX_IMPORT_USERS} users")
    v.raise_if_any()

    # Validate each user on its own: a bad one is reported and skipped, the others still import.
    results: list[user_pb2.ImportUserResult] = []
    candidates: list[tuple[int, dict[str, Any]]] = []
    for index, item in enumerate(request.users):
        uv = Violations()
        row = {
            "email": rules.normalize_email(uv, "email", item.email),
            "username": rules.normalize_username(uv, "username", item.username),
            "display_name": rules.check_display_name(uv, "display_name", item.display_name),
            "user_id": user_ids[index] if user_ids is not None else None,
            "password_hash": item.legacy_password_hash,
            "status": {
                user_pb2.USER_STATUS_UNSPECIFIED: "active",
                user_pb2.USER_STATUS_ACTIVE: "active",
                user_pb2.USER_STATUS_DISABLED: "disabled",
            }.get(item.status),
        }
        try:
            passwords.parse_legacy(item.legacy_password_hash)
        except passwords.LegacyHashError as exc:
            uv.add("legacy_password_hash", str(exc))
        if row["status"] is None:
            uv.add("status", "must be USER_STATUS_ACTIVE or USER_STATUS_DISABLED")
        if uv:
            results.append(
                user_pb2.ImportUserResult(
                    index=index,
                    error_reason=wire_reason(ErrorReason.ERROR_REASON_INVALID_ARGUMENT),
                    error_message="; ".join(f"{x.field}: {x.description}" for x in uv.items),
                    error_fields=sorted({x.field for x in uv.items}),
                )
            )
        else:
            candidates.append((index, row))

    async def work(conn: Conn) -> user_pb2.ImportUsersResponse:
        done = list(results)
        for index, row in candidates:
            created = await fetch_one(conn, "insert_user_if_free", row)
            if created is None:
                taken = await fetch_one(conn, "find_taken_identity", row)
                field = "email" if taken and taken["email_taken"] else "username"
                done.append(
                    user_pb2.ImportUserResult(
                        index=index,
                        error_reason=wire_reason(_TAKEN[field]),
                        error_message=f"a user with this {field} already exists",
                        error_fields=[field],
                    )
                )
                continue
            await audit_user(
                conn, "users.ImportUsers", created["user_id"], {"scheme": passwords.scheme_of(row["password_hash"])}
            )
            done.append(user_pb2.ImportUserResult(index=index, user=convert.user(created)))
        done.sort(key=lambda r: r.index)
        imported = sum(1 for r in done if r.HasField("user"))
        return user_pb2.ImportUsersResponse(results=done, imported_count=imported, failed_count=len(done) - imported)

    # Checking identities across users and creating many users: a cross-user path.
    return await deps.idempotent(request, user_pb2.ImportUsersResponse, work, acting=ACTING_FOR_ALL_USERS)
