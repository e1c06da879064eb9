"""UserService.ImportUsers over real gRPC and PostgreSQL: legacy PBKDF2 hashes in Werkzeug and
Django format, verified at login and upgraded to bcrypt, with per-user failures and idempotency.

The legacy hashes are built here with hashlib exactly as Werkzeug and Django build them.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import grpc
import pytest

from qdata.v1 import user_pb2
from tests.support.calls import create_user, expect_error, field_violations, rid
from tests.support.database import sql, table_rows

LEGACY_PASSWORD = "hunter2-from-the-old-days"
ITERATIONS = 1_000  # the lowest accepted cost keeps the suite fast
SUCCESS = user_pb2.AUTHENTICATE_OUTCOME_SUCCESS
INVALID_CREDENTIALS = user_pb2.AUTHENTICATE_OUTCOME_INVALID_CREDENTIALS


# ---- helpers ------------------------------------------------------------------------------------


def werkzeug_hash(password: str, iterations: int = ITERATIONS, salt: str = "wZ3kQ9xYp2Lm7Rt1") -> str:
    """werkzeug.security.generate_password_hash(password, "pbkdf2:sha256:ITER")."""
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2:sha256:{iterations}${salt}${digest.hex()}"


def django_hash(password: str, iterations: int = ITERATIONS, salt: str = "dJ4nGoSaltValue01") -> str:
    """django.contrib.auth.hashers.PBKDF2PasswordHasher().encode(password, salt, iterations)."""
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


def legacy(name: str, password_hash: str | None = None, **fields: Any) -> user_pb2.ImportedUser:
    values = {
        "email": f"{name}@example.com",
        "username": name,
        "display_name": name.title(),
        "legacy_password_hash": werkzeug_hash(LEGACY_PASSWORD) if password_hash is None else password_hash,
    }
    values.update(fields)
    return user_pb2.ImportedUser(**values)


def import_request(*users: user_pb2.ImportedUser, request_id: str | None = None) -> user_pb2.ImportUsersRequest:
    return user_pb2.ImportUsersRequest(request_id=rid() if request_id is None else request_id, users=users)


STATE_TABLES = ("users", "audit_events", "idempotency_keys")


async def db_state(api) -> dict[str, Any]:
    return await table_rows(api, *STATE_TABLES)


async def stored_hash(api, username: str) -> str:
    [row] = await sql(api, "SELECT password_hash FROM users WHERE username = %s", (username,))
    return row["password_hash"]


async def auth(api, login: str, password: str = LEGACY_PASSWORD) -> user_pb2.AuthenticateResponse:
    return await api.users.Authenticate(user_pb2.AuthenticateRequest(login=login, password=password))


def summary(result: user_pb2.ImportUserResult) -> tuple[int, str, list[str]]:
    """(index, error_reason, error_fields) of one result."""
    return result.index, result.error_reason, list(result.error_fields)


# ---- tests --------------------------------------------------------------------------------------


async def test_import_werkzeug_and_django_users(api):
    reply = await api.users.ImportUsers(
        import_request(
            legacy("wendy", werkzeug_hash(LEGACY_PASSWORD), email="Wendy@Example.COM"),
            legacy("django", django_hash(LEGACY_PASSWORD)),
            legacy("dora", django_hash(LEGACY_PASSWORD), status=user_pb2.USER_STATUS_DISABLED),
        )
    )

    assert (reply.imported_count, reply.failed_count) == (3, 0)
    assert [summary(r) for r in reply.results] == [(0, "", []), (1, "", []), (2, "", [])]
    wendy, django, dora = (r.user for r in reply.results)
    assert (wendy.email, wendy.username, wendy.display_name) == ("wendy@example.com", "wendy", "Wendy")
    assert wendy.password_scheme == user_pb2.PASSWORD_SCHEME_LEGACY_WERKZEUG
    assert django.password_scheme == user_pb2.PASSWORD_SCHEME_LEGACY_DJANGO
    assert (wendy.status, dora.status) == (user_pb2.USER_STATUS_ACTIVE, user_pb2.USER_STATUS_DISABLED)
    got = (await api.users.GetUser(user_pb2.GetUserRequest(username="django"))).user
    assert got == django
    assert await stored_hash(api, "wendy") == werkzeug_hash(LEGACY_PASSWORD)
    assert await stored_hash(api, "django") == django_hash(LEGACY_PASSWORD)


async def test_legacy_hash_is_upgraded_at_first_successful_login(api):
    await api.users.ImportUsers(
        import_request(
            legacy("wendy", werkzeug_hash(LEGACY_PASSWORD)),
            legacy("django", django_hash(LEGACY_PASSWORD)),
        )
    )

    for name, legacy_scheme in (
        ("wendy", user_pb2.PASSWORD_SCHEME_LEGACY_WERKZEUG),
        ("django", user_pb2.PASSWORD_SCHEME_LEGACY_DJANGO),
    ):
        before = await stored_hash(api, name)
        # A wrong password fails and leaves the legacy hash in place.
        assert (await auth(api, name, "not-" + LEGACY_PASSWORD)).outcome == INVALID_CREDENTIALS
        assert await stored_hash(api, name) == before
        got = (await api.users.GetUser(user_pb2.GetUserRequest(username=name))).user
        assert got.password_scheme == legacy_scheme

        reply = await auth(api, f"{name}@example.com")
        assert reply.outcome == SUCCESS, name
        assert reply.user.password_scheme == user_pb2.PASSWORD_SCHEME_BCRYPT
        got = (await api.users.GetUser(user_pb2.GetUserRequest(username=name))).user
        assert got.password_scheme == user_pb2.PASSWORD_SCHEME_BCRYPT
        assert (await stored_hash(api, name)).startswith("bcrypt-hmac-sha256$$2b$04$")

        # The upgraded hash verifies the same password, and only it.
        assert (await auth(api, name)).outcome == SUCCESS
        assert (await auth(api, name, "not-" + LEGACY_PASSWORD)).outcome == INVALID_CREDENTIALS


async def test_imported_disabled_user_cannot_log_in(api):
    await api.users.ImportUsers(import_request(legacy("dora", status=user_pb2.USER_STATUS_DISABLED)))
    assert (await auth(api, "dora")).outcome == user_pb2.AUTHENTICATE_OUTCOME_DISABLED
    assert (await auth(api, "dora", "wrong")).outcome == INVALID_CREDENTIALS
    assert not (await stored_hash(api, "dora")).startswith("bcrypt")  # no upgrade without a login


async def test_import_reports_failures_per_user(api):
    await create_user(api, "existing")
    good_hash = werkzeug_hash(LEGACY_PASSWORD)
    users = [
        legacy("good0"),
        legacy("badformat", "md5$abc$def"),
        legacy("sha1", "pbkdf2:sha1:1000$salt$" + "ab" * 20),
        legacy("low", werkzeug_hash(LEGACY_PASSWORD, iterations=999)),
        legacy("high", django_hash(LEGACY_PASSWORD, iterations=1).replace("$1$", "$2000001$")),
        legacy("dupe", email="EXISTING@example.com"),
        legacy("existing", email="fresh@example.com"),
        legacy("bademail", email="not-an-email"),
        legacy("bob'; DROP TABLE users;--"),
        legacy("good1", django_hash(LEGACY_PASSWORD)),
        legacy("twin", email="good1@example.com"),
        legacy("emptyhash", ""),
        legacy("oddhex", good_hash[:-1]),
        legacy("nulsalt", werkzeug_hash(LEGACY_PASSWORD, salt="sa\x00lt")),
        legacy("deleted", status=user_pb2.USER_STATUS_DELETED),
        legacy("longname", display_name="x" * 300),
    ]
    reply = await api.users.ImportUsers(import_request(*users))

    assert [summary(r) for r in reply.results] == [
        (0, "", []),
        (1, "INVALID_ARGUMENT", ["legacy_password_hash"]),
        (2, "INVALID_ARGUMENT", ["legacy_password_hash"]),
        (3, "INVALID_ARGUMENT", ["legacy_password_hash"]),
        (4, "INVALID_ARGUMENT", ["legacy_password_hash"]),
        (5, "EMAIL_TAKEN", ["email"]),
        (6, "USERNAME_TAKEN", ["username"]),
        (7, "INVALID_ARGUMENT", ["email"]),
        (8, "INVALID_ARGUMENT", ["email", "username"]),
        (9, "", []),
        (10, "EMAIL_TAKEN", ["email"]),
        (11, "INVALID_ARGUMENT", ["legacy_password_hash"]),
        (12, "INVALID_ARGUMENT", ["legacy_password_hash"]),
        (13, "INVALID_ARGUMENT", ["legacy_password_hash"]),
        (14, "INVALID_ARGUMENT", ["status"]),
        (15, "INVALID_ARGUMENT", ["display_name"]),
    ]
    assert (reply.imported_count, reply.failed_count) == (2, 14)
    for result in reply.results:
        assert result.HasField("user") == (result.error_reason == "")
        assert bool(result.error_message) == (result.error_reason != "")
        assert LEGACY_PASSWORD not in result.error_message
    assert "iterations" in reply.results[3].error_message
    usernames = [r["username"] for r in await sql(api, "SELECT username FROM users ORDER BY username")]
    assert usernames == ["existing", "good0", "good1"]
    assert (await auth(api, "good0")).outcome == SUCCESS


async def test_iteration_bounds_are_inclusive(api):
    reply = await api.users.ImportUsers(
        import_request(
            legacy("lowest", werkzeug_hash(LEGACY_PASSWORD, iterations=1_000)),
            # Built with 1 iteration and relabelled: only the parser's bound is under test here.
            legacy("highest", werkzeug_hash(LEGACY_PASSWORD, iterations=1).replace(":1$", ":2000000$")),
        )
    )
    assert [summary(r) for r in reply.results] == [(0, "", []), (1, "", [])]


async def test_import_replay_is_idempotent(api):
    request = import_request(legacy("wendy"), legacy("django", django_hash(LEGACY_PASSWORD)), legacy("bad", "x"))
    first = await api.users.ImportUsers(request)
    assert (first.imported_count, first.failed_count) == (2, 1)
    state = await db_state(api)

    assert await api.users.ImportUsers(request) == first
    assert await db_state(api) == state

    other = import_request(legacy("someone"), request_id=request.request_id)
    await expect_error(api.users.ImportUsers(other), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert await db_state(api) == state

    # A new request with the same users imports nobody twice.
    again = await api.users.ImportUsers(import_request(*request.users))
    assert [r.error_reason for r in again.results] == ["EMAIL_TAKEN", "EMAIL_TAKEN", "INVALID_ARGUMENT"]
    assert len(await sql(api, "SELECT 1 FROM users")) == 2


@pytest.mark.parametrize(
    ("request_of", "field"),
    [
        pytest.param(lambda: import_request(), "users", id="no users"),
        pytest.param(lambda: import_request(*(legacy(f"user{i:04d}") for i in range(1001))), "users", id="1001 users"),
        pytest.param(lambda: import_request(legacy("wendy"), request_id=""), "request_id", id="no request_id"),
        pytest.param(lambda: import_request(legacy("wendy"), request_id="r" * 129), "request_id", id="long request_id"),
    ],
)
async def test_malformed_import_request_is_rejected_whole(api, request_of, field):
    before = await db_state(api)
    error = await expect_error(
        api.users.ImportUsers(request_of()), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    assert set(field_violations(error)) == {field}
    assert await db_state(api) == before


async def test_import_of_a_thousand_users(api):
    users = [legacy(f"user{i:04d}") for i in range(1000)]
    reply = await api.users.ImportUsers(import_request(*users))
    assert (reply.imported_count, reply.failed_count) == (1000, 0)
    assert [r.index for r in reply.results] == list(range(1000))
    assert len(await sql(api, "SELECT 1 FROM users")) == 1000
