"""UserService login over real gRPC and PostgreSQL: Authenticate, the lockout, ChangePassword and
the properties of the stored password hashes (pre-hash, cost upgrade, pepper).

TEST_SETTINGS lock an account for 60 seconds after 3 consecutive failures at bcrypt cost 4.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from typing import Any

import grpc
import pytest

from qdata.v1 import user_pb2
from tests.support.calls import PASSWORD, case_id, create_user, error_info, expect_error, field_violations, rid
from tests.support.database import sql
from tests.support.server import TEST_SETTINGS, serving

SUCCESS = user_pb2.AUTHENTICATE_OUTCOME_SUCCESS
INVALID_CREDENTIALS = user_pb2.AUTHENTICATE_OUTCOME_INVALID_CREDENTIALS
LOCKED = user_pb2.AUTHENTICATE_OUTCOME_LOCKED
DISABLED = user_pb2.AUTHENTICATE_OUTCOME_DISABLED
WRONG = "not the password at all"
THRESHOLD = TEST_SETTINGS.lockout_threshold
PREFIX = "bcrypt-hmac-sha256$"


# ---- helpers ------------------------------------------------------------------------------------


async def user_row(api, user_id: str) -> dict[str, Any]:
    [row] = await sql(api, "SELECT * FROM users WHERE user_id = %s", (user_id,))
    return row


async def set_status(api, user_id: str, status: int) -> None:
    await api.users.UpdateUser(
        user_pb2.UpdateUserRequest(
            request_id=rid(), user=user_pb2.User(id=user_id, status=status), update_mask={"paths": ["status"]}
        )
    )


async def age_failures(api, seconds: float) -> None:
    """Moves every counted failure and lock `seconds` into the past, as if that much time passed."""
    shift = {"s": seconds}
    await sql(
        api,
        "UPDATE users SET failed_login_at = failed_login_at - make_interval(secs => %(s)s),"
        " locked_until = locked_until - make_interval(secs => %(s)s)",
        shift,
    )
    await sql(
        api,
        "UPDATE unknown_login_failures SET failed_at = failed_at - make_interval(secs => %(s)s),"
        " locked_until = locked_until - make_interval(secs => %(s)s)",
        shift,
    )


async def auth(api, login: str, password: str = PASSWORD) -> user_pb2.AuthenticateResponse:
    return await api.users.Authenticate(user_pb2.AuthenticateRequest(login=login, password=password))


async def outcomes(api, login: str, passwords: list[str]) -> list[int]:
    """The outcomes of logging in with each password in turn."""
    return [(await auth(api, login, p)).outcome for p in passwords]


async def invalid_fields(call) -> set[str]:
    """Asserts INVALID_ARGUMENT (reason INVALID_ARGUMENT) and returns the violated fields."""
    return set(field_violations(await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")))


def change(user_id: str, current: str, new: str, request_id: str | None = None) -> user_pb2.ChangePasswordRequest:
    return user_pb2.ChangePasswordRequest(
        request_id=rid() if request_id is None else request_id,
        user_id=user_id,
        current_password=current,
        new_password=new,
    )


def seconds_from_now(ts) -> float:
    return (ts.ToDatetime(tzinfo=datetime.UTC) - datetime.datetime.now(datetime.UTC)).total_seconds()


def bcrypt_cost(stored: str) -> int:
    """The cost field of a stored "bcrypt-hmac-sha256$$2b$NN$..." hash."""
    assert stored.startswith(PREFIX), stored[:30]
    return int(stored[len(PREFIX) :].split("$")[2])


# ---- Authenticate -------------------------------------------------------------------------------


async def test_authenticate_by_email_or_username_records_login(api):
    user = await create_user(api, "alice")
    for login in ("alice", "ALICE", " alice ", "alice@example.com", " Alice@Example.COM "):
        reply = await auth(api, login)
        assert reply.outcome == SUCCESS, login
        assert reply.user.id == user.id
        assert not reply.HasField("locked_until_time")

    assert reply.user.HasField("last_login_time")
    assert abs(seconds_from_now(reply.user.last_login_time)) < 60
    got = (await api.users.GetUser(user_pb2.GetUserRequest(id=user.id))).user
    assert got.last_login_time == reply.user.last_login_time
    row = await user_row(api, user.id)
    assert row["last_login_at"] is not None and row["failed_login_count"] == 0


async def test_wrong_password_and_unknown_user_get_the_same_answer(api):
    await create_user(api, "alice")
    wrong = await auth(api, "alice", WRONG)
    assert wrong.outcome == INVALID_CREDENTIALS
    assert not wrong.HasField("user") and not wrong.HasField("locked_until_time")

    hostile = ["bob", "bob@example.com", "' OR '1'='1", "alice' --", "%", "alice%", "_lice", "*"]
    for login in hostile:
        assert await auth(api, login) == wrong, login
    # Unknown logins count against nobody; alice's count holds only her own failure.
    assert [r["failed_login_count"] for r in await sql(api, "SELECT failed_login_count FROM users")] == [1]


@pytest.mark.parametrize(
    ("login", "password", "fields"),
    [
        ("", PASSWORD, {"login"}),
        ("   ", PASSWORD, {"login"}),
        ("x" * 10_000, PASSWORD, {"login"}),
        ("al\x00ice", PASSWORD, {"login"}),
        ("al\x00ice@example.com", PASSWORD, {"login"}),
        ("alice\x1b[31m", PASSWORD, {"login"}),
        ("alice", "", {"password"}),
        ("alice", "x" * 1025, {"password"}),
        ("", "", {"login", "password"}),
    ],
    ids=case_id,
)
async def test_authenticate_rejects_malformed_input(api, login, password, fields):
    user = await create_user(api, "alice")
    before = await user_row(api, user.id)
    request = user_pb2.AuthenticateRequest(login=login, password=password)
    assert await invalid_fields(api.users.Authenticate(request)) == fields
    assert await user_row(api, user.id) == before  # not even counted as failures


async def test_lockout_after_consecutive_failures(api):
    user = await create_user(api, "alice")
    assert await outcomes(api, "alice", [WRONG] * THRESHOLD) == [INVALID_CREDENTIALS] * THRESHOLD

    for login, password in (("alice", PASSWORD), ("alice@example.com", PASSWORD), ("alice", WRONG)):
        reply = await auth(api, login, password)
        assert reply.outcome == LOCKED, (login, password)  # even the right password
        assert not reply.HasField("user")
        assert 50 < seconds_from_now(reply.locked_until_time) <= 61

    got = (await api.users.GetUser(user_pb2.GetUserRequest(id=user.id))).user
    assert got.locked_until_time == reply.locked_until_time
    row = await user_row(api, user.id)
    assert row["failed_login_count"] == THRESHOLD and row["last_login_at"] is None


async def test_success_before_threshold_resets_the_count(api):
    user = await create_user(api, "alice")
    below = [WRONG] * (THRESHOLD - 1)
    assert await outcomes(api, "alice", [*below, PASSWORD]) == [INVALID_CREDENTIALS] * (THRESHOLD - 1) + [SUCCESS]
    assert (await user_row(api, user.id))["failed_login_count"] == 0
    assert await outcomes(api, "alice", [*below, PASSWORD]) == [INVALID_CREDENTIALS] * (THRESHOLD - 1) + [SUCCESS]
    assert (await user_row(api, user.id))["locked_until"] is None


async def test_expired_lock_allows_login_and_restarts_the_count(api):
    user = await create_user(api, "alice")
    await outcomes(api, "alice", [WRONG] * THRESHOLD)
    assert (await auth(api, "alice")).outcome == LOCKED

    expire = "UPDATE users SET locked_until = now() - interval '1 second' WHERE user_id = %s"
    await sql(api, expire, (user.id,))
    reply = await auth(api, "alice")
    assert reply.outcome == SUCCESS
    assert not reply.user.HasField("locked_until_time")
    row = await user_row(api, user.id)
    assert (row["failed_login_count"], row["locked_until"]) == (0, None)

    # After an expired lock, a failure starts a new count rather than locking again at once.
    await outcomes(api, "alice", [WRONG] * THRESHOLD)
    await sql(api, expire, (user.id,))
    below = [WRONG] * (THRESHOLD - 1)
    assert await outcomes(api, "alice", [*below, PASSWORD]) == [INVALID_CREDENTIALS] * (THRESHOLD - 1) + [SUCCESS]


async def test_disabled_user_cannot_log_in(api):
    user = await create_user(api, "alice")
    await api.users.UpdateUser(
        user_pb2.UpdateUserRequest(
            request_id=rid(),
            user=user_pb2.User(id=user.id, status=user_pb2.USER_STATUS_DISABLED),
            update_mask={"paths": ["status"]},
        )
    )

    right = await auth(api, "alice")
    assert right.outcome == DISABLED and not right.HasField("user")
    assert (await auth(api, "alice", WRONG)).outcome == INVALID_CREDENTIALS
    assert (await user_row(api, user.id))["last_login_at"] is None


async def test_parallel_wrong_guesses_check_at_most_the_threshold(api):
    user = await create_user(api, "alice")
    replies = await asyncio.gather(*(auth(api, "alice", f"{WRONG} {i}") for i in range(20)))
    answers = [r.outcome for r in replies]

    # Exactly THRESHOLD attempts were counted, so checked; every other one was refused unchecked.
    assert answers.count(INVALID_CREDENTIALS) == THRESHOLD
    assert answers.count(LOCKED) == 20 - THRESHOLD
    row = await user_row(api, user.id)
    assert row["failed_login_count"] == THRESHOLD and row["locked_until"] is not None
    assert (await auth(api, "alice")).outcome == LOCKED  # the right password after them too


async def test_disabled_account_right_password_never_locks(api):
    user = await create_user(api, "alice")
    await set_status(api, user.id, user_pb2.USER_STATUS_DISABLED)

    # A right password is not a failure: it answers DISABLED however often it is given.
    assert await outcomes(api, "alice", [PASSWORD] * (2 * THRESHOLD)) == [DISABLED] * (2 * THRESHOLD)
    # It clears the failures before it, as a successful login does.
    below = [WRONG] * (THRESHOLD - 1)
    assert await outcomes(api, "alice", [*below, PASSWORD, *below, PASSWORD]) == [
        *[INVALID_CREDENTIALS] * (THRESHOLD - 1),
        DISABLED,
        *[INVALID_CREDENTIALS] * (THRESHOLD - 1),
        DISABLED,
    ]
    row = await user_row(api, user.id)
    assert (row["failed_login_count"], row["locked_until"], row["last_login_at"]) == (0, None, None)

    await set_status(api, user.id, user_pb2.USER_STATUS_ACTIVE)
    assert (await auth(api, "alice")).outcome == SUCCESS


async def test_disabled_account_still_locks_after_wrong_passwords(api):
    user = await create_user(api, "alice")
    await set_status(api, user.id, user_pb2.USER_STATUS_DISABLED)
    assert await outcomes(api, "alice", [WRONG] * THRESHOLD) == [INVALID_CREDENTIALS] * THRESHOLD
    # Guessing a disabled account's password is limited like any other.
    assert (await auth(api, "alice")).outcome == LOCKED


async def test_unknown_and_real_logins_answer_the_same_sequence(api):
    await create_user(api, "alice")
    attempts = THRESHOLD + 3

    def observed(reply: user_pb2.AuthenticateResponse) -> tuple[int, bool, bool]:
        locked_for = seconds_from_now(reply.locked_until_time) if reply.HasField("locked_until_time") else None
        return reply.outcome, reply.HasField("user"), locked_for is not None and 50 < locked_for <= 61

    sequences = {}
    for login in ("alice", "bob", "carol@example.com"):
        sequences[login] = [observed(await auth(api, login, f"{WRONG} {i}")) for i in range(attempts)]
    expected = [(INVALID_CREDENTIALS, False, False)] * THRESHOLD + [(LOCKED, False, True)] * (attempts - THRESHOLD)
    assert sequences == {"alice": expected, "bob": expected, "carol@example.com": expected}

    # Other spellings of a login share its count, for a real login and an unknown one alike; the
    # right password of the real one is refused as well.
    assert (await auth(api, "ALICE@Example.com")).outcome == LOCKED
    assert (await auth(api, " BOB ")).outcome == LOCKED
    assert (await auth(api, "Carol@EXAMPLE.com")).outcome == LOCKED
    # A login never tried is untouched.
    assert (await auth(api, "dave", WRONG)).outcome == INVALID_CREDENTIALS


async def test_parallel_guesses_at_an_unknown_login_lock_it_like_a_real_one(api):
    await create_user(api, "alice")
    for login in ("alice", "nobody"):
        replies = await asyncio.gather(*(auth(api, login, f"{WRONG} {i}") for i in range(20)))
        answers = [r.outcome for r in replies]
        assert (answers.count(INVALID_CREDENTIALS), answers.count(LOCKED)) == (THRESHOLD, 20 - THRESHOLD), login


async def test_failures_are_forgotten_a_lockout_period_after_the_last_one(api):
    await create_user(api, "alice")
    period = TEST_SETTINGS.lockout_seconds
    below = [WRONG] * (THRESHOLD - 1)
    seen: dict[str, list[int]] = {"alice": [], "bob": []}

    async def each(passwords: list[str]) -> None:
        for login, answers in seen.items():
            answers.extend(await outcomes(api, login, passwords))

    await each(below)
    await age_failures(api, period - 10)  # still remembered: one more failure locks
    await each([WRONG, WRONG])
    await age_failures(api, period + 1)  # the lock is over and its failures forgotten
    await each(below)
    await age_failures(api, period + 1)  # forgotten again: a full count is needed to lock
    await each([*below, WRONG, WRONG])

    expected = [
        *[INVALID_CREDENTIALS] * (THRESHOLD - 1),
        INVALID_CREDENTIALS,
        LOCKED,
        *[INVALID_CREDENTIALS] * (THRESHOLD - 1),
        *[INVALID_CREDENTIALS] * (THRESHOLD - 1),
        INVALID_CREDENTIALS,
        LOCKED,
    ]
    assert seen == {"alice": expected, "bob": expected}


async def test_unknown_logins_are_kept_as_digests_and_only_for_the_lockout_period(api):
    await create_user(api, "alice")
    assert (await auth(api, "alice", WRONG)).outcome == INVALID_CREDENTIALS
    assert await sql(api, "SELECT 1 FROM unknown_login_failures") == []  # a real login counts on its user

    logins = ["bob", "carol@example.com", "dave"]
    for login in logins:
        assert (await auth(api, login, WRONG)).outcome == INVALID_CREDENTIALS
    rows = await sql(api, "SELECT login_digest, failed_count FROM unknown_login_failures")
    assert sorted(r["failed_count"] for r in rows) == [1, 1, 1]
    digests = [bytes(r["login_digest"]) for r in rows]
    assert all(len(d) == 32 for d in digests)
    assert not any(login.encode() in d for login in logins for d in digests)
    # A pepper of its own gives other digests: without the configuration, guesses cannot be
    # hashed and compared with the table.
    async with serving(api.database_url, password_pepper="a-pepper-from-the-config") as peppered:
        assert (await auth(peppered, "bob", WRONG)).outcome == INVALID_CREDENTIALS
    assert len(await sql(api, "SELECT 1 FROM unknown_login_failures")) == 4

    # Once their failures are forgotten, the rows go with the next unknown-login attempts.
    await age_failures(api, TEST_SETTINGS.lockout_seconds + 1)
    assert (await auth(api, "erin", WRONG)).outcome == INVALID_CREDENTIALS
    assert [r["failed_count"] for r in await sql(api, "SELECT failed_count FROM unknown_login_failures")] == [1]


# ---- Password hashing ---------------------------------------------------------------------------


async def test_long_passwords_are_accepted_and_every_byte_counts(api):
    long_password = "é" * 100 + "x" * 100  # 300 bytes of UTF-8
    assert len(long_password.encode()) == 300
    await create_user(api, "long", password=long_password)
    assert (await auth(api, "long", long_password)).outcome == SUCCESS

    prefix = "p" * 72
    await create_user(api, "first", password=prefix + "-first")
    await create_user(api, "second", password=prefix + "-second")
    assert (await auth(api, "first", prefix + "-second")).outcome == INVALID_CREDENTIALS
    assert (await auth(api, "second", prefix + "-first")).outcome == INVALID_CREDENTIALS
    assert (await auth(api, "first", prefix)).outcome == INVALID_CREDENTIALS
    assert (await auth(api, "first", prefix + "-first")).outcome == SUCCESS
    assert (await auth(api, "second", prefix + "-second")).outcome == SUCCESS


async def test_password_policy_counts_utf8_bytes(api):
    for ok in ("é" * 4, "12345678", "x" * 1024, "é" * 512):  # 8 and 1,024 bytes are the limits
        await create_user(api, password=ok)
    for bad in ("1234567", "é" * 3 + "x", "x" * 1025, "é" * 513):  # 513 characters but 1,026 bytes
        request = user_pb2.CreateUserRequest(request_id=rid(), email="p@example.com", username="pat", password=bad)
        assert await invalid_fields(api.users.CreateUser(request)) == {"password"}, len(bad)
    assert len(await sql(api, "SELECT 1 FROM users")) == 4


async def test_stored_hash_is_prehashed_bcrypt(api):
    alice = await create_user(api, "alice")
    bob = await create_user(api, "bob")
    alice_hash = (await user_row(api, alice.id))["password_hash"]
    bob_hash = (await user_row(api, bob.id))["password_hash"]

    assert alice_hash.startswith(PREFIX + "$2b$04$")
    assert bcrypt_cost(alice_hash) == TEST_SETTINGS.bcrypt_cost
    assert PASSWORD not in alice_hash
    assert alice_hash != bob_hash  # salted
    # A login at the configured cost leaves the hash alone.
    assert (await auth(api, "alice")).outcome == SUCCESS
    assert (await user_row(api, alice.id))["password_hash"] == alice_hash


async def test_login_rehashes_a_hash_made_with_another_cost(api):
    user = await create_user(api, "alice")
    old_hash = (await user_row(api, user.id))["password_hash"]
    assert bcrypt_cost(old_hash) == 4

    async with serving(api.database_url, bcrypt_cost=5) as stronger:
        wrong = await auth(stronger, "alice", WRONG)
        assert wrong.outcome == INVALID_CREDENTIALS
        assert (await user_row(api, user.id))["password_hash"] == old_hash  # only a success rehashes
        assert (await auth(stronger, "alice")).outcome == SUCCESS
    new_hash = (await user_row(api, user.id))["password_hash"]
    assert new_hash != old_hash
    assert bcrypt_cost(new_hash) == 5
    assert (await auth(api, "alice")).outcome == SUCCESS  # still the same password


async def test_pepper_is_part_of_the_hash(api):
    await create_user(api, "alice")
    async with serving(api.database_url, password_pepper="a-pepper-from-the-config") as peppered:
        assert (await auth(peppered, "alice")).outcome == INVALID_CREDENTIALS
        await create_user(peppered, "bob")
        assert (await auth(peppered, "bob")).outcome == SUCCESS
    assert (await auth(api, "bob")).outcome == INVALID_CREDENTIALS
    assert (await auth(api, "alice")).outcome == SUCCESS


# ---- ChangePassword -----------------------------------------------------------------------------


async def test_change_password(api):
    user = await create_user(api, "alice")
    old_hash = (await user_row(api, user.id))["password_hash"]
    new_password = "a brand new passphrase"

    reply = await api.users.ChangePassword(change(user.id, PASSWORD, new_password))
    assert reply.user.id == user.id
    assert reply.user.password_scheme == user_pb2.PASSWORD_SCHEME_BCRYPT
    assert reply.user.update_time.ToDatetime() > user.update_time.ToDatetime()

    assert (await auth(api, "alice", PASSWORD)).outcome == INVALID_CREDENTIALS
    assert (await auth(api, "alice", new_password)).outcome == SUCCESS
    new_hash = (await user_row(api, user.id))["password_hash"]
    assert new_hash != old_hash and new_hash.startswith(PREFIX)


@pytest.mark.parametrize(
    ("user_id", "current", "new", "request_id", "fields"),
    [
        ("{user}", PASSWORD, "short", None, {"new_password"}),
        ("{user}", PASSWORD, "x" * 1025, None, {"new_password"}),
        ("{user}", PASSWORD, "nul\x00in-the-new-one", None, {"new_password"}),
        ("{user}", "", "a brand new passphrase", None, {"current_password"}),
        ("", PASSWORD, "a brand new passphrase", None, {"user_id"}),
        ("not-a-uuid'; --", PASSWORD, "a brand new passphrase", None, {"user_id"}),
        ("{user}", PASSWORD, "a brand new passphrase", "", {"request_id"}),
    ],
    ids=case_id,
)
async def test_change_password_rejects_malformed_input(api, user_id, current, new, request_id, fields):
    user = await create_user(api, "alice")
    old_hash = (await user_row(api, user.id))["password_hash"]
    request = change(user_id.format(user=user.id), current, new, request_id=request_id)
    assert await invalid_fields(api.users.ChangePassword(request)) == fields
    assert (await user_row(api, user.id))["password_hash"] == old_hash
    assert await sql(api, "SELECT 1 FROM audit_events WHERE action = 'users.ChangePassword'") == []


async def test_change_password_rejections_change_nothing(api):
    user = await create_user(api, "alice")
    old_hash = (await user_row(api, user.id))["password_hash"]

    await expect_error(
        api.users.ChangePassword(change(user.id, WRONG, "a brand new passphrase")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "WRONG_PASSWORD",
    )
    await expect_error(
        api.users.ChangePassword(change(str(uuid.uuid4()), PASSWORD, "a brand new passphrase")),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )

    assert (await user_row(api, user.id))["password_hash"] == old_hash
    assert await sql(api, "SELECT 1 FROM audit_events WHERE action = 'users.ChangePassword'") == []
    assert (await auth(api, "alice")).outcome == SUCCESS


async def test_change_password_of_deleted_user_is_not_found(api):
    user = await create_user(api, "alice")
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))
    await expect_error(
        api.users.ChangePassword(change(user.id, PASSWORD, "a brand new passphrase")),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )


async def test_change_password_replay_returns_first_answer(api):
    user = await create_user(api, "alice")
    request = change(user.id, PASSWORD, "a brand new passphrase")
    first = await api.users.ChangePassword(request)
    changed_hash = (await user_row(api, user.id))["password_hash"]

    # The current password no longer matches, yet the replay returns the first answer unchanged.
    assert await api.users.ChangePassword(request) == first
    assert (await user_row(api, user.id))["password_hash"] == changed_hash
    assert len(await sql(api, "SELECT 1 FROM audit_events WHERE action = 'users.ChangePassword'")) == 1
    assert (await auth(api, "alice", "a brand new passphrase")).outcome == SUCCESS


async def test_wrong_current_passwords_count_toward_the_lockout(api):
    user = await create_user(api, "alice")
    for _ in range(THRESHOLD):
        await expect_error(
            api.users.ChangePassword(change(user.id, WRONG, "a brand new passphrase")),
            grpc.StatusCode.FAILED_PRECONDITION,
            "WRONG_PASSWORD",
        )

    error = await expect_error(
        api.users.ChangePassword(change(user.id, PASSWORD, "a brand new passphrase")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_LOCKED",
    )
    assert error_info(error).metadata["locked_until"]
    assert (await auth(api, "alice")).outcome == LOCKED
    assert (await auth(api, "alice", "a brand new passphrase")).outcome == LOCKED


async def test_parallel_wrong_current_passwords_check_at_most_the_threshold(api):
    user = await create_user(api, "alice")
    old_hash = (await user_row(api, user.id))["password_hash"]
    chosen = "the attacker's choice"

    async def attempt(current: str) -> str:
        try:
            await api.users.ChangePassword(change(user.id, current, chosen))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            return error_info(error).reason
        return "CHANGED"

    reasons = await asyncio.gather(*(attempt(f"{WRONG} {i}") for i in range(20)))
    assert reasons.count("WRONG_PASSWORD") == THRESHOLD
    assert reasons.count("ACCOUNT_LOCKED") == 20 - THRESHOLD

    # The right password after them is refused too, and the password stays what it was.
    assert await attempt(PASSWORD) == "ACCOUNT_LOCKED"
    assert (await user_row(api, user.id))["password_hash"] == old_hash
    assert (await auth(api, "alice", chosen)).outcome == LOCKED
    locks = await sql(api, "SELECT summary FROM audit_events WHERE action = 'users.AccountLocked'")
    assert [e["summary"]["failed_login_count"] for e in locks] == [THRESHOLD]


async def test_authenticate_and_change_password_share_one_count(api):
    user = await create_user(api, "alice")

    async def change_with(current: str) -> int:
        try:
            await api.users.ChangePassword(change(user.id, current, "a brand new passphrase"))
        except grpc.aio.AioRpcError as error:
            return {"WRONG_PASSWORD": INVALID_CREDENTIALS, "ACCOUNT_LOCKED": LOCKED}[error_info(error).reason]
        return SUCCESS

    calls = [change_with(f"{WRONG} {i}") if i % 2 else auth(api, "alice", f"{WRONG} {i}") for i in range(20)]
    answers = [a if isinstance(a, int) else a.outcome for a in await asyncio.gather(*calls)]
    assert answers.count(INVALID_CREDENTIALS) == THRESHOLD
    assert answers.count(LOCKED) == 20 - THRESHOLD
