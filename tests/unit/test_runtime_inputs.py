"""The runtime's file inputs are read once per process (qdata_server/inputs.py), with the same errors."""

from __future__ import annotations

import base64
import json
import os

import pytest

from qdata_server import inputs
from qdata_server.config import ConfigError, Settings

CERT = b"-----BEGIN CERTIFICATE-----\nnot checked here\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nnot checked here\n-----END PRIVATE KEY-----\n"


def test_tls_files_read_by_from_env_are_not_read_again(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(CERT)
    key.write_bytes(KEY)
    ring = tmp_path / "ring.json"
    ring.write_text(json.dumps({"keys": {"1": base64.b64encode(os.urandom(32)).decode()}}))
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://nowhere.invalid/qdata",
            "QDATA_TLS_CERT_FILE": str(cert),
            "QDATA_TLS_KEY_FILE": str(key),
            "QDATA_KEY_RING_FILE": str(ring),
        }
    )
    assert settings.tls_material is not None and "PRIVATE" not in repr(settings)
    cert.unlink()
    key.unlink()
    loaded = inputs.load(settings)  # the PEM files are gone: only from_env's copy can serve
    assert loaded.tls == settings.tls_material and loaded.tls.private_key == KEY
    assert loaded.key_ring is not None and loaded.key_ring.versions == [1]
    assert "PRIVATE" not in repr(loaded)


def test_settings_built_in_code_are_read_at_load_with_the_same_errors(tmp_path):
    missing = str(tmp_path / "missing.pem")
    settings = Settings(database_url="postgresql://nowhere.invalid/qdata", tls_cert_file=missing, tls_key_file=missing)
    with pytest.raises(ConfigError, match=r"QDATA_TLS_CERT_FILE .* cannot be read"):
        inputs.load(settings)
    with pytest.raises(ConfigError, match="cannot read the key ring file"):
        inputs.load(Settings(database_url="postgresql://nowhere.invalid/qdata", key_ring_file=missing))
    assert inputs.load(Settings(database_url="postgresql://nowhere.invalid/qdata")) == inputs.RuntimeInputs(None, None)


def test_the_command_line_turns_a_refused_start_into_exit_1_with_its_message(tmp_path, monkeypatch, capsys):
    from qdata_server import logs
    from qdata_server.__main__ import main

    monkeypatch.setattr(logs, "configure", lambda level: None)  # keep pytest's log handlers
    monkeypatch.setenv("DATABASE_URL", "postgresql://nowhere.invalid/qdata")
    monkeypatch.setenv("QDATA_ALLOW_INSECURE", "true")
    monkeypatch.setenv("QDATA_LISTEN_ADDRESS", "127.0.0.1:0")
    monkeypatch.setenv("QDATA_KEY_RING_FILE", str(tmp_path / "missing.json"))
    assert main(["serve"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("configuration error: cannot read the key ring file "), err
