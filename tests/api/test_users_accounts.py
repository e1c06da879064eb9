"""UserService accounts over real gRPC and PostgreSQL: CreateUser, GetUser, ListUsers, UpdateUser,
DeleteUser and request-id idempotency.

Every rejected request is checked for its status code and ErrorInfo reason, and for leaving the
database exactly as it was.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2
from psycopg.rows import dict_row

from qdata.v1 import user_pb2
from tests.helpers import PASSWORD, create_user, error_info, expect_error, field_violations, rid

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS


# ---- helpers ------------------------------------------------------------------------------------


async def sql(api, query: str, params: Any = None) -> list[dict[str, Any]]:
    """Runs one statement on the test's database and returns its rows (inspection only)."""
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True, row_factory=dict_row) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def db_state(api) -> dict[str, Any]:
    """Everything a request could change, to prove that a rejected one changed nothing."""
    return {
        "users": await sql(api, "SELECT * FROM users ORDER BY created_at, user_id"),
        "audit": await sql(api, "SELECT * FROM audit_events ORDER BY audit_event_id"),
        "idempotency": await sql(api, "SELECT * FROM idempotency_keys ORDER BY request_id"),
        "preferences": await sql(api, "SELECT * FROM user_preferences ORDER BY user_id"),
    }


async def user_count(api) -> int:
    return (await sql(api, "SELECT count(*) AS n FROM users"))[0]["n"]


def create_request(name: str = "alice", **fields: Any) -> user_pb2.CreateUserRequest:
    """A valid CreateUserRequest for `name`, with fields overridden."""
    values = {
        "request_id": rid(),
        "email": f"{name}@example.com",
        "username": name,
        "display_name": name.title(),
        "password": PASSWORD,
    }
    values.update(fields)
    return user_pb2.CreateUserRequest(**values)


def update_request(user_id: str, paths: list[str], request_id: str | None = None, **fields: Any):
    return user_pb2.UpdateUserRequest(
        request_id=request_id or rid(),
        user=user_pb2.User(id=user_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )


async def expect_invalid(call, *fields: str) -> dict[str, str]:
    """Asserts INVALID_ARGUMENT (reason INVALID_ARGUMENT) naming exactly `fields`; returns them."""
    error = await expect_error(call, INVALID, "INVALID_ARGUMENT")
    violations = field_violations(error)
    assert set(violations) == set(fields), violations
    return violations


async def get_by(api, **lookup: str) -> user_pb2.User:
    return (await api.users.GetUser(user_pb2.GetUserRequest(**lookup))).user


async def authenticate(api, login: str, password: str = PASSWORD) -> user_pb2.AuthenticateResponse:
    return await api.users.Authenticate(user_pb2.AuthenticateRequest(login=login, password=password))


async def list_all(api, page_size: int, status: int = user_pb2.USER_STATUS_UNSPECIFIED) -> list[list[str]]:
    """Walks every page of ListUsers and returns the ids page by page."""
    pages, token = [], ""
    while True:
        reply = await api.users.ListUsers(
            user_pb2.ListUsersRequest(page_size=page_size, page_token=token, status=status)
        )
        pages.append([u.id for u in reply.users])
        token = reply.next_page_token
        if not token:
            return pages
        assert len(pages) < 100, "pagination does not end"


# ---- CreateUser ---------------------------------------------------------------------------------


async def test_create_user_returns_normalized_user(api):
    request = create_request(email="  Alice.Smith@Example.COM ", username="Alice_1", display_name="Alice Smith")
    user = (await api.users.CreateUser(request)).user

    assert uuid.UUID(user.id)
    assert user.email == "alice.smith@example.com"
    assert user.username == "alice_1"
    assert user.display_name == "Alice Smith"
    assert user.status == user_pb2.USER_STATUS_ACTIVE
    assert user.password_scheme == user_pb2.PASSWORD_SCHEME_BCRYPT
    assert user.HasField("create_time") and user.HasField("update_time")
    assert not user.HasField("last_login_time")
    assert not user.HasField("locked_until_time")
    assert not user.HasField("delete_time")
    assert await get_by(api, id=user.id) == user
    [row] = await sql(api, "SELECT email, username, display_name, status FROM users")
    assert row == {"email": "alice.smith@example.com", "username": "alice_1", "display_name": "Alice Smith",
                   "status": "active"}


async def test_create_user_allows_empty_display_name(api):
    user = (await api.users.CreateUser(create_request("quiet", display_name=""))).user
    assert user.display_name == ""


@pytest.mark.parametrize(
    ("fields", "violated"),
    [
        ({"email": ""}, "email"),
        ({"email": "   "}, "email"),
        ({"email": "x" * 10_000 + "@example.com"}, "email"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "two@@example.com"}, "email"),
        ({"email": "a\x00b@example.com"}, "email"),
        ({"email": "a\nb@example.com"}, "email"),
        ({"email": "bob'; DROP TABLE users;--@example.com"}, "email"),
        ({"username": ""}, "username"),
        ({"username": "ab"}, "username"),
        ({"username": "a" * 33}, "username"),
        ({"username": "x" * 10_000}, "username"),
        ({"username": "_alice"}, "username"),
        ({"username": "alice smith"}, "username"),
        ({"username": "alice@home"}, "username"),
        ({"username": "bob'; DROP TABLE users;--"}, "username"),
        ({"username": "bo\x00b"}, "username"),
        ({"username": "ålice"}, "username"),
        ({"display_name": "x" * 300}, "display_name"),
        ({"display_name": "nul\x00here"}, "display_name"),
        ({"display_name": "line\nbreak"}, "display_name"),
        ({"display_name": "bell\x07"}, "display_name"),
        ({"password": ""}, "password"),
        ({"password": "short"}, "password"),
        ({"password": "x" * 1025}, "password"),
        ({"password": "nul\x00in-the-middle"}, "password"),
        ({"request_id": ""}, "request_id"),
        ({"request_id": "r" * 129}, "request_id"),
    ],
    ids=lambda value: repr(value)[:40] if isinstance(value, dict) else value,
)
async def test_create_user_rejects_bad_input(api, fields, violated):
    before = await db_state(api)
    await expect_invalid(api.users.CreateUser(create_request("alice", **fields)), violated)
    assert await db_state(api) == before


@pytest.mark.xfail(strict=True, reason="idempotency.check_request_id lets NUL through to PostgreSQL -> INTERNAL")
async def test_create_user_rejects_nul_in_request_id(api):
    await expect_invalid(api.users.CreateUser(create_request("alice", request_id="id\x00nul")), "request_id")


async def test_create_user_lists_every_invalid_field_at_once(api):
    request = create_request(email="nope", username="x", display_name="y" * 101, password="short")
    violations = await expect_invalid(api.users.CreateUser(request), "email", "username", "display_name", "password")
    # The password is never echoed back in a violation.
    assert "short" not in violations["password"]
    assert await user_count(api) == 0


async def test_create_user_stores_sql_metacharacters_verbatim(api):
    display_name = "Robert'); DROP TABLE users;-- \"Bobby\" `tables` \\ %s %(x)s"
    user = (await api.users.CreateUser(
        create_request(email="o'reilly@example.com", username="o.reilly-1_x", display_name=display_name)
    )).user

    assert user.email == "o'reilly@example.com"
    assert user.display_name == display_name
    assert (await get_by(api, email="O'Reilly@example.com")).display_name == display_name
    assert (await get_by(api, username="o.reilly-1_x")).id == user.id
    [row] = await sql(api, "SELECT email, display_name FROM users")
    assert row == {"email": "o'reilly@example.com", "display_name": display_name}
    assert (await authenticate(api, "o'reilly@example.com")).outcome == user_pb2.AUTHENTICATE_OUTCOME_SUCCESS


async def test_create_user_keeps_unicode_display_name(api):
    user = (await api.users.CreateUser(create_request("zoe", display_name="Zoë Ŝmith 日本 🙂"))).user
    assert (await get_by(api, id=user.id)).display_name == "Zoë Ŝmith 日本 🙂"


async def test_email_is_unique_case_insensitively(api):
    first = (await api.users.CreateUser(create_request("alice", email="alice@example.com"))).user
    before = await db_state(api)

    await expect_error(
        api.users.CreateUser(create_request("alice2", email="Alice@Example.COM")), EXISTS, "EMAIL_TAKEN"
    )
    await expect_error(
        api.users.CreateUser(create_request("alice3", email="  ALICE@example.com ")), EXISTS, "EMAIL_TAKEN"
    )
    assert await db_state(api) == before
    assert (await get_by(api, email="ALICE@EXAMPLE.COM")).id == first.id


async def test_username_is_unique_case_insensitively(api):
    await api.users.CreateUser(create_request("alice"))
    before = await db_state(api)
    await expect_error(
        api.users.CreateUser(create_request("alice", email="other@example.com")), EXISTS, "USERNAME_TAKEN"
    )
    await expect_error(
        api.users.CreateUser(create_request("x", email="other@example.com", username="ALICE")), EXISTS, "USERNAME_TAKEN"
    )
    assert await db_state(api) == before


async def test_concurrent_creates_with_one_email_make_one_user(api):
    calls = [
        api.users.CreateUser(create_request(f"racer{i}", email="Race@Example.com" if i % 2 else "race@example.com"))
        for i in range(20)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)

    created = [r for r in results if isinstance(r, user_pb2.CreateUserResponse)]
    failed = [r for r in results if not isinstance(r, user_pb2.CreateUserResponse)]
    assert len(created) == 1
    assert len(failed) == 19
    for error in failed:
        assert isinstance(error, grpc.aio.AioRpcError), error
        assert error.code() == EXISTS
        assert error_info(error).reason == "EMAIL_TAKEN"
    rows = await sql(api, "SELECT user_id FROM users WHERE email = 'race@example.com'")
    assert [str(r["user_id"]) for r in rows] == [created[0].user.id]
    assert await user_count(api) == 1


# ---- GetUser ------------------------------------------------------------------------------------


async def test_get_user_by_id_email_and_username(api):
    user = await create_user(api, "alice")
    assert await get_by(api, id=user.id) == user
    assert await get_by(api, id=user.id.upper()) == user
    assert await get_by(api, email="alice@example.com") == user
    assert await get_by(api, email="  ALICE@Example.Com ") == user
    assert await get_by(api, username="alice") == user
    assert await get_by(api, username="ALICE") == user


async def test_get_user_not_found(api):
    await create_user(api, "alice")
    for lookup in ({"id": str(uuid.uuid4())}, {"email": "bob@example.com"}, {"username": "bob"}):
        await expect_error(api.users.GetUser(user_pb2.GetUserRequest(**lookup)), NOT_FOUND, "USER_NOT_FOUND")


@pytest.mark.parametrize(
    ("lookup", "violated"),
    [
        ({}, "lookup"),
        ({"id": ""}, "id"),
        ({"id": "not-a-uuid"}, "id"),
        ({"id": "123"}, "id"),
        ({"id": "1' OR '1'='1"}, "id"),
        ({"id": "x" * 10_000}, "id"),
        ({"id": "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"}, "id"),
        ({"id": "\x00" * 36}, "id"),
        ({"email": ""}, "email"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "x" * 10_000}, "email"),
        ({"username": ""}, "username"),
        ({"username": "bob'; DROP TABLE users;--"}, "username"),
        ({"username": "a\x00b"}, "username"),
    ],
    ids=repr,
)
async def test_get_user_rejects_bad_lookup(api, lookup, violated):
    await expect_invalid(api.users.GetUser(user_pb2.GetUserRequest(**lookup)), violated)


# ---- ListUsers ----------------------------------------------------------------------------------


async def test_list_users_pages_without_gaps_or_repeats(api):
    created = [(await create_user(api, f"user{i}")).id for i in range(7)]

    pages = await list_all(api, page_size=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == created  # oldest first, each exactly once

    assert await list_all(api, page_size=0) == [created]  # 0 means the default (50)
    assert await list_all(api, page_size=7) == [created]
    assert await list_all(api, page_size=5000) == [created]  # capped, not an error


async def test_list_users_filters_by_status(api):
    users = [await create_user(api, f"user{i}") for i in range(5)]
    disabled = [users[1].id, users[3].id]
    for user_id in disabled:
        await api.users.UpdateUser(update_request(user_id, ["status"], status=user_pb2.USER_STATUS_DISABLED))

    assert await list_all(api, 1, user_pb2.USER_STATUS_DISABLED) == [[disabled[0]], [disabled[1]]]
    reply = await api.users.ListUsers(user_pb2.ListUsersRequest(status=user_pb2.USER_STATUS_DISABLED))
    assert all(u.status == user_pb2.USER_STATUS_DISABLED for u in reply.users)
    active = await list_all(api, 2, user_pb2.USER_STATUS_ACTIVE)
    assert [i for p in active for i in p] == [users[0].id, users[2].id, users[4].id]
    assert [i for p in await list_all(api, 2) for i in p] == [u.id for u in users]


async def test_list_users_hides_deleted_unless_asked(api):
    users = [await create_user(api, f"user{i}") for i in range(3)]
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=users[1].id))

    assert await list_all(api, 10) == [[users[0].id, users[2].id]]
    assert await list_all(api, 10, user_pb2.USER_STATUS_ACTIVE) == [[users[0].id, users[2].id]]
    reply = await api.users.ListUsers(user_pb2.ListUsersRequest(status=user_pb2.USER_STATUS_DELETED))
    assert [u.id for u in reply.users] == [users[1].id]
    assert reply.users[0].status == user_pb2.USER_STATUS_DELETED
    assert reply.users[0].email == "" and reply.users[0].username == ""


async def test_list_users_rejects_token_from_another_filter(api):
    for i in range(3):
        await create_user(api, f"user{i}")
    first = await api.users.ListUsers(user_pb2.ListUsersRequest(page_size=1))
    assert first.next_page_token

    for status in (user_pb2.USER_STATUS_DISABLED, user_pb2.USER_STATUS_ACTIVE, user_pb2.USER_STATUS_DELETED):
        request = user_pb2.ListUsersRequest(page_size=1, page_token=first.next_page_token, status=status)
        await expect_invalid(api.users.ListUsers(request), "page_token")
    # The same token with its own filter still works.
    second = await api.users.ListUsers(user_pb2.ListUsersRequest(page_size=1, page_token=first.next_page_token))
    assert second.users[0].id != first.users[0].id


async def test_list_users_rejects_forged_tokens(api):
    for i in range(2):
        await create_user(api, f"user{i}")
    token = (await api.users.ListUsers(user_pb2.ListUsersRequest(page_size=1))).next_page_token
    tampered = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    for forged in ("garbage", tampered, token + "x", "' OR 1=1 --", "x" * 5000, "\x00", "🙂"):
        await expect_invalid(api.users.ListUsers(user_pb2.ListUsersRequest(page_token=forged)), "page_token")


async def test_list_users_rejects_negative_page_size_and_unknown_status(api):
    await expect_invalid(api.users.ListUsers(user_pb2.ListUsersRequest(page_size=-1)), "page_size")
    await expect_invalid(api.users.ListUsers(user_pb2.ListUsersRequest(status=42)), "status")


# ---- UpdateUser ---------------------------------------------------------------------------------


async def test_update_display_name_only_touches_masked_field(api):
    user = await create_user(api, "alice")
    request = update_request(user.id, ["display_name"], display_name="  Alice; 'the' Great  ",
                             email="ignored@example.com", username="ignored", status=user_pb2.USER_STATUS_DISABLED)
    updated = (await api.users.UpdateUser(request)).user

    assert updated.display_name == "Alice; 'the' Great"
    assert (updated.email, updated.username, updated.status) == (user.email, user.username, user.status)
    assert updated.create_time == user.create_time
    assert updated.update_time.ToDatetime() > user.update_time.ToDatetime()
    assert await get_by(api, id=user.id) == updated


async def test_update_display_name_to_empty(api):
    user = await create_user(api, "alice")
    updated = (await api.users.UpdateUser(update_request(user.id, ["display_name"], display_name=""))).user
    assert updated.display_name == ""


async def test_update_email_normalizes_and_frees_the_old_one(api):
    user = await create_user(api, "alice")
    updated = (await api.users.UpdateUser(update_request(user.id, ["email"], email=" Alice.New@Example.COM"))).user

    assert updated.email == "alice.new@example.com"
    assert (await get_by(api, email="alice.new@example.com")).id == user.id
    await expect_error(api.users.GetUser(user_pb2.GetUserRequest(email="alice@example.com")), NOT_FOUND,
                       "USER_NOT_FOUND")
    assert (await authenticate(api, "ALICE.NEW@example.com")).outcome == user_pb2.AUTHENTICATE_OUTCOME_SUCCESS
    await create_user(api, "alice2", email="alice@example.com")  # the old email is free again


async def test_update_username(api):
    user = await create_user(api, "alice")
    updated = (await api.users.UpdateUser(update_request(user.id, ["username"], username="Alice.B"))).user
    assert updated.username == "alice.b"
    assert (await get_by(api, username="alice.b")).id == user.id
    await expect_error(api.users.GetUser(user_pb2.GetUserRequest(username="alice")), NOT_FOUND, "USER_NOT_FOUND")
    assert (await authenticate(api, "alice.b")).outcome == user_pb2.AUTHENTICATE_OUTCOME_SUCCESS


async def test_update_status_disables_and_reenables(api):
    user = await create_user(api, "alice")
    disabled = (await api.users.UpdateUser(
        update_request(user.id, ["status"], status=user_pb2.USER_STATUS_DISABLED))).user
    assert disabled.status == user_pb2.USER_STATUS_DISABLED
    assert (await authenticate(api, "alice")).outcome == user_pb2.AUTHENTICATE_OUTCOME_DISABLED

    active = (await api.users.UpdateUser(update_request(user.id, ["status"], status=user_pb2.USER_STATUS_ACTIVE))).user
    assert active.status == user_pb2.USER_STATUS_ACTIVE
    assert (await authenticate(api, "alice")).outcome == user_pb2.AUTHENTICATE_OUTCOME_SUCCESS


async def test_update_several_paths_at_once(api):
    user = await create_user(api, "alice")
    request = update_request(user.id, ["display_name", "email", "username", "status"], display_name="A",
                             email="a@example.org", username="aaa", status=user_pb2.USER_STATUS_DISABLED)
    updated = (await api.users.UpdateUser(request)).user
    assert (updated.display_name, updated.email, updated.username, updated.status) == (
        "A", "a@example.org", "aaa", user_pb2.USER_STATUS_DISABLED)


@pytest.mark.parametrize(
    ("paths", "fields", "violated"),
    [
        ([], {}, "update_mask"),
        (["password"], {}, "update_mask"),
        (["id"], {}, "update_mask"),
        (["create_time"], {}, "update_mask"),
        (["password_scheme"], {}, "update_mask"),
        (["display_name", "nonsense"], {"display_name": "x"}, "update_mask"),
        (["display_name", "display_name"], {"display_name": "x"}, "update_mask"),
        (["email; DROP TABLE users"], {}, "update_mask"),
        (["status"], {"status": user_pb2.USER_STATUS_DELETED}, "user.status"),
        (["status"], {"status": user_pb2.USER_STATUS_UNSPECIFIED}, "user.status"),
        (["status"], {"status": 77}, "user.status"),
        (["display_name"], {"display_name": "x" * 300}, "user.display_name"),
        (["display_name"], {"display_name": "tab\there"}, "user.display_name"),
        (["email"], {"email": ""}, "user.email"),
        (["email"], {"email": "x" * 10_000}, "user.email"),
        (["email"], {"email": "not-an-email"}, "user.email"),
        (["username"], {"username": ""}, "user.username"),
        (["username"], {"username": "bob'; DROP TABLE users;--"}, "user.username"),
    ],
    ids=repr,
)
async def test_update_user_rejects_bad_input(api, paths, fields, violated):
    user = await create_user(api, "alice")
    before = await db_state(api)
    await expect_invalid(api.users.UpdateUser(update_request(user.id, paths, **fields)), violated)
    assert await db_state(api) == before


@pytest.mark.parametrize("bad_id", ["", "not-a-uuid", "1' OR '1'='1", "x" * 10_000])
async def test_update_user_rejects_bad_id(api, bad_id):
    await create_user(api, "alice")
    before = await db_state(api)
    await expect_invalid(api.users.UpdateUser(update_request(bad_id, ["display_name"], display_name="x")), "user.id")
    assert await db_state(api) == before


async def test_update_user_not_found(api):
    user = await create_user(api, "alice")
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))
    before = await db_state(api)
    for user_id in (str(uuid.uuid4()), user.id):
        await expect_error(api.users.UpdateUser(update_request(user_id, ["display_name"], display_name="x")),
                           NOT_FOUND, "USER_NOT_FOUND")
    assert await db_state(api) == before


async def test_update_user_to_taken_email_or_username(api):
    await create_user(api, "alice")
    bob = await create_user(api, "bob")
    before = await db_state(api)
    await expect_error(api.users.UpdateUser(update_request(bob.id, ["email"], email="ALICE@example.com")),
                       EXISTS, "EMAIL_TAKEN")
    await expect_error(api.users.UpdateUser(update_request(bob.id, ["username"], username="Alice")),
                       EXISTS, "USERNAME_TAKEN")
    assert await db_state(api) == before
    # Setting one's own email again is not a conflict.
    same = (await api.users.UpdateUser(update_request(bob.id, ["email"], email="BOB@example.com"))).user
    assert same.email == "bob@example.com"


# ---- DeleteUser ---------------------------------------------------------------------------------


async def test_delete_user_erases_and_frees_identity(api):
    user = await create_user(api, "alice")
    await api.users.UpdatePreferences(user_pb2.UpdatePreferencesRequest(
        request_id=rid(), preferences=user_pb2.Preferences(user_id=user.id, language="en"),
        update_mask=field_mask_pb2.FieldMask(paths=["language"])))

    deleted = (await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))).user

    assert deleted.id == user.id
    assert deleted.status == user_pb2.USER_STATUS_DELETED
    assert deleted.HasField("delete_time")
    assert (deleted.email, deleted.username, deleted.display_name) == ("", "", "")
    assert deleted.password_scheme == user_pb2.PASSWORD_SCHEME_UNSPECIFIED

    # It can no longer log in or be found.
    for login in ("alice", "alice@example.com"):
        assert (await authenticate(api, login)).outcome == user_pb2.AUTHENTICATE_OUTCOME_INVALID_CREDENTIALS
    for lookup in ({"id": user.id}, {"email": "alice@example.com"}, {"username": "alice"}):
        await expect_error(api.users.GetUser(user_pb2.GetUserRequest(**lookup)), NOT_FOUND, "USER_NOT_FOUND")
    await expect_error(api.users.GetPreferences(user_pb2.GetPreferencesRequest(user_id=user.id)), NOT_FOUND,
                       "USER_NOT_FOUND")

    # Personal data is erased in the database; the pseudonymous row and its audit trail stay.
    [row] = await sql(api, "SELECT * FROM users WHERE user_id = %s", (user.id,))
    assert (row["email"], row["username"], row["display_name"], row["password_hash"]) == (None, None, "", None)
    assert row["status"] == "deleted" and row["deleted_at"] is not None
    assert await sql(api, "SELECT * FROM user_preferences") == []
    actions = [r["action"] for r in await sql(
        api, "SELECT action FROM audit_events WHERE user_id = %s ORDER BY audit_event_id", (user.id,))]
    assert actions == ["users.CreateUser", "users.UpdatePreferences", "users.DeleteUser"]

    # The email and username can be registered again, by a new account.
    again = await create_user(api, "alice")
    assert again.id != user.id
    assert (await authenticate(api, "alice")).user.id == again.id


async def test_delete_user_twice_and_unknown(api):
    user = await create_user(api, "alice")
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))
    before = await db_state(api)
    for user_id in (user.id, str(uuid.uuid4())):
        await expect_error(api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user_id)),
                           NOT_FOUND, "USER_NOT_FOUND")
    assert await db_state(api) == before


@pytest.mark.parametrize(("request_id", "user_id", "violated"), [
    ("r1", "", "id"),
    ("r1", "not-a-uuid", "id"),
    ("r1", "'; DELETE FROM users;--", "id"),
    ("", "00000000-0000-4000-8000-000000000000", "request_id"),
])
async def test_delete_user_rejects_bad_input(api, request_id, user_id, violated):
    await create_user(api, "alice")
    before = await db_state(api)
    await expect_invalid(api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=request_id, id=user_id)),
                         violated)
    assert await db_state(api) == before


async def test_delete_user_replay_returns_first_answer(api):
    user = await create_user(api, "alice")
    request = user_pb2.DeleteUserRequest(request_id=rid(), id=user.id)
    first = await api.users.DeleteUser(request)
    state = await db_state(api)
    assert await api.users.DeleteUser(request) == first
    assert await db_state(api) == state


# ---- Idempotency --------------------------------------------------------------------------------


async def test_create_user_replay_returns_same_user_once(api):
    request = create_request("alice")
    first = await api.users.CreateUser(request)
    state = await db_state(api)

    again = await api.users.CreateUser(request)
    assert again == first
    assert await db_state(api) == state
    assert len(state["users"]) == 1
    assert len(state["audit"]) == 1


async def test_concurrent_replays_have_one_effect(api):
    request = create_request("alice")
    replies = await asyncio.gather(*(api.users.CreateUser(request) for _ in range(16)))

    assert len({reply.user.id for reply in replies}) == 1
    assert all(reply == replies[0] for reply in replies)
    assert await user_count(api) == 1
    assert len(await sql(api, "SELECT 1 FROM audit_events WHERE action = 'users.CreateUser'")) == 1
    assert len(await sql(api, "SELECT 1 FROM idempotency_keys")) == 1


async def test_request_id_reused_with_other_parameters(api):
    request = create_request("alice")
    await api.users.CreateUser(request)
    state = await db_state(api)

    other = create_request("bob", request_id=request.request_id)
    await expect_error(api.users.CreateUser(other), EXISTS, "REQUEST_ID_REUSED")
    user = await create_user(api, "carol")
    # A request_id used for CreateUser cannot be reused for another method either.
    await expect_error(api.users.UpdateUser(update_request(user.id, ["display_name"], request.request_id,
                                                             display_name="x")),
                       EXISTS, "REQUEST_ID_REUSED")
    assert (await get_by(api, id=user.id)).display_name == "Carol"
    assert len(await sql(api, "SELECT 1 FROM users")) == len(state["users"]) + 1


async def test_invalid_request_leaves_no_trace_and_can_be_retried(api):
    request_id = rid()
    await expect_invalid(api.users.CreateUser(create_request("alice", request_id=request_id, email="bad")), "email")
    assert await sql(api, "SELECT * FROM idempotency_keys") == []

    fixed = await api.users.CreateUser(create_request("alice", request_id=request_id))
    assert fixed.user.email == "alice@example.com"


async def test_rejected_request_leaves_no_trace_and_can_be_retried(api):
    await create_user(api, "alice")
    request_id = rid()
    await expect_error(api.users.CreateUser(create_request("bob", request_id=request_id, email="alice@example.com")),
                       EXISTS, "EMAIL_TAKEN")
    assert await sql(api, "SELECT 1 FROM idempotency_keys WHERE request_id = %s", (request_id,)) == []

    fixed = await api.users.CreateUser(create_request("bob", request_id=request_id))
    assert fixed.user.email == "bob@example.com"
    assert await user_count(api) == 2


async def test_update_not_found_can_be_retried_under_same_request_id(api):
    user = await create_user(api, "alice")
    request_id = rid()
    await expect_error(api.users.UpdateUser(update_request(str(uuid.uuid4()), ["display_name"], request_id,
                                                             display_name="New")),
                       NOT_FOUND, "USER_NOT_FOUND")
    updated = await api.users.UpdateUser(update_request(user.id, ["display_name"], request_id, display_name="New"))
    assert updated.user.display_name == "New"


async def test_update_replay_returns_first_answer_without_second_effect(api):
    user = await create_user(api, "alice")
    first_request = update_request(user.id, ["display_name"], display_name="First")
    first = await api.users.UpdateUser(first_request)
    second = await api.users.UpdateUser(update_request(user.id, ["display_name"], display_name="Second"))
    state = await db_state(api)

    assert await api.users.UpdateUser(first_request) == first  # the stored first answer
    assert await db_state(api) == state  # ... and the later change stands
    assert (await get_by(api, id=user.id)) == second.user


async def test_request_ids_are_independent_between_users(api):
    alice = await create_user(api, "alice")
    bob = await create_user(api, "bob")
    request_id = rid()
    a = await api.users.UpdateUser(update_request(alice.id, ["display_name"], request_id, display_name="A"))
    b = await api.users.UpdateUser(update_request(bob.id, ["display_name"], request_id, display_name="B"))
    assert (a.user.display_name, b.user.display_name) == ("A", "B")


async def test_errors_carry_qdata_error_info(api):
    error = await expect_error(api.users.GetUser(user_pb2.GetUserRequest(id=str(uuid.uuid4()))), NOT_FOUND)
    info = error_info(error)
    assert (info.domain, info.reason) == ("qdata", "USER_NOT_FOUND")
    # No SQL or internals leak into the message.
    assert "select" not in error.details().lower()
