"""TLS, mutual TLS with certificate identities as callers, and the separate plaintext health port.

Every certificate is made here (cryptography's x509 builder, P-256 keys, valid for one hour) in a
temporary directory: a CA, a server certificate for 127.0.0.1/localhost, client certificates
from that CA (one mapped to a service, one not) and one from another CA carrying the mapped
identity (so only verification can refuse it).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import time
import uuid
from pathlib import Path

import grpc
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg.rows import dict_row

from qdata.v1 import user_pb2, user_pb2_grpc
from qdata_server import auth
from qdata_server.app import QdataServer
from qdata_server.config import ConfigError, Settings, check_tls
from tests.support.calls import PASSWORD, error_info, expect_error, rid
from tests.support.server import TEST_SETTINGS, serving_url

BILLING_ID = "spiffe://qdata.test/ns/shop/sa/billing"
ADMIN_TOKEN = "qdt_admin-" + uuid.uuid4().hex


@dataclasses.dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    # name -> (certificate PEM, key PEM)
    clients: dict[str, tuple[bytes, bytes]]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(subject: str, key, issuer: tuple[x509.Certificate, object] | None, *, ca=False, sans=(), client=False):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = x509.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = _issue("qdata test CA", ca_key, None, ca=True)
    other_ca = _issue("another CA", other_key, None, ca=True)
    server_key = _key()
    server = _issue(
        "qdata",
        server_key,
        (ca, ca_key),
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    clients = {}
    for name, issuer, sans in [
        ("billing", (ca, ca_key), [x509.UniformResourceIdentifier(BILLING_ID)]),
        ("unmapped", (ca, ca_key), [x509.DNSName("nobody.qdata.test")]),
        ("forged", (other_ca, other_key), [x509.UniformResourceIdentifier(BILLING_ID)]),
    ]:
        key = _key()
        clients[name] = (_pem(_issue(f"{name}-client", key, issuer, sans=sans, client=True)), _key_pem(key))
    (root / "ca.pem").write_bytes(_pem(ca))
    (root / "server.pem").write_bytes(_pem(server))
    (root / "server.key").write_bytes(_key_pem(server_key))
    (root / "server.key").chmod(0o600)
    return Pki(ca=root / "ca.pem", server_cert=root / "server.pem", server_key=root / "server.key", clients=clients)


def _settings(pki: Pki, *, mutual: bool) -> Settings:
    entries = f"admin {auth.hash_token(ADMIN_TOKEN)} *"
    if mutual:
        entries += f"\nbilling cert:{BILLING_ID} users.read,users.write"
    return dataclasses.replace(
        TEST_SETTINGS,
        allow_insecure=False,
        auth_tokens=auth.parse_tokens(entries, "test"),
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca) if mutual else "",
        health_listen_address="127.0.0.1:0",
    )


def _channel(pki: Pki, port: int, client: str | None = None) -> grpc.aio.Channel:
    cert, key = pki.clients[client] if client else (None, None)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(), private_key=key, certificate_chain=cert
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


def _create(name: str) -> user_pb2.CreateUserRequest:
    return user_pb2.CreateUserRequest(
        request_id=rid(), email=f"{name}@example.com", username=name, display_name=name, password=PASSWORD
    )


@pytest.fixture
async def tls_server(database_url, pki):
    server = QdataServer(_settings(pki, mutual=False), serving_url(database_url))
    await server.start("127.0.0.1:0")
    try:
        yield server
    finally:
        await server.stop(grace=0.5)


@pytest.fixture
async def mtls_server(database_url, pki):
    server = QdataServer(_settings(pki, mutual=True), serving_url(database_url))
    await server.start("127.0.0.1:0")
    try:
        yield server
    finally:
        await server.stop(grace=0.5)


async def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(tls_server, pki):
    auth_md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    async with _channel(pki, tls_server.port) as channel:
        created = await user_pb2_grpc.UserServiceStub(channel).CreateUser(_create("tls"), metadata=auth_md, timeout=10)
        assert created.user.username == "tls"
        # TLS alone identifies no caller: a call without a token is still refused.
        await expect_error(
            user_pb2_grpc.UserServiceStub(channel).GetUser(user_pb2.GetUserRequest(id=created.user.id), timeout=10),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_server.port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_clients_without_a_certificate_from_the_ca(mtls_server, pki):
    for client in (None, "forged"):
        async with _channel(pki, mtls_server.port, client) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, client


async def test_mtls_certificate_identity_is_the_caller(mtls_server, pki, database_url):
    async with _channel(pki, mtls_server.port, "billing") as channel:
        users = user_pb2_grpc.UserServiceStub(channel)
        created = await users.CreateUser(_create("mtlsuser"), timeout=10)
        fetched = await users.GetUser(user_pb2.GetUserRequest(id=created.user.id), timeout=10)
        assert fetched.user.username == "mtlsuser"
        # Outside the mapped permissions.
        error = await expect_error(
            users.ListAuditEvents(user_pb2.ListAuditEventsRequest(), timeout=10), grpc.StatusCode.PERMISSION_DENIED
        )
        assert error_info(error).metadata["service"] == "billing"
        # A bearer token wins over the certificate.
        admin = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        await users.ListAuditEvents(user_pb2.ListAuditEventsRequest(), metadata=admin, timeout=10)
        # A bad token is not rescued by the certificate.
        await expect_error(
            users.GetUser(user_pb2.GetUserRequest(id=created.user.id), metadata=(("authorization", "Bearer x"),)),
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_TOKEN",
        )
    async with _channel(pki, mtls_server.port, "unmapped") as channel:
        await expect_error(
            user_pb2_grpc.UserServiceStub(channel).GetUser(user_pb2.GetUserRequest(id=created.user.id), timeout=10),
            grpc.StatusCode.UNAUTHENTICATED,
            "UNAUTHENTICATED",
        )
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        rows = await (await conn.execute("SELECT actor, action FROM audit_events")).fetchall()
    assert rows and {row["actor"] for row in rows} == {"billing"}


async def test_health_port_is_plaintext_and_serves_only_health(mtls_server):
    assert mtls_server.health_port and mtls_server.health_port != mtls_server.port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mtls_server.health_port}") as plain:
        health = health_pb2_grpc.HealthStub(plain)
        response = await health.Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        await expect_error(
            user_pb2_grpc.UserServiceStub(plain).GetUser(user_pb2.GetUserRequest(), timeout=3),
            grpc.StatusCode.UNIMPLEMENTED,
        )
        # The same servicer: the main server's status changes show here.
        await mtls_server.health.enter_graceful_shutdown()
        response = await health.Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


def _env(pki: Pki, **extra: str) -> dict[str, str]:
    return {
        "QDATA_TLS_CERT_FILE": str(pki.server_cert),
        "QDATA_TLS_KEY_FILE": str(pki.server_key),
        "QDATA_TLS_CLIENT_CA_FILE": str(pki.ca),
        **extra,
    }


def test_tls_settings_are_validated(pki, tmp_path):
    settings = Settings.from_env(_env(pki, QDATA_AUTH_TOKENS=f"billing cert:{BILLING_ID} users.read"))
    material = check_tls(settings)
    assert material is not None and material.client_ca == pki.ca.read_bytes()
    assert "PRIVATE" not in repr(material)
    assert [e.identity for e in settings.auth_tokens] == [BILLING_ID]

    def refused(env: dict[str, str]) -> str:
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(env)
        return str(caught.value)

    assert "both" in refused({"QDATA_TLS_CERT_FILE": str(pki.server_cert)})
    assert "needs QDATA_TLS_CERT_FILE" in refused({"QDATA_TLS_CLIENT_CA_FILE": str(pki.ca)})
    missing = str(tmp_path / "missing.pem")
    assert "cannot be read" in refused(_env(pki, QDATA_TLS_KEY_FILE=missing))
    # A certificate given as the key: named, content never shown.
    message = refused(_env(pki, QDATA_TLS_KEY_FILE=str(pki.server_cert)))
    assert "QDATA_TLS_KEY_FILE" in message and "BEGIN" not in message
    assert "mutual TLS" in refused({"QDATA_AUTH_TOKENS": f"billing cert:{BILLING_ID} users.read"})
    assert "differ" in refused(
        {"QDATA_LISTEN_ADDRESS": "0.0.0.0:50051", "QDATA_HEALTH_LISTEN_ADDRESS": "0.0.0.0:50051"}
    )
    assert "twice" in refused(_env(pki, QDATA_AUTH_TOKENS=f"a cert:{BILLING_ID} users.read;b cert:{BILLING_ID} *"))


def test_workers_share_the_health_port_beside_a_tls_port(database_url, pki, tmp_path):
    from tests.support.processes import ServerProcess, free_port

    health_address = f"127.0.0.1:{free_port()}"
    env = {
        "DATABASE_URL": serving_url(database_url),
        "QDATA_OWNER_DATABASE_URL": database_url,
        "QDATA_WORKERS": "2",
        "QDATA_TLS_CERT_FILE": str(pki.server_cert),
        "QDATA_TLS_KEY_FILE": str(pki.server_key),
        "QDATA_HEALTH_LISTEN_ADDRESS": health_address,
    }
    server = ServerProcess(env, tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 60
        status = None
        with grpc.insecure_channel(health_address) as channel:
            while time.monotonic() < deadline and status != health_pb2.HealthCheckResponse.SERVING:
                assert server.process.poll() is None, server.output()
                try:
                    status = (
                        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    )
                except grpc.RpcError:
                    time.sleep(0.2)
        assert status == health_pb2.HealthCheckResponse.SERVING, server.output()
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        with grpc.secure_channel(server.address, credentials) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        code = server.stop()
    output = server.output()
    assert code == 0, output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert len({line["pid"] for line in lines if line.get("message") == "serving health"}) == 2, output
    assert "Traceback" not in output and "PRIVATE KEY" not in output
