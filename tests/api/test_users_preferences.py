"""UserService preferences over real gRPC and PostgreSQL: GetPreferences and UpdatePreferences with
its field-mask semantics ("extra" replaces the map, "extra.<key>" sets or removes one key).
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from qdata.v1 import user_pb2
from tests.support.calls import case_id, create_user, expect_error, field_violations, rid
from tests.support.database import sql, table_rows

NOT_FOUND = grpc.StatusCode.NOT_FOUND


# ---- helpers ------------------------------------------------------------------------------------


STATE_TABLES = ("user_preferences", "audit_events", "idempotency_keys")


async def db_state(api) -> dict[str, Any]:
    return await table_rows(api, *STATE_TABLES)


def update_request(
    user_id: str, paths: list[str], request_id: str | None = None, **fields: Any
) -> user_pb2.UpdatePreferencesRequest:
    return user_pb2.UpdatePreferencesRequest(
        request_id=rid() if request_id is None else request_id,
        preferences=user_pb2.Preferences(user_id=user_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )


async def update(api, user_id: str, paths: list[str], **fields: Any) -> user_pb2.Preferences:
    return (await api.users.UpdatePreferences(update_request(user_id, paths, **fields))).preferences


async def get(api, user_id: str) -> user_pb2.Preferences:
    return (await api.users.GetPreferences(user_pb2.GetPreferencesRequest(user_id=user_id))).preferences


async def violated_fields(call) -> set[str]:
    """Asserts INVALID_ARGUMENT (reason INVALID_ARGUMENT) and returns the violated fields."""
    return set(field_violations(await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")))


# ---- tests --------------------------------------------------------------------------------------


async def test_new_user_has_default_preferences(api):
    user = await create_user(api, "alice")
    prefs = await get(api, user.id)
    assert prefs == user_pb2.Preferences(user_id=user.id)
    assert (prefs.default_model_id, prefs.language, prefs.theme, dict(prefs.extra)) == (
        "",
        "",
        user_pb2.THEME_UNSPECIFIED,
        {},
    )
    assert not prefs.HasField("update_time")


async def test_update_typed_fields(api):
    user = await create_user(api, "alice")
    prefs = await update(
        api,
        user.id,
        ["default_model_id", "language", "theme"],
        default_model_id="anthropic/claude-3.5",
        language="pt-BR",
        theme=user_pb2.THEME_DARK,
        extra={"ignored": "not in the mask"},
    )

    assert (prefs.default_model_id, prefs.language, prefs.theme) == (
        "anthropic/claude-3.5",
        "pt-BR",
        user_pb2.THEME_DARK,
    )
    assert dict(prefs.extra) == {}
    assert prefs.HasField("update_time")
    assert await get(api, user.id) == prefs

    # Only masked fields change; an empty value clears a field.
    changed = await update(
        api, user.id, ["theme", "language"], theme=user_pb2.THEME_LIGHT, language="", default_model_id="ignored"
    )
    assert (changed.default_model_id, changed.language, changed.theme) == (
        "anthropic/claude-3.5",
        "",
        user_pb2.THEME_LIGHT,
    )
    assert changed.update_time.ToDatetime() >= prefs.update_time.ToDatetime()
    assert await get(api, user.id) == changed


async def test_extra_replaces_the_whole_map(api):
    user = await create_user(api, "alice")
    first = await update(api, user.id, ["extra"], extra={"a": "1", "b.c": 'it\'s; "quoted"', "d-e_F": ""})
    assert dict(first.extra) == {"a": "1", "b.c": 'it\'s; "quoted"', "d-e_F": ""}

    second = await update(api, user.id, ["extra"], extra={"z": "26"})
    assert dict(second.extra) == {"z": "26"}
    cleared = await update(api, user.id, ["extra"])
    assert dict(cleared.extra) == {}
    assert dict((await get(api, user.id)).extra) == {}


async def test_extra_key_paths_set_and_remove_single_keys(api):
    user = await create_user(api, "alice")
    await update(api, user.id, ["extra"], extra={"keep": "k", "drop": "d", "change": "old"})

    # "extra.<key>" sets that key from the request's map; other keys in the request are ignored.
    prefs = await update(
        api, user.id, ["extra.change", "extra.new"], extra={"change": "new", "new": "n", "unmasked": "ignored"}
    )
    assert dict(prefs.extra) == {"keep": "k", "drop": "d", "change": "new", "new": "n"}

    # ... and removes it when the request's map lacks it; removing an absent key is a no-op.
    prefs = await update(api, user.id, ["extra.drop", "extra.never-set"], extra={})
    assert dict(prefs.extra) == {"keep": "k", "change": "new", "new": "n"}
    assert dict((await get(api, user.id)).extra) == dict(prefs.extra)
    [row] = await sql(api, "SELECT extra FROM user_preferences")
    assert row["extra"] == dict(prefs.extra)


FULL = {f"k{i}": "v" for i in range(64)}  # exactly 64 entries is allowed


async def full_user(api) -> user_pb2.User:
    """A user whose preferences hold the most extra entries allowed."""
    user = await create_user(api, "alice")
    await update(api, user.id, ["extra"], extra=FULL)
    return user


@pytest.mark.parametrize(
    ("paths", "fields", "violated"),
    [
        ([], {}, "update_mask"),
        (["nonsense"], {}, "update_mask"),
        (["user_id"], {}, "update_mask"),
        (["update_time"], {}, "update_mask"),
        (["theme", "theme"], {"theme": user_pb2.THEME_DARK}, "update_mask"),
        (["extra", "extra.k1"], {"extra": {"k1": "v"}}, "update_mask"),
        (["extra.bad key!"], {}, "update_mask"),
        (["extra." + "k" * 65], {}, "update_mask"),
        (["extra."], {}, "update_mask"),
        (["language"], {"language": "english!"}, "preferences.language"),
        (["language"], {"language": "e"}, "preferences.language"),
        (["language"], {"language": "en-" + "x" * 40}, "preferences.language"),
        (["language"], {"language": "en'; DROP TABLE users;--"}, "preferences.language"),
        (["language"], {"language": "en\x00"}, "preferences.language"),
        # "$" in a Python pattern matches before a final newline: the whole value must match.
        (["language"], {"language": "en\n"}, "preferences.language"),
        (["extra.key\n"], {}, "update_mask"),
        (["extra"], {"extra": {"key\n": "v"}}, "preferences.extra['key\\n']"),
        (["theme"], {"theme": 99}, "preferences.theme"),
        (["default_model_id"], {"default_model_id": "m" * 201}, "preferences.default_model_id"),
        (["default_model_id"], {"default_model_id": "model\x00"}, "preferences.default_model_id"),
        (["extra"], {"extra": {"bad key!": "v"}}, "preferences.extra['bad key!']"),
        (["extra"], {"extra": {"": "v"}}, "preferences.extra['']"),
        (["extra"], {"extra": {"k": "v" * 1025}}, "preferences.extra['k']"),
        (["extra"], {"extra": {"k": "nul\x00"}}, "preferences.extra['k']"),
        (["extra"], {"extra": {f"k{i}": "v" for i in range(65)}}, "preferences.extra"),
        (["extra.one-more"], {"extra": {"one-more": "v"}}, "preferences.extra"),  # 65 after the merge
    ],
    ids=case_id,
)
async def test_update_preferences_rejects_bad_input(api, paths, fields, violated):
    user = await full_user(api)
    before = await db_state(api)
    request = update_request(user.id, paths, **fields)
    assert await violated_fields(api.users.UpdatePreferences(request)) == {violated}
    assert await db_state(api) == before
    assert dict((await get(api, user.id)).extra) == FULL


async def test_preferences_reject_bad_ids(api):
    user = await full_user(api)
    full = FULL
    before = await db_state(api)
    for bad_id in ("", "not-a-uuid", "1' OR '1'='1"):
        assert await violated_fields(api.users.UpdatePreferences(update_request(bad_id, ["theme"]))) == {
            "preferences.user_id"
        }, bad_id
        error = await expect_error(
            api.users.GetPreferences(user_pb2.GetPreferencesRequest(user_id=bad_id)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert set(field_violations(error)) == {"user_id"}
    assert await violated_fields(api.users.UpdatePreferences(update_request(user.id, ["theme"], ""))) == {"request_id"}
    assert await db_state(api) == before
    assert dict((await get(api, user.id)).extra) == full


async def test_preferences_of_unknown_or_deleted_user_are_not_found(api):
    user = await create_user(api, "alice")
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))
    before = await db_state(api)
    for user_id in (str(uuid.uuid4()), user.id):
        await expect_error(
            api.users.GetPreferences(user_pb2.GetPreferencesRequest(user_id=user_id)), NOT_FOUND, "USER_NOT_FOUND"
        )
        await expect_error(
            api.users.UpdatePreferences(update_request(user_id, ["theme"], theme=user_pb2.THEME_DARK)),
            NOT_FOUND,
            "USER_NOT_FOUND",
        )
    assert await db_state(api) == before


async def test_update_preferences_replay(api):
    user = await create_user(api, "alice")
    request = update_request(user.id, ["theme", "extra.a"], theme=user_pb2.THEME_DARK, extra={"a": "1"})
    first = await api.users.UpdatePreferences(request)
    later = await update(api, user.id, ["theme"], theme=user_pb2.THEME_LIGHT)
    state = await db_state(api)

    assert await api.users.UpdatePreferences(request) == first
    assert await db_state(api) == state  # no second effect: the later change stands
    assert await get(api, user.id) == later

    reused = update_request(user.id, ["theme"], request.request_id, theme=user_pb2.THEME_SYSTEM)
    await expect_error(api.users.UpdatePreferences(reused), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert await db_state(api) == state
