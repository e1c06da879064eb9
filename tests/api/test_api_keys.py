"""UserService API key vault over real gRPC and PostgreSQL: the RPCs, row binding of ciphertexts,
key rotation with an online rewrap under live traffic, removal of an old key, the refusal to
start without a needed key, and secrets kept out of logs, errors, audit and idempotency records.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import random
import sys

import grpc
import pytest
from google.protobuf import field_mask_pb2

from qdata.v1 import user_pb2
from qdata_server.startup import StartupError
from tests.support.calls import create_user, expect_error, field_violations, rid
from tests.support.database import sql
from tests.support.server import TEST_SETTINGS, Api, ModuleServer, start_api, stop_api

FAILED = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
KEYS = {1: base64.b64encode(os.urandom(32)).decode(), 2: base64.b64encode(os.urandom(32)).decode()}


def ring_text(*versions: int) -> str:
    return ",".join(f"{v}:{KEYS[v]}" for v in versions)


def vault_settings(*versions: int):
    return dataclasses.replace(TEST_SETTINGS, key_ring=ring_text(*versions))


def new_secret() -> str:
    return "sk-" + base64.b32encode(os.urandom(20)).decode().lower()


async def create_key(api, user_id: str, secret: str, provider: str = "openai", label: str = "") -> user_pb2.ApiKey:
    request = user_pb2.CreateApiKeyRequest(
        request_id=rid(), user_id=user_id, provider=provider, label=label, secret=secret
    )
    return (await api.users.CreateApiKey(request)).api_key


async def reveal(api, user_id: str, key_id: str) -> user_pb2.RevealApiKeyResponse:
    return await api.users.RevealApiKey(user_pb2.RevealApiKeyRequest(user_id=user_id, api_key_id=key_id))


async def assert_no_secret_stored_in_clear(url: str, secrets: list[str]) -> None:
    """Scans audit and idempotency rows (every column, as bytes) for any plaintext secret."""
    for table in ("audit_events", "idempotency_keys", "user_api_keys"):
        for row in await sql(url, f"SELECT * FROM {table}"):
            blob = b"|".join(v if isinstance(v, bytes) else str(v).encode() for v in row.values())
            for secret in secrets:
                assert secret.encode() not in blob, f"a secret is stored in clear in {table}"


@pytest.fixture
async def vapi(module_server: ModuleServer) -> Api:
    """The module's server with a key ring of version 1."""
    return await module_server.api(vault_settings(1))


# ---- the RPCs -----------------------------------------------------------------------------------


async def test_round_trip(vapi, caplog):
    caplog.set_level(logging.DEBUG)
    user = await create_user(vapi, "alice")
    secret = new_secret()
    key = await create_key(vapi, user.id, secret, label="work")
    assert (key.user_id, key.provider, key.label, key.hint, key.key_version) == (
        user.id,
        "openai",
        "work",
        secret[-4:],
        1,
    )
    assert key.HasField("create_time") and not key.HasField("last_used_time")
    assert secret.encode() not in key.SerializeToString()

    listed = (await vapi.users.ListApiKeys(user_pb2.ListApiKeysRequest(user_id=user.id))).api_keys
    assert list(listed) == [key]

    revealed = await reveal(vapi, user.id, key.id)
    assert revealed.secret == secret and revealed.api_key.HasField("last_used_time")

    # Label only, then a new secret: a fresh data key, the hint follows, reveal returns the new one.
    mask = field_mask_pb2.FieldMask
    renamed = await vapi.users.UpdateApiKey(
        user_pb2.UpdateApiKeyRequest(
            request_id=rid(), user_id=user.id, api_key_id=key.id, label="home", update_mask=mask(paths=["label"])
        )
    )
    assert renamed.api_key.label == "home" and renamed.api_key.hint == secret[-4:]
    before = (await sql(vapi.database_url, "SELECT wrapped_key, ciphertext FROM user_api_keys"))[0]
    second = new_secret()
    replaced = await vapi.users.UpdateApiKey(
        user_pb2.UpdateApiKeyRequest(
            request_id=rid(), user_id=user.id, api_key_id=key.id, secret=second, update_mask=mask(paths=["secret"])
        )
    )
    assert replaced.api_key.hint == second[-4:] and replaced.api_key.label == "home"
    after = (await sql(vapi.database_url, "SELECT wrapped_key, ciphertext FROM user_api_keys"))[0]
    assert after["wrapped_key"] != before["wrapped_key"] and after["ciphertext"] != before["ciphertext"]
    assert (await reveal(vapi, user.id, key.id)).secret == second

    # Another user's key is not found; so is a deleted one.
    other = await create_user(vapi, "bob")
    await expect_error(reveal(vapi, other.id, key.id), NOT_FOUND, "API_KEY_NOT_FOUND")
    await expect_error(
        vapi.users.DeleteApiKey(user_pb2.DeleteApiKeyRequest(request_id=rid(), user_id=other.id, api_key_id=key.id)),
        NOT_FOUND,
        "API_KEY_NOT_FOUND",
    )
    await vapi.users.DeleteApiKey(user_pb2.DeleteApiKeyRequest(request_id=rid(), user_id=user.id, api_key_id=key.id))
    await expect_error(reveal(vapi, user.id, key.id), NOT_FOUND, "API_KEY_NOT_FOUND")

    # Every change and every reveal left exactly one audit record, none with a secret.
    actions = [
        r["action"]
        for r in await sql(
            vapi.database_url, "SELECT action FROM audit_events WHERE target_type = 'api_key' ORDER BY audit_event_id"
        )
    ]
    assert actions == [
        "users.CreateApiKey",
        "users.RevealApiKey",
        "users.UpdateApiKey",
        "users.UpdateApiKey",
        "users.RevealApiKey",
        "users.DeleteApiKey",
    ]
    await assert_no_secret_stored_in_clear(vapi.database_url, [secret, second])
    assert secret not in caplog.text and second not in caplog.text


async def test_list_is_paginated_newest_first_and_bound_to_the_user(vapi):
    alice, bob = await create_user(vapi, "alice"), await create_user(vapi, "bob")
    created = [await create_key(vapi, alice.id, new_secret(), provider=f"p{i}") for i in range(5)]
    await create_key(vapi, bob.id, new_secret())
    seen, token = [], ""
    while True:
        page = await vapi.users.ListApiKeys(
            user_pb2.ListApiKeysRequest(user_id=alice.id, page_size=2, page_token=token)
        )
        seen += [k.id for k in page.api_keys]
        token = page.next_page_token
        if not token:
            break
        await expect_error(
            vapi.users.ListApiKeys(user_pb2.ListApiKeysRequest(user_id=bob.id, page_token=token)), INVALID
        )
    assert seen == [k.id for k in reversed(created)]
    await expect_error(vapi.users.ListApiKeys(user_pb2.ListApiKeysRequest(user_id=alice.id, page_size=-1)), INVALID)
    await expect_error(
        vapi.users.ListApiKeys(user_pb2.ListApiKeysRequest(user_id="00000000-0000-0000-0000-000000000000")),
        NOT_FOUND,
        "USER_NOT_FOUND",
    )


async def test_validation_is_precise_and_never_echoes_the_secret(vapi):
    user = await create_user(vapi, "alice")
    bad = "short\n"
    error = await expect_error(
        vapi.users.CreateApiKey(
            user_pb2.CreateApiKeyRequest(
                request_id=rid(), user_id="nope", provider="OpenAI", label="x" * 101, secret=bad
            )
        ),
        INVALID,
        "INVALID_ARGUMENT",
    )
    violations = field_violations(error)
    assert set(violations) == {"user_id", "provider", "label", "secret"}
    # Both secret problems are listed (the dict keeps one per field; the message has all).
    assert "secret: must be at least 8 characters" in error.details()
    assert "secret: must not contain control characters" in error.details()
    assert violations["provider"] == "must be 1 to 64 characters of a-z, 0-9, '_', '.', '-'"
    assert violations["label"] == "must be at most 100 characters (got 101)"
    assert bad.strip() not in error.details()
    long_secret = "a" * 4097
    error = await expect_error(
        vapi.users.CreateApiKey(
            user_pb2.CreateApiKeyRequest(request_id=rid(), user_id=user.id, provider="openai", secret=long_secret)
        ),
        INVALID,
    )
    assert field_violations(error) == {"secret": "must be at most 4096 characters"}
    error = await expect_error(
        vapi.users.CreateApiKey(
            user_pb2.CreateApiKeyRequest(request_id=rid(), user_id=user.id, provider="", secret="tab\tinside-key")
        ),
        INVALID,
    )
    assert field_violations(error) == {"provider": "is required", "secret": "must not contain control characters"}
    key = await create_key(vapi, user.id, new_secret())
    for paths in ([], ["provider"], ["label", "label"]):
        await expect_error(
            vapi.users.UpdateApiKey(
                user_pb2.UpdateApiKeyRequest(
                    request_id=rid(),
                    user_id=user.id,
                    api_key_id=key.id,
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                )
            ),
            INVALID,
        )
    error = await expect_error(
        vapi.users.UpdateApiKey(
            user_pb2.UpdateApiKeyRequest(
                request_id=rid(),
                user_id=user.id,
                api_key_id=key.id,
                secret="tiny",
                update_mask=field_mask_pb2.FieldMask(paths=["secret"]),
            )
        ),
        INVALID,
    )
    assert field_violations(error) == {"secret": "must be at least 8 characters"}
    missing = await create_user(vapi, "ghost")
    await vapi.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=missing.id))
    await expect_error(
        vapi.users.CreateApiKey(
            user_pb2.CreateApiKeyRequest(request_id=rid(), user_id=missing.id, provider="openai", secret=new_secret())
        ),
        NOT_FOUND,
        "USER_NOT_FOUND",
    )


async def test_idempotent_replay(vapi):
    user = await create_user(vapi, "alice")
    secret = new_secret()
    request = user_pb2.CreateApiKeyRequest(request_id=rid(), user_id=user.id, provider="anthropic", secret=secret)
    first, *replays = await asyncio.gather(*(vapi.users.CreateApiKey(request) for _ in range(4)))
    assert all(r == first for r in replays)
    assert len(await sql(vapi.database_url, "SELECT 1 FROM user_api_keys")) == 1
    changed = user_pb2.CreateApiKeyRequest()
    changed.CopyFrom(request)
    changed.provider = "openai"
    await expect_error(vapi.users.CreateApiKey(changed), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    # The secret is not part of the fingerprint (it is stored nowhere, not even hashed): a replay
    # with another secret is still the same request and returns the first response.
    changed.provider, changed.secret = "anthropic", new_secret()
    assert await vapi.users.CreateApiKey(changed) == first
    assert (await reveal(vapi, user.id, first.api_key.id)).secret == secret
    await assert_no_secret_stored_in_clear(vapi.database_url, [secret, changed.secret])


async def test_ciphertext_copied_to_another_row_does_not_decrypt(vapi, caplog):
    caplog.set_level(logging.DEBUG)
    user = await create_user(vapi, "alice")
    secret_a, secret_b = new_secret(), new_secret()
    a = await create_key(vapi, user.id, secret_a)
    b = await create_key(vapi, user.id, secret_b)
    await sql(
        vapi.database_url,
        """UPDATE user_api_keys AS dst
              SET ciphertext = src.ciphertext, nonce = src.nonce, wrapped_key = src.wrapped_key,
                  key_nonce = src.key_nonce
             FROM user_api_keys AS src
            WHERE src.api_key_id = %s AND dst.api_key_id = %s""",
        (a.id, b.id),
    )
    error = await expect_error(reveal(vapi, user.id, b.id), FAILED, "SECRET_UNREADABLE")
    assert secret_a not in error.details() and secret_b not in error.details()
    assert (await reveal(vapi, user.id, a.id)).secret == secret_a
    # A failed reveal changes nothing: no audit record, no last_used_time.
    audits = await sql(vapi.database_url, "SELECT 1 FROM audit_events WHERE target_id = %s", (b.id,))
    assert len(audits) == 1  # the CreateApiKey record only
    assert "does not decrypt" in caplog.text and secret_a not in caplog.text


async def test_without_a_key_ring_the_vault_says_so_and_the_rest_works(api):
    user = await create_user(api, "alice")
    await expect_error(
        api.users.CreateApiKey(
            user_pb2.CreateApiKeyRequest(request_id=rid(), user_id=user.id, provider="openai", secret=new_secret())
        ),
        FAILED,
        "VAULT_NOT_CONFIGURED",
    )
    listed = await api.users.ListApiKeys(user_pb2.ListApiKeysRequest(user_id=user.id))
    assert list(listed.api_keys) == []


async def test_delete_user_deletes_their_keys(vapi):
    user = await create_user(vapi, "alice")
    await create_key(vapi, user.id, new_secret())
    await vapi.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))
    assert await sql(vapi.database_url, "SELECT 1 FROM user_api_keys") == []


# ---- rotation -----------------------------------------------------------------------------------


async def rewrap_cli(url: str, *versions: int, batch: int) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "QDATA_KEY_RING": ring_text(*versions),
        "QDATA_ALLOW_INSECURE": "true",
        "QDATA_LOG_LEVEL": "DEBUG",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qdata_server",
        "rewrap-keys",
        "--batch",
        str(batch),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


async def test_rotation_rewrap_under_live_traffic_and_removal_of_the_old_key(database_url, caplog):
    caplog.set_level(logging.DEBUG)
    secrets: dict[str, tuple[str, str]] = {}  # key id -> (user id, secret)

    # 1. Ring {1}: keys wrapped by version 1.
    first = await start_api(database_url, vault_settings(1))
    try:
        users = [await create_user(first, f"user{i}") for i in range(3)]
        for i in range(24):
            user = users[i % 3]
            secret = new_secret()
            key = await create_key(first, user.id, secret, provider=f"p{i % 4}")
            assert key.key_version == 1
            secrets[key.id] = (user.id, secret)
    finally:
        await stop_api(first)
    old_ciphertexts = {
        str(r["api_key_id"]): bytes(r["ciphertext"])
        for r in await sql(database_url, "SELECT api_key_id, ciphertext FROM user_api_keys")
    }

    # 2. Ring {2} before any rewrap: the server refuses to start and says which version it needs.
    with pytest.raises(StartupError) as refused:
        await start_api(database_url, vault_settings(2))
    message = str(refused.value)
    assert "version 1 (24 keys)" in message and "rewrap-keys" in message and KEYS[2] not in message

    # 3. Ring {1, 2}: version 2 is primary for new keys, version 1 keys still open.
    both = await start_api(database_url, vault_settings(1, 2))
    try:
        newer = await create_key(both, users[0].id, secret := new_secret())
        assert newer.key_version == 2
        secrets[newer.id] = (users[0].id, secret)
        for key_id, (user_id, secret) in list(secrets.items())[:3]:
            assert (await reveal(both, user_id, key_id)).secret == secret

        # 4. Rewrap online (the real CLI, small batches) while reveals and creates keep coming.
        stop = asyncio.Event()
        reveals = 0

        async def traffic() -> None:
            nonlocal reveals
            while not stop.is_set():
                key_id, (user_id, secret) = random.choice(list(secrets.items()))
                answer = await reveal(both, user_id, key_id)
                assert answer.secret == secret
                reveals += 1
                if reveals % 5 == 0:
                    fresh = new_secret()
                    made = await create_key(both, user_id, fresh)
                    assert made.key_version == 2
                    secrets[made.id] = (user_id, fresh)

        workers = [asyncio.create_task(traffic()) for _ in range(4)]
        try:
            code, out, err = await rewrap_cli(database_url, 1, 2, batch=3)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        assert code == 0, err
        assert "24 key(s) to re-wrap under version 2" in out and "24/24 re-wrapped" in out and "done" in out
        assert reveals > 0
        for text in (out, err):
            assert not any(s in text for _, s in secrets.values()) and KEYS[1] not in text and KEYS[2] not in text
        versions = await sql(database_url, "SELECT DISTINCT key_version FROM user_api_keys")
        assert versions == [{"key_version": 2}]
        # Only the wrapped data key changed: the secrets' ciphertexts are the same bytes.
        after = {
            str(r["api_key_id"]): bytes(r["ciphertext"])
            for r in await sql(database_url, "SELECT api_key_id, ciphertext FROM user_api_keys")
        }
        assert all(after[k] == v for k, v in old_ciphertexts.items())

        # A second run finds nothing left to do (resumable, idempotent).
        code, out, _ = await rewrap_cli(database_url, 1, 2, batch=3)
        assert code == 0 and "0 key(s) to re-wrap" in out
    finally:
        await stop_api(both)

    # 5. Ring {2} only: the old key is gone, the server starts and opens every stored key.
    last = await start_api(database_url, vault_settings(2))
    try:
        for key_id, (user_id, secret) in secrets.items():
            answer = await reveal(last, user_id, key_id)
            assert answer.secret == secret and answer.api_key.key_version == 2
    finally:
        await stop_api(last)

    every = [s for _, s in secrets.values()]
    await assert_no_secret_stored_in_clear(database_url, every)
    assert not any(s in caplog.text for s in every)
    assert KEYS[1] not in caplog.text and KEYS[2] not in caplog.text
