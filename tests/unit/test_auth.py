"""The permission table, the token configuration format and the start-up rules (no database)."""

from __future__ import annotations

import asyncio
import dataclasses
import io

import grpc
import pytest

from qdata_server import auth, serve
from qdata_server.app import QdataServer
from qdata_server.config import ConfigError, Settings
from qdata_server.errors import PermissionDenied, Unauthenticated

TOKEN = "qdt_unit-test-token-0123456789abcdefghijklmnop"


def test_the_table_covers_exactly_the_rpcs_of_the_five_services():
    without_permission, unknown = auth.check_table()
    assert without_permission == set(), f"RPCs without a permission: {sorted(without_permission)}"
    assert unknown == set(), f"table entries that name no RPC: {sorted(unknown)}"
    assert len(auth.SERVICE_DESCRIPTORS) == 5


def test_permissions_follow_the_family_dot_action_shape():
    for method, permission in auth.PERMISSIONS.items():
        family, _, action = permission.partition(".")
        assert family and action and permission == permission.lower(), method
    assert auth.PERMISSIONS["/qdata.v1.UserService/RevealApiKey"] == "keys.reveal"
    assert auth.PERMISSIONS["/qdata.v1.UserService/ListAuditEvents"] == "audit.read"
    assert auth.PERMISSIONS["/qdata.v1.LedgerService/VerifyLedger"] == "ledger.admin"
    assert auth.PERMISSIONS["/qdata.v1.UsageService/UpsertModel"] == "catalog.write"


def test_wildcards():
    assert auth.grants_allow({"*"}, "keys.reveal")
    assert auth.grants_allow({"ledger.*"}, "ledger.admin")
    assert not auth.grants_allow({"ledger.*"}, "users.read")
    # users.* does not reach the reveal or audit permissions: those are their own families.
    assert not auth.grants_allow({"users.*"}, "keys.reveal")
    assert not auth.grants_allow({"users.*"}, "audit.read")
    assert not auth.grants_allow({"users.read"}, "users.write")
    # chat.shared.read is in the chat family; chat.read does not reach it, nor it chat.read.
    assert auth.grants_allow({"chat.*"}, "chat.shared.read")
    assert not auth.grants_allow({"chat.read"}, "chat.shared.read")
    assert not auth.grants_allow({"chat.shared.read"}, "chat.read")


def test_parse_tokens_reads_entries_separated_by_newlines_or_semicolons():
    text = f"""
    # the API gateway
    gateway {auth.hash_token(TOKEN)} users.read,ledger.*
    billing {auth.hash_token("other")} ledger.write;  admin {auth.hash_token("third")} *
    """
    entries = auth.parse_tokens(text, "test")
    assert [e.service for e in entries] == ["gateway", "billing", "admin"]
    assert entries[0].grants == {"users.read", "ledger.*"}
    assert entries[0].digest == auth.token_digest(TOKEN)
    assert TOKEN not in repr(entries) and auth.hash_token(TOKEN)[7:] not in repr(entries)


@pytest.mark.parametrize(
    "line",
    [
        f"gw {TOKEN} users.read",  # a plain token instead of its digest
        "gw sha256:abc users.read",
        f"gw {auth.hash_token(TOKEN)} users.fly",
        f"gw {auth.hash_token(TOKEN)} nothing.*",
        f"gw {auth.hash_token(TOKEN)} chat.shared.*",  # a family is one part
        f"gw {auth.hash_token(TOKEN)} chat.shared.write",
        f"gw {auth.hash_token(TOKEN)} ,",
        f"anonymous {auth.hash_token(TOKEN)} *",
        f"gw {auth.hash_token(TOKEN)}",
        f"gw {auth.hash_token(TOKEN)} *; other {auth.hash_token(TOKEN)} *",
    ],
)
def test_parse_tokens_rejects_malformed_entries_without_echoing_tokens(line):
    with pytest.raises(ConfigError) as caught:
        auth.parse_tokens(line, "QDATA_AUTH_TOKENS")
    assert TOKEN not in str(caught.value)


def test_settings_read_tokens_from_env_and_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"billing {auth.hash_token('file-token')} ledger.write\n")
    settings = Settings.from_env(
        {
            "QDATA_AUTH_TOKENS": f"gateway {auth.hash_token(TOKEN)} *",
            "QDATA_AUTH_TOKENS_FILE": str(path),
            "QDATA_REFLECTION": "false",
        }
    )
    assert [e.service for e in settings.auth_tokens] == ["gateway", "billing"]
    assert settings.reflection is False and settings.allow_insecure is False
    with pytest.raises(ConfigError, match="QDATA_AUTH_TOKENS_FILE"):
        Settings.from_env({"QDATA_AUTH_TOKENS_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="QDATA_ALLOW_INSECURE"):
        Settings.from_env({"QDATA_ALLOW_INSECURE": "maybe"})


def test_authorize():
    settings = Settings.from_env({"QDATA_AUTH_TOKENS": f"gateway {auth.hash_token(TOKEN)} users.read"})
    checker = auth.Authenticator.from_settings(settings)
    get_user = "/qdata.v1.UserService/GetUser"
    assert checker.authorize(get_user, (("authorization", f"Bearer {TOKEN}"),)).service == "gateway"
    assert checker.authorize(get_user, (("authorization", f"bearer  {TOKEN} "),)).service == "gateway"
    with pytest.raises(Unauthenticated) as missing:
        checker.authorize(get_user, ())
    assert missing.value.reason == "UNAUTHENTICATED"
    for value in (f"Basic {TOKEN}", "Bearer", "Bearer wrong", TOKEN):
        with pytest.raises(Unauthenticated) as bad:
            checker.authorize(get_user, (("authorization", value),))
        assert bad.value.reason == "INVALID_TOKEN" and TOKEN not in bad.value.message
    with pytest.raises(PermissionDenied) as denied:
        checker.authorize("/qdata.v1.UserService/CreateUser", (("authorization", f"Bearer {TOKEN}"),))
    assert denied.value.reason == "MISSING_PERMISSION"
    assert denied.value.metadata["permission"] == "users.write"
    # Health and reflection need no token; an RPC missing from the table is refused.
    assert checker.authorize("/grpc.health.v1.Health/Check", ()).service == auth.ANONYMOUS
    with pytest.raises(PermissionDenied):
        checker.authorize("/qdata.v1.UserService/Unlisted", (("authorization", f"Bearer {TOKEN}"),))


def test_production_without_tokens_refuses_to_start(capsys):
    production = Settings(database_url="postgresql://nowhere.invalid/qdata")
    assert "QDATA_ALLOW_INSECURE" in auth.startup_problem(production)
    # serve() refuses before it touches the database.
    assert serve.serve(production) == 2
    assert "QDATA_ALLOW_INSECURE" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        auth.Authenticator.from_settings(production)
    with pytest.raises(ConfigError):
        asyncio.run(QdataServer(production, production.database_url).start("127.0.0.1:0"))

    insecure = dataclasses.replace(production, allow_insecure=True)
    assert auth.startup_problem(insecure) is None
    assert auth.Authenticator.from_settings(insecure).insecure
    assert auth.with_dev_token(insecure) == (insecure, None)


def test_insecure_does_not_switch_off_configured_tokens():
    settings = Settings(
        database_url="postgresql://x/y",
        allow_insecure=True,
        auth_tokens=auth.parse_tokens(f"gw {auth.hash_token(TOKEN)} *", "test"),
    )
    checker = auth.Authenticator.from_settings(settings)
    assert not checker.insecure
    with pytest.raises(Unauthenticated):
        checker.authorize("/qdata.v1.UserService/GetUser", ())


def test_embedded_without_tokens_gets_a_development_token_printed_in_the_banner():
    embedded = Settings()
    assert auth.startup_problem(embedded) is None
    settings, token = auth.with_dev_token(embedded)
    assert token and token.startswith(auth.TOKEN_PREFIX)
    (entry,) = settings.auth_tokens
    assert entry.service == auth.DEV_SERVICE and entry.grants == {"*"}
    checker = auth.Authenticator.from_settings(settings)
    assert checker.authorize("/qdata.v1.LedgerService/VerifyLedger", (("authorization", f"Bearer {token}"),))
    banner = serve._banner("127.0.0.1:50051", embedded=True, dev_token=token)
    assert token in banner and f'-H "authorization: Bearer {token}"' in banner
    # With configured tokens nothing is generated and the banner keeps a placeholder.
    assert auth.with_dev_token(settings) == (settings, None)
    assert "Bearer <token>" in serve._banner("127.0.0.1:50051", embedded=False)


def test_hash_token_command():
    out = io.StringIO()
    assert auth.hash_token_command(io.StringIO(TOKEN + "\n"), out) == 0
    assert out.getvalue() == auth.hash_token(TOKEN) + "\n"
    out = io.StringIO()
    auth.hash_token_command(io.StringIO(""), out)
    token_line, digest_line = out.getvalue().splitlines()
    token = token_line.removeprefix("token: ")
    assert digest_line == auth.hash_token(token)
    assert auth.parse_tokens(f"svc {digest_line} *", "test")[0].digest == auth.token_digest(token)


def test_status_codes():
    assert Unauthenticated("x").code == grpc.StatusCode.UNAUTHENTICATED
    assert PermissionDenied("x").code == grpc.StatusCode.PERMISSION_DENIED


def test_the_banner_names_the_metrics_address_when_metrics_are_on():
    assert "http://127.0.0.1:9464/metrics" in serve._banner(
        "127.0.0.1:50051", embedded=True, metrics_address="127.0.0.1:9464"
    )
    assert "/metrics" not in serve._banner("127.0.0.1:50051", embedded=True)
