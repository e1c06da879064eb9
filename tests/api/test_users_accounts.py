"""UserService accounts over real gRPC and PostgreSQL: CreateUser, GetUser, ListUsers, UpdateUser,
DeleteUser and request-id idempotency.

Every rejected request is checked for its status code and ErrorInfo reason, and for leaving the
database exactly as it was. Bad-input cases are tables walked inside one test each, because every
test pays for a fresh database and server.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from qdata.v1 import user_pb2
from tests.support.calls import PASSWORD, case_id, create_user, error_info, expect_error, field_violations, outcome, rid
from tests.support.database import sql, table_rows

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
SUCCESS = user_pb2.AUTHENTICATE_OUTCOME_SUCCESS


# ---- helpers ------------------------------------------------------------------------------------


STATE_TABLES = ("users", "audit_events", "idempotency_keys", "user_preferences")


async def db_state(api) -> dict[str, Any]:
    """Everything a request could change, to prove that a rejected one changed nothing."""
    return await table_rows(api, *STATE_TABLES)


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
        request_id=rid() if request_id is None else request_id,
        user=user_pb2.User(id=user_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )


def invalid(*fields: str) -> tuple[str, str, set[str]]:
    """The outcome of a request rejected for these invalid fields."""
    return "INVALID_ARGUMENT", "INVALID_ARGUMENT", set(fields)


async def get_by(api, **lookup: str) -> user_pb2.User:
    return (await api.users.GetUser(user_pb2.GetUserRequest(**lookup))).user


async def login_outcome(api, login: str, password: str = PASSWORD) -> int:
    return (await api.users.Authenticate(user_pb2.AuthenticateRequest(login=login, password=password))).outcome


async def list_pages(api, page_size: int, status: int = user_pb2.USER_STATUS_UNSPECIFIED) -> list[list[str]]:
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


def flat(pages: list[list[str]]) -> list[str]:
    return [item for page in pages for item in page]


# ---- CreateUser ---------------------------------------------------------------------------------


async def test_create_user_returns_normalized_user(api):
    request = create_request(email="  Alice.Smith@Example.COM ", username="Alice_1", display_name=" Alice Smith ")
    user = (await api.users.CreateUser(request)).user

    assert uuid.UUID(user.id)
    assert (user.email, user.username, user.display_name) == ("alice.smith@example.com", "alice_1", "Alice Smith")
    assert user.status == user_pb2.USER_STATUS_ACTIVE
    assert user.password_scheme == user_pb2.PASSWORD_SCHEME_BCRYPT
    assert user.HasField("create_time") and user.HasField("update_time")
    for unset in ("last_login_time", "locked_until_time", "delete_time"):
        assert not user.HasField(unset)
    assert await get_by(api, id=user.id) == user
    [row] = await sql(api, "SELECT email, username, display_name, status FROM users")
    assert row == {
        "email": "alice.smith@example.com",
        "username": "alice_1",
        "display_name": "Alice Smith",
        "status": "active",
    }

    # Display names may be empty or any printable Unicode.
    quiet = (await api.users.CreateUser(create_request("quiet", display_name=""))).user
    assert quiet.display_name == ""
    zoe = (await api.users.CreateUser(create_request("zoe", display_name="Zoë Ŝmith 日本 🙂"))).user
    assert (await get_by(api, id=zoe.id)).display_name == "Zoë Ŝmith 日本 🙂"


CREATE_BAD_INPUT = [
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
    ({"username": "\u00e5lice"}, "username"),
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
    ({"request_id": "id\x00with-nul"}, "request_id"),
]


@pytest.mark.parametrize(("fields", "violated"), CREATE_BAD_INPUT, ids=case_id)
async def test_create_user_rejects_bad_input_and_changes_nothing(api, fields, violated):
    before = await db_state(api)
    assert await outcome(api.users.CreateUser(create_request("alice", **fields))) == invalid(violated)
    assert await db_state(api) == before


async def test_create_user_lists_every_invalid_field_and_never_echoes_the_password(api):
    before = await db_state(api)
    request = create_request(email="nope", username="x", display_name="y" * 101, password="short")
    assert await outcome(api.users.CreateUser(request)) == invalid("email", "username", "display_name", "password")
    error = await expect_error(api.users.CreateUser(request), INVALID, "INVALID_ARGUMENT")
    assert "short" not in error.details() and "short" not in field_violations(error)["password"]
    assert await db_state(api) == before


async def test_create_user_stores_sql_metacharacters_verbatim(api):
    display_name = 'Robert\'); DROP TABLE users;-- "Bobby" `tables` \\ %s %(x)s'
    user = (
        await api.users.CreateUser(
            create_request(email="o'reilly@example.com", username="o.reilly-1_x", display_name=display_name)
        )
    ).user

    assert user.email == "o'reilly@example.com"
    assert user.display_name == display_name
    assert (await get_by(api, email="O'Reilly@example.com")).display_name == display_name
    assert (await get_by(api, username="o.reilly-1_x")).id == user.id
    [row] = await sql(api, "SELECT email, display_name FROM users")
    assert row == {"email": "o'reilly@example.com", "display_name": display_name}
    assert await login_outcome(api, "o'reilly@example.com") == SUCCESS


async def test_email_and_username_are_unique_case_insensitively(api):
    first = (await api.users.CreateUser(create_request("alice"))).user
    before = await db_state(api)

    for email in ("Alice@Example.COM", "  ALICE@example.com "):
        await expect_error(api.users.CreateUser(create_request("other", email=email)), EXISTS, "EMAIL_TAKEN")
    for username in ("alice", "ALICE"):
        await expect_error(api.users.CreateUser(create_request("other", username=username)), EXISTS, "USERNAME_TAKEN")
    assert await db_state(api) == before
    assert (await get_by(api, email="ALICE@EXAMPLE.COM")).id == first.id


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
        assert (error.code(), error_info(error).reason) == (EXISTS, "EMAIL_TAKEN")
    rows = await sql(api, "SELECT user_id FROM users WHERE email = 'race@example.com'")
    assert [str(r["user_id"]) for r in rows] == [created[0].user.id]
    assert await user_count(api) == 1


# ---- GetUser ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lookup",
    [
        {"id": "{id}"},
        {"id": "{ID}"},
        {"email": "alice@example.com"},
        {"email": "  ALICE@Example.Com "},
        {"username": "alice"},
        {"username": "ALICE"},
    ],
    ids=case_id,
)
async def test_get_user_by_id_email_and_username(api, lookup):
    user = await create_user(api, "alice")
    field, value = next(iter(lookup.items()))
    assert await get_by(api, **{field: value.format(id=user.id, ID=user.id.upper())}) == user


@pytest.mark.parametrize(
    "lookup", [{"id": str(uuid.uuid4())}, {"email": "bob@example.com"}, {"username": "bob"}], ids=case_id
)
async def test_get_user_not_found(api, lookup):
    await create_user(api, "alice")
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
    ids=case_id,
)
async def test_get_user_rejects_bad_lookup(api, lookup, violated):
    assert await outcome(api.users.GetUser(user_pb2.GetUserRequest(**lookup))) == invalid(violated)


# ---- ListUsers ----------------------------------------------------------------------------------


async def test_list_users_pages_without_gaps_or_repeats(api):
    created = [(await create_user(api, f"user{i}")).id for i in range(7)]

    pages = await list_pages(api, page_size=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert flat(pages) == created  # oldest first, each exactly once

    assert await list_pages(api, page_size=0) == [created]  # 0 means the default (50)
    assert await list_pages(api, page_size=7) == [created]
    assert await list_pages(api, page_size=5000) == [created]  # capped, not an error


async def test_list_users_filters_by_status_and_hides_deleted(api):
    users = [await create_user(api, f"user{i}") for i in range(6)]
    ids = [u.id for u in users]
    for user_id in (ids[1], ids[3]):
        await api.users.UpdateUser(update_request(user_id, ["status"], status=user_pb2.USER_STATUS_DISABLED))
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=ids[4]))

    assert await list_pages(api, 1, user_pb2.USER_STATUS_DISABLED) == [[ids[1]], [ids[3]]]
    reply = await api.users.ListUsers(user_pb2.ListUsersRequest(status=user_pb2.USER_STATUS_DISABLED))
    assert all(u.status == user_pb2.USER_STATUS_DISABLED for u in reply.users)
    assert flat(await list_pages(api, 2, user_pb2.USER_STATUS_ACTIVE)) == [ids[0], ids[2], ids[5]]
    # No filter: active and disabled, not deleted.
    assert flat(await list_pages(api, 2)) == [ids[0], ids[1], ids[2], ids[3], ids[5]]
    # Deleted users only when asked for, with their personal data erased.
    reply = await api.users.ListUsers(user_pb2.ListUsersRequest(status=user_pb2.USER_STATUS_DELETED))
    assert [u.id for u in reply.users] == [ids[4]]
    assert reply.users[0].status == user_pb2.USER_STATUS_DELETED
    assert (reply.users[0].email, reply.users[0].username) == ("", "")


async def test_list_users_rejects_bad_paging(api):
    for i in range(3):
        await create_user(api, f"user{i}")
    first = await api.users.ListUsers(user_pb2.ListUsersRequest(page_size=1))
    token = first.next_page_token
    assert token

    # A token is bound to the filter it was issued for.
    for status in (user_pb2.USER_STATUS_DISABLED, user_pb2.USER_STATUS_ACTIVE, user_pb2.USER_STATUS_DELETED):
        request = user_pb2.ListUsersRequest(page_size=1, page_token=token, status=status)
        assert await outcome(api.users.ListUsers(request)) == invalid("page_token"), status
    # Forged, tampered, truncated or hostile tokens are refused.
    middle = len(token) // 2
    tampered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    for forged in ("garbage", tampered, token[:-8], "' OR 1=1 --", "x" * 5000, "\x00", "🙂"):
        request = user_pb2.ListUsersRequest(page_token=forged)
        assert await outcome(api.users.ListUsers(request)) == invalid("page_token"), forged[:40]
    assert await outcome(api.users.ListUsers(user_pb2.ListUsersRequest(page_size=-1))) == invalid("page_size")
    assert await outcome(api.users.ListUsers(user_pb2.ListUsersRequest(status=42))) == invalid("status")

    # The genuine token with its own filter still works.
    second = await api.users.ListUsers(user_pb2.ListUsersRequest(page_size=1, page_token=token))
    assert second.users[0].id != first.users[0].id


# ---- UpdateUser ---------------------------------------------------------------------------------


async def test_update_display_name_only_touches_masked_field(api):
    user = await create_user(api, "alice")
    request = update_request(
        user.id,
        ["display_name"],
        display_name="  Alice; 'the' \"Great\"  ",
        email="ignored@example.com",
        username="ignored",
        status=user_pb2.USER_STATUS_DISABLED,
    )
    updated = (await api.users.UpdateUser(request)).user

    assert updated.display_name == "Alice; 'the' \"Great\""
    assert (updated.email, updated.username, updated.status) == (user.email, user.username, user.status)
    assert updated.create_time == user.create_time
    assert updated.update_time.ToDatetime() > user.update_time.ToDatetime()
    assert await get_by(api, id=user.id) == updated

    emptied = (await api.users.UpdateUser(update_request(user.id, ["display_name"], display_name=""))).user
    assert emptied.display_name == ""


async def test_update_email_and_username(api):
    user = await create_user(api, "alice")
    updated = (
        await api.users.UpdateUser(
            update_request(user.id, ["email", "username"], email=" Alice.New@Example.COM", username="Alice.B")
        )
    ).user

    assert (updated.email, updated.username) == ("alice.new@example.com", "alice.b")
    assert (await get_by(api, email="alice.new@example.com")).id == user.id
    assert (await get_by(api, username="alice.b")).id == user.id
    for lookup in ({"email": "alice@example.com"}, {"username": "alice"}):
        await expect_error(api.users.GetUser(user_pb2.GetUserRequest(**lookup)), NOT_FOUND, "USER_NOT_FOUND")
    assert await login_outcome(api, "ALICE.NEW@example.com") == SUCCESS
    assert await login_outcome(api, "alice.b") == SUCCESS
    # The old email and username are free again.
    await create_user(api, "alice")


async def test_update_status_disables_and_reenables(api):
    user = await create_user(api, "alice")
    disabled = (
        await api.users.UpdateUser(update_request(user.id, ["status"], status=user_pb2.USER_STATUS_DISABLED))
    ).user
    assert disabled.status == user_pb2.USER_STATUS_DISABLED
    assert await login_outcome(api, "alice") == user_pb2.AUTHENTICATE_OUTCOME_DISABLED

    active = (await api.users.UpdateUser(update_request(user.id, ["status"], status=user_pb2.USER_STATUS_ACTIVE))).user
    assert active.status == user_pb2.USER_STATUS_ACTIVE
    assert await login_outcome(api, "alice") == SUCCESS

    everything = update_request(
        user.id,
        ["display_name", "email", "username", "status"],
        display_name="A",
        email="a@example.org",
        username="aaa",
        status=user_pb2.USER_STATUS_DISABLED,
    )
    updated = (await api.users.UpdateUser(everything)).user
    assert (updated.display_name, updated.email, updated.username, updated.status) == (
        "A",
        "a@example.org",
        "aaa",
        user_pb2.USER_STATUS_DISABLED,
    )


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
        (["display_name"], {"display_name": "nul\x00"}, "user.display_name"),
        (["email"], {"email": ""}, "user.email"),
        (["email"], {"email": "x" * 10_000}, "user.email"),
        (["email"], {"email": "not-an-email"}, "user.email"),
        (["username"], {"username": ""}, "user.username"),
        (["username"], {"username": "bob'; DROP TABLE users;--"}, "user.username"),
    ],
    ids=case_id,
)
async def test_update_user_rejects_bad_input_and_changes_nothing(api, paths, fields, violated):
    user = await create_user(api, "alice")
    before = await db_state(api)
    assert await outcome(api.users.UpdateUser(update_request(user.id, paths, **fields))) == invalid(violated)
    assert await db_state(api) == before


@pytest.mark.parametrize("bad_id", ["", "not-a-uuid", "1' OR '1'='1", "x" * 10_000], ids=case_id)
async def test_update_user_rejects_a_bad_user_id(api, bad_id):
    await create_user(api, "alice")
    before = await db_state(api)
    result = await outcome(api.users.UpdateUser(update_request(bad_id, ["display_name"], display_name="x")))
    assert result == invalid("user.id")
    assert await db_state(api) == before


@pytest.mark.parametrize("bad_request_id", ["", "r" * 129], ids=case_id)
async def test_update_user_rejects_a_bad_request_id(api, bad_request_id):
    user = await create_user(api, "alice")
    before = await db_state(api)
    request = update_request(user.id, ["display_name"], bad_request_id, display_name="x")
    assert await outcome(api.users.UpdateUser(request)) == invalid("request_id")
    assert await db_state(api) == before


async def test_update_user_not_found_or_taken(api):
    alice = await create_user(api, "alice")
    bob = await create_user(api, "bob")
    gone = await create_user(api, "gone")
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=gone.id))
    before = await db_state(api)

    for user_id in (str(uuid.uuid4()), gone.id):
        await expect_error(
            api.users.UpdateUser(update_request(user_id, ["display_name"], display_name="x")),
            NOT_FOUND,
            "USER_NOT_FOUND",
        )
    await expect_error(
        api.users.UpdateUser(update_request(bob.id, ["email"], email="ALICE@example.com")), EXISTS, "EMAIL_TAKEN"
    )
    await expect_error(
        api.users.UpdateUser(update_request(bob.id, ["username"], username="Alice")), EXISTS, "USERNAME_TAKEN"
    )
    assert await db_state(api) == before
    assert (await get_by(api, id=alice.id)) == alice

    # Setting one's own email again is not a conflict.
    same = (await api.users.UpdateUser(update_request(bob.id, ["email"], email="BOB@example.com"))).user
    assert same.email == "bob@example.com"


# ---- DeleteUser ---------------------------------------------------------------------------------


async def test_delete_user_erases_and_frees_identity(api):
    user = await create_user(api, "alice")
    await api.users.UpdatePreferences(
        user_pb2.UpdatePreferencesRequest(
            request_id=rid(),
            preferences=user_pb2.Preferences(user_id=user.id, language="en"),
            update_mask=field_mask_pb2.FieldMask(paths=["language"]),
        )
    )

    deleted = (await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))).user

    assert deleted.id == user.id
    assert deleted.status == user_pb2.USER_STATUS_DELETED
    assert deleted.HasField("delete_time")
    assert (deleted.email, deleted.username, deleted.display_name) == ("", "", "")
    assert deleted.password_scheme == user_pb2.PASSWORD_SCHEME_UNSPECIFIED

    # It can no longer log in or be found.
    for login in ("alice", "alice@example.com"):
        assert await login_outcome(api, login) == user_pb2.AUTHENTICATE_OUTCOME_INVALID_CREDENTIALS
    for lookup in ({"id": user.id}, {"email": "alice@example.com"}, {"username": "alice"}):
        await expect_error(api.users.GetUser(user_pb2.GetUserRequest(**lookup)), NOT_FOUND, "USER_NOT_FOUND")
    await expect_error(
        api.users.GetPreferences(user_pb2.GetPreferencesRequest(user_id=user.id)), NOT_FOUND, "USER_NOT_FOUND"
    )

    # Personal data is erased in the database; the pseudonymous row and its audit trail stay.
    [row] = await sql(api, "SELECT * FROM users WHERE user_id = %s", (user.id,))
    assert (row["email"], row["username"], row["display_name"], row["password_hash"]) == (None, None, "", None)
    assert row["status"] == "deleted" and row["deleted_at"] is not None
    assert await sql(api, "SELECT * FROM user_preferences") == []
    actions = [
        r["action"]
        for r in await sql(
            api, "SELECT action FROM audit_events WHERE user_id = %s ORDER BY audit_event_id", (user.id,)
        )
    ]
    assert actions == ["users.CreateUser", "users.UpdatePreferences", "users.DeleteUser"]

    # The email and username can be registered again, by a new account.
    again = await create_user(api, "alice")
    assert again.id != user.id
    reply = await api.users.Authenticate(user_pb2.AuthenticateRequest(login="alice", password=PASSWORD))
    assert reply.user.id == again.id


async def test_delete_user_errors_and_replay(api):
    user = await create_user(api, "alice")
    request = user_pb2.DeleteUserRequest(request_id=rid(), id=user.id)
    first = await api.users.DeleteUser(request)
    state = await db_state(api)

    assert await api.users.DeleteUser(request) == first  # a replay returns the first answer
    for user_id in (user.id, str(uuid.uuid4())):  # a new request for a deleted or unknown user
        await expect_error(
            api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user_id)), NOT_FOUND, "USER_NOT_FOUND"
        )
    cases = [
        ("r1", "", "id"),
        ("r1", "not-a-uuid", "id"),
        ("r1", "'; DELETE FROM users;--", "id"),
        ("", user.id, "request_id"),
        ("r" * 129, user.id, "request_id"),
    ]
    for request_id, user_id, violated in cases:
        bad = user_pb2.DeleteUserRequest(request_id=request_id, id=user_id)
        assert await outcome(api.users.DeleteUser(bad)) == invalid(violated), (request_id[:10], user_id)
    assert await db_state(api) == state


# ---- Idempotency --------------------------------------------------------------------------------


async def test_create_user_replay_returns_same_user_once(api):
    request = create_request("alice")
    first = await api.users.CreateUser(request)
    state = await db_state(api)
    assert (len(state["users"]), len(state["audit_events"])) == (1, 1)

    assert await api.users.CreateUser(request) == first
    assert await db_state(api) == state


async def test_concurrent_replays_have_one_effect(api):
    request = create_request("alice")
    replies = await asyncio.gather(*(api.users.CreateUser(request) for _ in range(16)))

    assert all(reply == replies[0] for reply in replies)
    assert await user_count(api) == 1
    assert len(await sql(api, "SELECT 1 FROM audit_events WHERE action = 'users.CreateUser'")) == 1
    assert len(await sql(api, "SELECT 1 FROM idempotency_keys")) == 1


async def test_request_id_reused_with_other_parameters(api):
    request = create_request("alice")
    await api.users.CreateUser(request)
    state = await db_state(api)

    for other in (
        create_request("bob", request_id=request.request_id),
        create_request("alice", request_id=request.request_id, display_name="Someone Else"),
    ):
        await expect_error(api.users.CreateUser(other), EXISTS, "REQUEST_ID_REUSED")
    assert await db_state(api) == state

    # UpdateUser request_ids are scoped per user: one id may serve two users.
    bob = await create_user(api, "bob")
    user_ids = [(await get_by(api, username="alice")).id, bob.id]
    shared = rid()
    names = [
        (await api.users.UpdateUser(update_request(i, ["display_name"], shared, display_name=i[:4]))).user.display_name
        for i in user_ids
    ]
    assert names == [i[:4] for i in user_ids]


async def test_rejected_requests_leave_no_trace_and_can_be_retried(api):
    await create_user(api, "alice")

    # Invalid input, then corrected under the same request_id.
    request_id = rid()
    await expect_error(
        api.users.CreateUser(create_request("bob", request_id=request_id, email="bad")), INVALID, "INVALID_ARGUMENT"
    )
    assert await sql(api, "SELECT 1 FROM idempotency_keys WHERE request_id = %s", (request_id,)) == []
    assert (await api.users.CreateUser(create_request("bob", request_id=request_id))).user.username == "bob"

    # A taken email, then a free one under the same request_id.
    request_id = rid()
    await expect_error(
        api.users.CreateUser(create_request("carol", request_id=request_id, email="alice@example.com")),
        EXISTS,
        "EMAIL_TAKEN",
    )
    assert await sql(api, "SELECT 1 FROM idempotency_keys WHERE request_id = %s", (request_id,)) == []
    assert (await api.users.CreateUser(create_request("carol", request_id=request_id))).user.username == "carol"

    # An update of an unknown user, then of a real one under the same request_id.
    alice = await get_by(api, username="alice")
    request_id = rid()
    await expect_error(
        api.users.UpdateUser(update_request(str(uuid.uuid4()), ["display_name"], request_id, display_name="New")),
        NOT_FOUND,
        "USER_NOT_FOUND",
    )
    updated = await api.users.UpdateUser(update_request(alice.id, ["display_name"], request_id, display_name="New"))
    assert updated.user.display_name == "New"
    assert await user_count(api) == 3


async def test_update_replay_returns_first_answer_without_second_effect(api):
    user = await create_user(api, "alice")
    first_request = update_request(user.id, ["display_name"], display_name="First")
    first = await api.users.UpdateUser(first_request)
    second = await api.users.UpdateUser(update_request(user.id, ["display_name"], display_name="Second"))
    state = await db_state(api)

    assert await api.users.UpdateUser(first_request) == first  # the stored first answer
    assert await db_state(api) == state  # ... and the later change stands
    assert await get_by(api, id=user.id) == second.user
