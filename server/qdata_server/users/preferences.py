"""Preferences: typed common fields plus a free-form string map, updated by field mask.

Mask paths: "default_model_id", "language", "theme", "extra" (replace the whole map) and
"extra.<key>" (set that key from the request's map, or remove it when the request lacks it).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from qdata.v1 import user_pb2
from qdata_server import audit
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_one
from qdata_server.db.transactions import acting_for
from qdata_server.users import convert
from qdata_server.users.accounts import load_live_user
from qdata_server.validation import MODEL_ID_MAX_LENGTH, Violations, mask_paths, require_uuid

if TYPE_CHECKING:
    from qdata_server.deps import Deps

MAX_EXTRA_ENTRIES = 64
MAX_EXTRA_KEY_LENGTH = 64
MAX_EXTRA_VALUE_LENGTH = 1024
MAX_MODEL_ID_LENGTH = MODEL_ID_MAX_LENGTH
MAX_LANGUAGE_LENGTH = 35
_EXTRA_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# BCP 47 shape: a 2-3 letter language, then subtags of 1-8 letters or digits.
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
_TYPED_PATHS = {"default_model_id", "language", "theme", "extra"}


async def get_preferences(deps: Deps, request: user_pb2.GetPreferencesRequest) -> user_pb2.GetPreferencesResponse:
    user_id = require_uuid("user_id", request.user_id)

    async def work(conn: Conn) -> dict[str, Any] | None:
        await load_live_user(conn, user_id)
        return await fetch_one(conn, "get_preferences", {"user_id": user_id})

    row = await deps.transaction(work, acting=acting_for(user_id))
    return user_pb2.GetPreferencesResponse(preferences=convert.preferences(str(user_id), row))


async def update_preferences(
    deps: Deps, request: user_pb2.UpdatePreferencesRequest
) -> user_pb2.UpdatePreferencesResponse:
    paths = mask_paths("update_mask", list(request.update_mask.paths), _TYPED_PATHS, prefixes=("extra.",))
    prefs = request.preferences
    v = Violations()
    user_id = v.uuid("preferences.user_id", prefs.user_id)
    if "default_model_id" in paths:
        v.text("preferences.default_model_id", prefs.default_model_id, MAX_MODEL_ID_LENGTH)
    if (
        "language" in paths
        and prefs.language
        and (len(prefs.language) > MAX_LANGUAGE_LENGTH or not _LANGUAGE.fullmatch(prefs.language))
    ):
        v.add("preferences.language", "must be a BCP 47 tag such as 'en' or 'pt-BR'")
    if "theme" in paths and prefs.theme not in convert.THEME_FROM_PROTO:
        v.add("preferences.theme", "is not a known Theme")
    if "extra" in paths and any(p.startswith("extra.") for p in paths):
        v.add("update_mask", "must not name both 'extra' and 'extra.<key>'")
    for path in paths:
        if path.startswith("extra.") and not _EXTRA_KEY.fullmatch(path[len("extra.") :]):
            v.add("update_mask", f"{path[:80]!r}: extra keys are 1 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-'")
    if "extra" in paths or any(p.startswith("extra.") for p in paths):
        for key, value in prefs.extra.items():
            if not _EXTRA_KEY.fullmatch(key):
                v.add(f"preferences.extra[{key[:64]!r}]", "keys are 1 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-'")
            if len(value) > MAX_EXTRA_VALUE_LENGTH:
                v.add(f"preferences.extra[{key[:64]!r}]", f"values are at most {MAX_EXTRA_VALUE_LENGTH} characters")
            elif "\x00" in value:
                v.add(f"preferences.extra[{key[:64]!r}]", "values must not contain NUL characters")
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed

    async def work(conn: Conn) -> user_pb2.UpdatePreferencesResponse:
        await load_live_user(conn, user_id, for_update=True)
        current = await fetch_one(conn, "get_preferences", {"user_id": user_id})
        merged = _merge(current, prefs, paths)
        if len(merged["extra"]) > MAX_EXTRA_ENTRIES:
            bad = Violations()
            bad.add("preferences.extra", f"may hold at most {MAX_EXTRA_ENTRIES} entries after the update")
            bad.raise_if_any()
        row = await fetch_one(
            conn, "upsert_preferences", {**merged, "user_id": user_id, "extra": Jsonb(merged["extra"])}
        )
        await audit.record(
            conn,
            action="users.UpdatePreferences",
            target_type="preferences",
            target_id=str(user_id),
            user_id=user_id,
            summary={"fields": sorted(paths)},
        )
        return user_pb2.UpdatePreferencesResponse(preferences=convert.preferences(str(user_id), row))

    return await deps.idempotent(request, user_pb2.UpdatePreferencesResponse, work, user_id=user_id)


def _merge(current: dict[str, Any] | None, prefs: user_pb2.Preferences, paths: list[str]) -> dict[str, Any]:
    """The preferences row after applying the masked fields of prefs to current."""
    merged: dict[str, Any] = {
        "default_model_id": current["default_model_id"] if current else "",
        "language": current["language"] if current else "",
        "theme": current["theme"] if current else "",
        "extra": dict(current["extra"]) if current else {},
    }
    for path in paths:
        if path == "default_model_id":
            merged["default_model_id"] = prefs.default_model_id
        elif path == "language":
            merged["language"] = prefs.language
        elif path == "theme":
            merged["theme"] = convert.THEME_FROM_PROTO[prefs.theme]
        elif path == "extra":
            merged["extra"] = dict(prefs.extra)
        else:
            key = path[len("extra.") :]
            if key in prefs.extra:
                merged["extra"][key] = prefs.extra[key]
            else:
                merged["extra"].pop(key, None)
    return merged
