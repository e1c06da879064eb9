"""The API key vault's crypto and key ring parsing (users/vault.py), without a database."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
import uuid

import pytest

from qdata_server.config import ConfigError, Settings
from qdata_server.users import vault

K1, K2 = os.urandom(32), os.urandom(32)
B1, B2 = base64.b64encode(K1).decode(), base64.urlsafe_b64encode(K2).decode()
USER, KEY = uuid.uuid4(), uuid.uuid4()
SECRET = "sk-test-" + "x" * 40 + "WXYZ"


def ring(*versions: int, primary: int | None = None) -> vault.KeyRing:
    keys = {1: K1, 2: K2}
    chosen = {v: keys[v] for v in versions}
    return vault.KeyRing(keys=chosen, primary=primary or max(chosen))


def test_round_trip_with_fresh_keys_and_nonces():
    r = ring(1)
    a = vault.seal(r, USER, KEY, SECRET)
    b = vault.seal(r, USER, KEY, SECRET)
    assert vault.open_secret(r, USER, KEY, a) == SECRET
    assert a.key_version == 1 and len(a.wrapped_key) == 48 and len(a.nonce) == len(a.key_nonce) == 12
    # A fresh data key and fresh nonces every time: nothing repeats between two encryptions.
    assert a.nonce != b.nonce and a.key_nonce != b.key_nonce and a.wrapped_key != b.wrapped_key
    assert a.ciphertext != b.ciphertext
    assert SECRET.encode() not in a.ciphertext + a.wrapped_key


def test_ciphertext_is_bound_to_its_row():
    r = ring(1)
    sealed = vault.seal(r, USER, KEY, SECRET)
    with pytest.raises(vault.SecretUnreadable):
        vault.open_secret(r, USER, uuid.uuid4(), sealed)
    with pytest.raises(vault.SecretUnreadable):
        vault.open_secret(r, uuid.uuid4(), KEY, sealed)


def test_tampering_is_detected():
    r = ring(1)
    sealed = vault.seal(r, USER, KEY, SECRET)
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(vault.SecretUnreadable):
        vault.open_secret(r, USER, KEY, dataclasses.replace(sealed, ciphertext=flipped))
    with pytest.raises(vault.SecretUnreadable):
        vault.open_secret(r, USER, KEY, dataclasses.replace(sealed, nonce=os.urandom(12)))
    # The wrapped key names its KEK version in its associated data: relabelling the version fails.
    both = ring(1, 2)
    with pytest.raises(vault.SecretUnreadable):
        vault.open_secret(both, USER, KEY, dataclasses.replace(sealed, key_version=2))


def test_missing_version_and_rewrap():
    old = vault.seal(ring(1), USER, KEY, SECRET)
    with pytest.raises(vault.MissingKeyVersion) as caught:
        vault.open_secret(ring(2), USER, KEY, old)
    assert caught.value.version == 1
    both = ring(1, 2)
    fresh = vault.rewrap(both, USER, KEY, old)
    assert fresh.key_version == 2 and fresh.ciphertext == old.ciphertext and fresh.nonce == old.nonce
    assert vault.open_secret(ring(2), USER, KEY, fresh) == SECRET


def test_parse_env_ring():
    r = vault.parse_ring(f"1:{B1}, 2:{B2}")
    assert r.versions == [1, 2] and r.primary == 2 and r.keys[2] == K2
    assert B1 not in repr(r) and "primary=2" in repr(r)
    for bad, match in [
        ("", "holds no keys"),
        (f"{B1}", "<version>:<base64 key>"),
        (f"x:{B1}", "integers"),
        (f"0:{B1}", "1 to"),
        (f"1:{B1},1:{B2}", "twice"),
        ("1:c2hvcnQ=", "32 bytes"),
        ("1:***", "base64"),
    ]:
        with pytest.raises(ConfigError, match=match):
            vault.parse_ring(bad)


def test_parse_file_ring(tmp_path):
    path = tmp_path / "ring.json"
    path.write_text(json.dumps({"keys": {"1": B1, "2": B2}, "primary": 1}))
    r = vault.load_key_ring(Settings(database_url="postgresql://x", key_ring_file=str(path)))
    assert r.primary == 1 and r.versions == [1, 2]
    path.write_text(json.dumps({"keys": {"1": B1}, "primary": 3}))
    with pytest.raises(ConfigError, match="primary version 3"):
        vault.load_key_ring(Settings(database_url="postgresql://x", key_ring_file=str(path)))
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        vault.load_key_ring(Settings(database_url="postgresql://x", key_ring_file=str(path)))
    with pytest.raises(ConfigError, match="cannot read"):
        vault.load_key_ring(Settings(database_url="postgresql://x", key_ring_file=str(tmp_path / "none.json")))


def test_no_ring_with_database_url_and_a_generated_one_when_embedded(tmp_path, caplog):
    assert vault.load_key_ring(Settings(database_url="postgresql://x")) is None
    settings = Settings(database_url="", embedded_data_dir=str(tmp_path / ".qdata" / "pgdata"))
    first = vault.load_key_ring(settings)
    path = tmp_path / ".qdata" / "keyring.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "generated a development key ring" in caplog.text
    again = vault.load_key_ring(settings)
    assert again.keys == first.keys and again.primary == 1
    key_text = json.loads(path.read_text())["keys"]["1"]
    assert key_text not in caplog.text


def test_settings_from_env_and_repr():
    settings = Settings.from_env({"QDATA_KEY_RING": f"1:{B1}"})
    assert settings.key_ring == f"1:{B1}" and B1 not in repr(settings)
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env({"QDATA_KEY_RING": f"1:{B1}", "QDATA_KEY_RING_FILE": "/x"})
