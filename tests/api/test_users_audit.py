"""The audit trail of UserService over real gRPC and PostgreSQL.

Every mutation appends exactly one audit_events row (ImportUsers: one per imported user) in the
same transaction as the change; reads, replays and rejected requests append none; no password or
personal value ever reaches the trail; and the database itself refuses to change or remove a row.
"""

from __future__ import annotations

from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2

from qdata.v1 import user_pb2
from tests.api.test_users_import import django_hash, werkzeug_hash
from tests.support.calls import PASSWORD, create_user, expect_error, rid
from tests.support.database import sql
from tests.support.server import TEST_SETTINGS, serving

NEW_PASSWORD = "zq-brand-new-passphrase-77"
LEGACY_PASSWORD = "zq-legacy-passphrase-55"


# ---- helpers ------------------------------------------------------------------------------------


async def audit_rows(api) -> list[dict[str, Any]]:
    return await sql(api, "SELECT * FROM audit_events ORDER BY audit_event_id")


async def new_events(api, method, request) -> list[dict[str, Any]]:
    """Calls method(request) and returns the audit events it appended.

    The call is made only after counting: a grpc.aio call starts as soon as it is created.
    """
    before = len(await audit_rows(api))
    await method(request)
    return (await audit_rows(api))[before:]


def brief(event: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """(action, target_type, target_id, user_id, request_id) of an audit event."""
    return (event["action"], event["target_type"], event["target_id"], str(event["user_id"]), event["request_id"])


def update_user(user_id: str, request_id: str, paths: list[str], **fields: Any) -> user_pb2.UpdateUserRequest:
    return user_pb2.UpdateUserRequest(
        request_id=request_id,
        user=user_pb2.User(id=user_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )


def update_prefs(user_id: str, request_id: str, **fields: Any) -> user_pb2.UpdatePreferencesRequest:
    return user_pb2.UpdatePreferencesRequest(
        request_id=request_id,
        preferences=user_pb2.Preferences(user_id=user_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=sorted(fields)),
    )


def change_password(user_id: str, request_id: str, current: str = PASSWORD, new: str = NEW_PASSWORD):
    return user_pb2.ChangePasswordRequest(
        request_id=request_id, user_id=user_id, current_password=current, new_password=new
    )


# ---- tests --------------------------------------------------------------------------------------


async def test_each_mutation_appends_one_event(api):
    users = api.users
    request = user_pb2.CreateUserRequest(
        request_id=rid(), email="alice@example.com", username="alice", display_name="Alice", password=PASSWORD
    )
    [event] = await new_events(api, users.CreateUser, request)
    user_id = (await users.GetUser(user_pb2.GetUserRequest(username="alice"))).user.id
    assert brief(event) == ("users.CreateUser", "user", user_id, user_id, request.request_id)
    assert event["actor"] and event["occurred_at"] is not None

    request = update_user(user_id, rid(), ["display_name"], display_name="Al")
    [event] = await new_events(api, users.UpdateUser, request)
    assert brief(event) == ("users.UpdateUser", "user", user_id, user_id, request.request_id)
    assert event["summary"] == {"fields": ["display_name"]}

    request = update_user(user_id, rid(), ["status"], status=user_pb2.USER_STATUS_DISABLED)
    [event] = await new_events(api, users.UpdateUser, request)
    assert brief(event) == ("users.UpdateUser", "user", user_id, user_id, request.request_id)
    assert event["summary"] == {"fields": ["status"], "status": "disabled"}
    await users.UpdateUser(update_user(user_id, rid(), ["status"], status=user_pb2.USER_STATUS_ACTIVE))

    request = update_prefs(user_id, rid(), language="en")
    [event] = await new_events(api, users.UpdatePreferences, request)
    assert brief(event) == ("users.UpdatePreferences", "preferences", user_id, user_id, request.request_id)

    request = change_password(user_id, rid())
    [event] = await new_events(api, users.ChangePassword, request)
    assert brief(event) == ("users.ChangePassword", "user", user_id, user_id, request.request_id)

    request = user_pb2.DeleteUserRequest(request_id=rid(), id=user_id)
    [event] = await new_events(api, users.DeleteUser, request)
    assert brief(event) == ("users.DeleteUser", "user", user_id, user_id, request.request_id)

    request_id = rid()
    imported = user_pb2.ImportUsersRequest(
        request_id=request_id,
        users=[
            user_pb2.ImportedUser(email="w@example.com", username="wendy", legacy_password_hash=werkzeug_hash("pw")),
            user_pb2.ImportedUser(email="bad", username="bad", legacy_password_hash=werkzeug_hash("pw")),
            user_pb2.ImportedUser(email="d@example.com", username="django", legacy_password_hash=django_hash("pw")),
        ],
    )
    reply = await api.users.ImportUsers(imported)
    events = (await audit_rows(api))[-2:]
    assert [brief(e) for e in events] == [
        ("users.ImportUsers", "user", r.user.id, r.user.id, request_id) for r in reply.results if r.HasField("user")
    ]
    assert [e["summary"] for e in events] == [{"scheme": "werkzeug"}, {"scheme": "django"}]


async def test_reads_replays_and_rejections_append_nothing(api):
    user = await create_user(api, "alice")
    create = user_pb2.CreateUserRequest(request_id=rid(), email="bob@example.com", username="bob", password=PASSWORD)
    update = update_user(user.id, rid(), ["display_name"], display_name="Al")
    prefs = update_prefs(user.id, rid(), theme=user_pb2.THEME_DARK)
    await api.users.CreateUser(create)
    await api.users.UpdateUser(update)
    await api.users.UpdatePreferences(prefs)
    before = await audit_rows(api)

    # Reads and a plain successful login (no rehash needed).
    await api.users.GetUser(user_pb2.GetUserRequest(id=user.id))
    await api.users.ListUsers(user_pb2.ListUsersRequest())
    await api.users.GetPreferences(user_pb2.GetPreferencesRequest(user_id=user.id))
    await api.users.Authenticate(user_pb2.AuthenticateRequest(login="alice", password=PASSWORD))
    await api.users.Authenticate(user_pb2.AuthenticateRequest(login="nobody", password=PASSWORD))
    # Replays.
    await api.users.CreateUser(create)
    await api.users.UpdateUser(update)
    await api.users.UpdatePreferences(prefs)
    # Rejections of every kind.
    await expect_error(
        api.users.CreateUser(
            user_pb2.CreateUserRequest(
                request_id=rid(), email="ALICE@example.com", username="alice2", password=PASSWORD
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "EMAIL_TAKEN",
    )
    await expect_error(
        api.users.CreateUser(user_pb2.CreateUserRequest(request_id=rid(), email="x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await expect_error(
        api.users.UpdateUser(update_user(user.id, update.request_id, ["display_name"], display_name="Other")),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )
    await expect_error(
        api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id="00000000-0000-4000-8000-000000000000")),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    await expect_error(
        api.users.ChangePassword(change_password(user.id, rid(), current="wrong password")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "WRONG_PASSWORD",
    )
    assert await audit_rows(api) == before


async def test_login_audits_rehash_and_lock(api):
    user = await create_user(api, "alice")
    right = user_pb2.AuthenticateRequest(login="alice", password=PASSWORD)
    wrong = user_pb2.AuthenticateRequest(login="alice", password="wrong password")
    async with serving(api.database_url, bcrypt_cost=5) as stronger:
        [event] = await new_events(stronger, stronger.users.Authenticate, right)
    assert brief(event) == ("users.Authenticate", "user", user.id, user.id, "")  # Authenticate has no request_id
    assert event["summary"] == {"password_rehashed": True}

    for _ in range(TEST_SETTINGS.lockout_threshold - 1):
        assert await new_events(api, api.users.Authenticate, wrong) == []
    [event] = await new_events(api, api.users.Authenticate, wrong)
    assert brief(event) == ("users.AccountLocked", "user", user.id, user.id, "")
    assert event["summary"]["failed_login_count"] == TEST_SETTINGS.lockout_threshold
    # Attempts while locked add nothing.
    assert await new_events(api, api.users.Authenticate, wrong) == []


async def test_mutation_fails_whole_when_its_audit_event_cannot_be_written(api):
    user = await create_user(api, "alice")
    await sql(
        api,
        """
        CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'audit refused by the test'; END; $$;
        CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_audit();
    """,
    )
    tables = ("users", "user_preferences", "audit_events", "idempotency_keys")

    async def snapshot() -> list[list[dict[str, Any]]]:
        return [await sql(api, f"SELECT * FROM {table} ORDER BY 1") for table in tables]

    requests = [
        (
            "CreateUser",
            user_pb2.CreateUserRequest(request_id=rid(), email="bob@example.com", username="bob", password=PASSWORD),
        ),
        ("UpdateUser", update_user(user.id, rid(), ["display_name"], display_name="Al")),
        ("UpdatePreferences", update_prefs(user.id, rid(), language="en")),
        ("ChangePassword", change_password(user.id, rid())),
        (
            "ImportUsers",
            user_pb2.ImportUsersRequest(
                request_id=rid(),
                users=[
                    user_pb2.ImportedUser(
                        email="w@example.com", username="wendy", legacy_password_hash=werkzeug_hash("pw")
                    )
                ],
            ),
        ),
        ("DeleteUser", user_pb2.DeleteUserRequest(request_id=rid(), id=user.id)),
    ]
    before = await snapshot()
    for method, request in requests:
        await expect_error(getattr(api.users, method)(request), grpc.StatusCode.INTERNAL)
        assert await snapshot() == before, method

    # Nothing was half-done: with the audit writable again, the same requests all go through.
    await sql(api, "DROP TRIGGER refuse_audit ON audit_events")
    for method, request in requests:
        await getattr(api.users, method)(request)
    assert [e["action"] for e in await audit_rows(api)][1:] == [f"users.{m}" for m, _ in requests]


async def test_audit_trail_holds_no_password_or_personal_text(api):
    secrets = [PASSWORD, NEW_PASSWORD, LEGACY_PASSWORD]
    personal = [
        "zq-alice@example.com",
        "zq-alice",
        "Zq Alice Secretname",
        "zq-renamed@example.com",
        "zq-renamed",
        "Zq Renamed Person",
        "zq-legacy@example.com",
        "zq-legacyuser",
        "Zq Legacy Person",
        "zq-pref-value",
    ]
    legacy_hash = werkzeug_hash(LEGACY_PASSWORD)

    user = (
        await api.users.CreateUser(
            user_pb2.CreateUserRequest(
                request_id=rid(), email=personal[0], username=personal[1], display_name=personal[2], password=PASSWORD
            )
        )
    ).user
    await api.users.UpdateUser(
        update_user(
            user.id,
            rid(),
            ["email", "username", "display_name"],
            email=personal[3],
            username=personal[4],
            display_name=personal[5],
        )
    )
    await api.users.UpdatePreferences(update_prefs(user.id, rid(), extra={"k": personal[9]}))
    await api.users.ChangePassword(change_password(user.id, rid(), PASSWORD, NEW_PASSWORD))
    for password in ("wrong 1", "wrong 2", "wrong 3"):  # lock the account: an AccountLocked event
        await api.users.Authenticate(user_pb2.AuthenticateRequest(login=personal[4], password=password))
    await api.users.ImportUsers(
        user_pb2.ImportUsersRequest(
            request_id=rid(),
            users=[
                user_pb2.ImportedUser(
                    email=personal[6], username=personal[7], display_name=personal[8], legacy_password_hash=legacy_hash
                )
            ],
        )
    )
    await api.users.Authenticate(user_pb2.AuthenticateRequest(login=personal[7], password=LEGACY_PASSWORD))
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))

    trail = [r["row"] for r in await sql(api, "SELECT row_to_json(a)::text AS row FROM audit_events a")]
    assert len(trail) >= 7
    text = "\n".join(trail).lower()
    for value in [*secrets, *personal, legacy_hash, legacy_hash.split("$")[-1]]:
        assert value.lower() not in text, value
    # Idempotency records keep the response (which may name the user) but never a password.
    stored = b"".join(
        bytes(r["request_hash"]) + bytes(r["response"])
        for r in await sql(api, "SELECT request_hash, response FROM idempotency_keys")
    )
    for secret in secrets:
        assert secret.encode() not in stored, secret


async def test_audit_table_is_append_only(api):
    await create_user(api, "alice")
    await create_user(api, "bob")
    before = await audit_rows(api)
    assert len(before) == 2

    for statement in (
        "UPDATE audit_events SET action = 'users.Nothing'",
        "UPDATE audit_events SET summary = '{}'::jsonb WHERE audit_event_id = 1",
        "DELETE FROM audit_events",
        "DELETE FROM audit_events WHERE audit_event_id = 1",
        "TRUNCATE audit_events",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
            await sql(api, statement)
        assert raised.value.diag.constraint_name == "audit_events_append_only", statement
        assert await audit_rows(api) == before, statement

    # Appending still works.
    await create_user(api, "carol")
    after = await audit_rows(api)
    assert after[:2] == before and len(after) == 3
