"""Provider API keys: create, list, reveal, update, delete; the key ring check; rewrap.

The secret is encrypted before it reaches the database (users/vault.py) and is only ever
decrypted by RevealApiKey, which is audited like a mutation. Secrets never go into audit
summaries, log lines, error messages or idempotency fingerprints (secret_fields=("secret",)).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import unicodedata
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qdata.v1 import user_pb2
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import audit
from qdata_server.convert import same_named, timestamp
from qdata_server.db.connection import Conn
from qdata_server.db.sql import execute, fetch_all, fetch_one, fetch_row
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS, acting_for, name_acting
from qdata_server.deps import Deps
from qdata_server.errors import FailedPrecondition, NotFound
from qdata_server.pagination import keyset, page_size
from qdata_server.users import vault
from qdata_server.users.accounts import load_live_user
from qdata_server.validation import (
    API_KEY_PROVIDER,
    Violations,
    has_control_characters,
    mask_flags,
    mask_paths,
    require_uuid,
)

if TYPE_CHECKING:
    from qdata_server.deps import Deps

log = logging.getLogger("qdata.vault")

MAX_LABEL_LENGTH = 100
MIN_SECRET_LENGTH = 8
MAX_SECRET_LENGTH = 4096
HINT_LENGTH = 4
_UPDATABLE_PATHS = {"label", "secret"}


# ---- errors and small helpers -------------------------------------------------------------------


def api_key_not_found() -> NotFound:
    return NotFound("API key not found", reason=ErrorReason.ERROR_REASON_API_KEY_NOT_FOUND)


def _ring(deps: Deps) -> vault.KeyRing:
    ring = deps.key_ring
    if ring is None:
        raise FailedPrecondition(
            "the API key vault has no key ring; set QDATA_KEY_RING or QDATA_KEY_RING_FILE",
            reason=ErrorReason.ERROR_REASON_VAULT_NOT_CONFIGURED,
        )
    return ring


def _key_ids(user_value: str, api_key_value: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The (user_id, api_key_id) pair a request about one stored key carries, or INVALID_ARGUMENT."""
    v = Violations()
    user_id, api_key_id = v.uuid("user_id", user_value), v.uuid("api_key_id", api_key_value)
    v.raise_if_any()
    assert user_id is not None and api_key_id is not None  # raise_if_any() passed
    return user_id, api_key_id


def _check_label(v: Violations, field: str, raw: str) -> str:
    return v.text(field, unicodedata.normalize("NFC", raw.strip()), MAX_LABEL_LENGTH)


def _check_secret(v: Violations, field: str, secret: str) -> None:
    """Length and character rules; the secret is never echoed."""
    if len(secret) < MIN_SECRET_LENGTH:
        v.add(field, f"must be at least {MIN_SECRET_LENGTH} characters")
    elif len(secret) > MAX_SECRET_LENGTH:
        v.add(field, f"must be at most {MAX_SECRET_LENGTH} characters")
    if has_control_characters(secret):
        v.add(field, "must not contain control characters")


# The columns a sealed secret is stored in, one per field of vault.Sealed (the hint sits beside them).
_SEALED_FIELDS = tuple(f.name for f in dataclasses.fields(vault.Sealed))


def _sealed_columns(sealed: vault.Sealed, secret: str) -> dict[str, Any]:
    return {"hint": secret[-HINT_LENGTH:], **{name: getattr(sealed, name) for name in _SEALED_FIELDS}}


def _sealed(row: dict[str, Any]) -> vault.Sealed:
    # The byte columns come back as memoryview or bytes; Sealed holds bytes.
    return vault.Sealed(
        key_version=row["key_version"], **{name: bytes(row[name]) for name in _SEALED_FIELDS if name != "key_version"}
    )


def to_proto(row: dict[str, Any]) -> user_pb2.ApiKey:
    """ApiKey metadata from a row; never the secret or its ciphertext."""
    return user_pb2.ApiKey(
        id=str(row["api_key_id"]),
        user_id=str(row["user_id"]),
        **same_named(row, "provider label hint key_version"),
        create_time=timestamp(row["created_at"]),
        update_time=timestamp(row["updated_at"]),
        last_used_time=timestamp(row["last_used_at"]),
    )


async def _audit(conn: Conn, action: str, user_id: uuid.UUID, api_key_id: uuid.UUID, summary: dict[str, Any]) -> None:
    """Records an audit event about one of the user's API keys (never its secret)."""
    await audit.record(
        conn, action=action, target_type="api_key", target_id=str(api_key_id), user_id=user_id, summary=summary
    )


def _open(ring: vault.KeyRing, row: dict[str, Any]) -> str:
    """Decrypts a row's secret or raises FAILED_PRECONDITION (logged without the secret)."""
    ids = {"user_id": str(row["user_id"]), "api_key_id": str(row["api_key_id"]), "key_version": row["key_version"]}
    try:
        return vault.open_secret(ring, row["user_id"], row["api_key_id"], _sealed(row))
    except vault.MissingKeyVersion as exc:
        log.error("API key needs a key-encryption key the ring lacks", extra=ids)
        raise FailedPrecondition(
            f"the key ring lacks key-encryption key version {exc.version} needed by this API key",
            reason=ErrorReason.ERROR_REASON_KEY_VERSION_UNAVAILABLE,
        ) from None
    except vault.SecretUnreadable:
        log.error("API key does not decrypt (wrong key or data not bound to this row)", extra=ids)
        raise FailedPrecondition(
            "the stored API key cannot be decrypted; store it again", reason=ErrorReason.ERROR_REASON_SECRET_UNREADABLE
        ) from None


# ---- RPCs ---------------------------------------------------------------------------------------


async def create_api_key(deps: Deps, request: user_pb2.CreateApiKeyRequest) -> user_pb2.CreateApiKeyResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    provider = v.matches("provider", request.provider, API_KEY_PROVIDER)
    label = _check_label(v, "label", request.label)
    _check_secret(v, "secret", request.secret)
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed
    ring = _ring(deps)
    api_key_id = uuid.uuid4()
    sealed = vault.seal(ring, user_id, api_key_id, request.secret)
    columns = _sealed_columns(sealed, request.secret)

    async def work(conn: Conn) -> user_pb2.CreateApiKeyResponse:
        await load_live_user(conn, user_id, for_update=True)
        row = await fetch_row(
            conn,
            "api_key_insert",
            {"user_id": user_id, "api_key_id": api_key_id, "provider": provider, "label": label, **columns},
        )
        await _audit(
            conn,
            "users.CreateApiKey",
            user_id,
            api_key_id,
            {"provider": provider, "key_version": sealed.key_version, "fields": ["label", "secret"]},
        )
        return user_pb2.CreateApiKeyResponse(api_key=to_proto(row))

    return await deps.idempotent(
        request, user_pb2.CreateApiKeyResponse, work, user_id=user_id, secret_fields=("secret",)
    )


async def list_api_keys(deps: Deps, request: user_pb2.ListApiKeysRequest) -> user_pb2.ListApiKeysResponse:
    user_id = require_uuid("user_id", request.user_id)
    limit = page_size(request.page_size)
    tokens = await deps.page_tokens()
    filters = {"user_id": str(user_id)}
    cursor = tokens.open(request.page_token, "ListApiKeys", filters)

    async def work(conn: Conn) -> list[dict[str, Any]]:
        await load_live_user(conn, user_id)
        params = {"user_id": user_id, **keyset(cursor, "after_created_at after_api_key_id", limit)}
        return await fetch_all(conn, "api_key_list", params)

    rows = await deps.transaction(work, acting=acting_for(user_id))
    rows, next_token = tokens.page(
        rows, limit, "ListApiKeys", filters, lambda last: [last["created_at"].isoformat(), str(last["api_key_id"])]
    )
    return user_pb2.ListApiKeysResponse(api_keys=[to_proto(r) for r in rows], next_page_token=next_token)


async def reveal_api_key(deps: Deps, request: user_pb2.RevealApiKeyRequest) -> user_pb2.RevealApiKeyResponse:
    user_id, api_key_id = _key_ids(request.user_id, request.api_key_id)
    ring = _ring(deps)

    async def work(conn: Conn) -> user_pb2.RevealApiKeyResponse:
        row = await fetch_one(conn, "api_key_touch", {"user_id": user_id, "api_key_id": api_key_id})
        if row is None:
            raise api_key_not_found()
        secret = _open(ring, row)
        # A read, but an audited one: every reveal leaves a record in the same transaction.
        await _audit(
            conn,
            "users.RevealApiKey",
            user_id,
            api_key_id,
            {"provider": row["provider"], "key_version": row["key_version"]},
        )
        return user_pb2.RevealApiKeyResponse(api_key=to_proto(row), secret=secret)

    return await deps.transaction(work, acting=acting_for(user_id))


async def update_api_key(deps: Deps, request: user_pb2.UpdateApiKeyRequest) -> user_pb2.UpdateApiKeyResponse:
    paths = mask_paths("update_mask", list(request.update_mask.paths), _UPDATABLE_PATHS)
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    api_key_id = v.uuid("api_key_id", request.api_key_id)
    label = _check_label(v, "label", request.label) if "label" in paths else None
    if "secret" in paths:
        _check_secret(v, "secret", request.secret)
    v.raise_if_any()
    assert user_id is not None and api_key_id is not None  # raise_if_any() passed
    values: dict[str, Any] = {
        "user_id": user_id,
        "api_key_id": api_key_id,
        **mask_flags(paths, _UPDATABLE_PATHS),
        "label": label,
        **dict.fromkeys(("hint", *_SEALED_FIELDS)),
    }
    if "secret" in paths:
        # A fresh data key under the primary KEK; the old ciphertext is overwritten.
        values.update(_sealed_columns(vault.seal(_ring(deps), user_id, api_key_id, request.secret), request.secret))

    async def work(conn: Conn) -> user_pb2.UpdateApiKeyResponse:
        if await fetch_one(conn, "api_key_get_for_update", values) is None:
            raise api_key_not_found()
        row = await fetch_row(conn, "api_key_update", values)
        summary: dict[str, Any] = {"fields": sorted(paths), "provider": row["provider"]}
        if "secret" in paths:
            summary["key_version"] = row["key_version"]
        await _audit(conn, "users.UpdateApiKey", user_id, api_key_id, summary)
        return user_pb2.UpdateApiKeyResponse(api_key=to_proto(row))

    return await deps.idempotent(
        request, user_pb2.UpdateApiKeyResponse, work, user_id=user_id, secret_fields=("secret",)
    )


async def delete_api_key(deps: Deps, request: user_pb2.DeleteApiKeyRequest) -> user_pb2.DeleteApiKeyResponse:
    user_id, api_key_id = _key_ids(request.user_id, request.api_key_id)

    async def work(conn: Conn) -> user_pb2.DeleteApiKeyResponse:
        row = await fetch_one(conn, "api_key_delete", {"user_id": user_id, "api_key_id": api_key_id})
        if row is None:
            raise api_key_not_found()
        await _audit(conn, "users.DeleteApiKey", user_id, api_key_id, {"provider": row["provider"]})
        return user_pb2.DeleteApiKeyResponse()

    return await deps.idempotent(request, user_pb2.DeleteApiKeyResponse, work, user_id=user_id)


# ---- key ring check and rewrap ------------------------------------------------------------------


async def stored_versions(conn: Conn) -> dict[int, int]:
    """{KEK version: number of stored keys}."""
    return {r["key_version"]: r["keys"] for r in await fetch_all(conn, "api_keys_count_by_version")}


def missing_versions_message(missing: dict[int, int], ring: vault.KeyRing, *, lead: str = "refusing to start") -> str:
    """The refusal to start when stored keys need KEK versions the ring lacks."""
    listed = ", ".join(f"version {v} ({n} key{'s' if n != 1 else ''})" for v, n in sorted(missing.items()))
    return (
        f"{lead}: stored API keys need key-encryption key {listed}, which the key ring "
        f"({ring.source or 'configured'}: versions {', '.join(map(str, ring.versions))}) does not hold. "
        "Put the missing version(s) back into QDATA_KEY_RING / QDATA_KEY_RING_FILE, run "
        "`python -m qdata_server rewrap-keys` to re-wrap every key under the primary version, and only "
        "then remove the old version(s)."
    )


async def _stored_versions_of_all_users(conn: Conn) -> dict[int, int]:
    async with conn.transaction():
        await name_acting(conn, ACTING_FOR_ALL_USERS)
        return await stored_versions(conn)


async def check_ring(conn: Conn, ring: vault.KeyRing) -> str | None:
    """None if the ring opens every stored key, else the message naming the missing versions."""
    counts = await stored_versions(conn)
    missing = {v: n for v, n in counts.items() if v not in ring.keys}
    return missing_versions_message(missing, ring) if missing else None


async def rewrap_all(
    conn: Conn,
    ring: vault.KeyRing,
    *,
    batch: int = 500,
    progress: Callable[[str], None] = print,
    max_idle_rounds: int = 100,
) -> int:
    """Re-wraps every data key not under the primary KEK; returns how many it re-wrapped.

    Runs on conn (autocommit). Online and resumable: each batch is its own short transaction
    that locks its rows with FOR UPDATE SKIP LOCKED (rows a live request holds are taken in a
    later round), and only rows whose key_version differs from the primary are picked, so a rerun
    continues where a stopped run left off. Only the wrapped data key changes; the secret's
    ciphertext stays. It runs as the schema's owner; every transaction also names itself a
    cross-user path, so a role under row-level security sees every user's keys too.
    """
    done = 0
    idle = 0
    counts = await _stored_versions_of_all_users(conn)
    missing = {v: n for v, n in counts.items() if v not in ring.keys}
    if missing:
        raise vault.VaultError(missing_versions_message(missing, ring, lead="cannot rewrap"))
    total = sum(n for v, n in counts.items() if v != ring.primary)
    progress(f"rewrap-keys: {total} key(s) to re-wrap under version {ring.primary} (batches of {batch})")
    while True:
        async with conn.transaction():
            await name_acting(conn, ACTING_FOR_ALL_USERS)
            rows = await fetch_all(conn, "api_keys_lock_stale_batch", {"primary": ring.primary, "limit": batch})
            for row in rows:
                try:
                    fresh = vault.rewrap(ring, row["user_id"], row["api_key_id"], _sealed(row))
                except vault.SecretUnreadable:
                    raise vault.VaultError(
                        f"API key {row['api_key_id']} of user {row['user_id']} does not decrypt with key "
                        f"version {row['key_version']} (tampered or copied from another row); delete or "
                        "replace it, then run rewrap-keys again (earlier batches are kept)"
                    ) from None
                await execute(
                    conn,
                    "api_key_set_wrapped_key",
                    {
                        "user_id": row["user_id"],
                        "api_key_id": row["api_key_id"],
                        "old_version": row["key_version"],
                        "key_version": fresh.key_version,
                        "wrapped_key": fresh.wrapped_key,
                        "key_nonce": fresh.key_nonce,
                    },
                )
        if rows:
            done += len(rows)
            idle = 0
            progress(f"rewrap-keys: {done}/{total} re-wrapped")
            continue
        remaining = sum(n for v, n in (await _stored_versions_of_all_users(conn)).items() if v != ring.primary)
        if remaining == 0:
            break
        idle += 1
        if idle > max_idle_rounds:
            raise vault.VaultError(f"{remaining} key(s) stayed locked by live requests; run rewrap-keys again")
        await asyncio.sleep(0.05)
    progress(f"rewrap-keys: done, {done} key(s) re-wrapped; every stored key now uses version {ring.primary}")
    return done
