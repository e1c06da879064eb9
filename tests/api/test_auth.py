"""Caller authentication and authorization over real gRPC: the permission matrix and its edges.

The server here runs with tokens (TEST_SETTINGS elsewhere is QDATA_ALLOW_INSECURE). For every
RPC of every service, taken from the descriptors: no token and a wrong token get UNAUTHENTICATED,
a token lacking the RPC's permission gets PERMISSION_DENIED, and a token holding exactly that
permission gets through (an empty request then fails, if at all, for its own reasons).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid

import grpc
import psycopg
import pytest
from google.protobuf import message_factory
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from psycopg.rows import dict_row

from qdata.client import AsyncQdataClient, QdataClient, QdataError
from qdata.v1 import user_pb2, user_pb2_grpc
from qdata_server import auth
from qdata_server.auth import hash_token
from tests.support.calls import PASSWORD, rid
from tests.support.server import TEST_SETTINGS, Api, ModuleServer, start_api, stop_api

WRONG_TOKEN = "qdt_" + "wrong" * 9
ADMIN_TOKEN = "qdt_admin-" + uuid.uuid4().hex
SIGNUP_TOKEN = "qdt_signup-" + uuid.uuid4().hex
PERMISSIONS = sorted(auth.KNOWN_PERMISSIONS)


def _with(permission: str) -> str:
    return f"qdt_with-{permission}-{uuid.uuid4().hex}"


def _without(permission: str) -> str:
    return f"qdt_without-{permission}-{uuid.uuid4().hex}"


WITH = {p: _with(p) for p in PERMISSIONS}
WITHOUT = {p: _without(p) for p in PERMISSIONS}


def _entries() -> str:
    lines = [f"admin {hash_token(ADMIN_TOKEN)} *", f"signup-svc {hash_token(SIGNUP_TOKEN)} users.write,users.read"]
    for p in PERMISSIONS:
        lines.append(f"only-{p.replace('.', '-')} {hash_token(WITH[p])} {p}")
        # Everything else, wildcards included where they do not reach p.
        others = sorted(auth.KNOWN_PERMISSIONS - {p})
        lines.append(f"not-{p.replace('.', '-')} {hash_token(WITHOUT[p])} {','.join(others)}")
    return "\n".join(lines)


AUTH_SETTINGS = dataclasses.replace(
    TEST_SETTINGS, allow_insecure=False, auth_tokens=auth.parse_tokens(_entries(), "test")
)
METHODS = [
    (f"/{service.full_name}/{method.name}", method)
    for service in auth.SERVICE_DESCRIPTORS
    for method in service.methods
]


@pytest.fixture
async def secured(module_server: ModuleServer) -> Api:
    """The module's server with caller tokens required."""
    return await module_server.api(AUTH_SETTINGS)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else (("authorization", f"Bearer {token}"),)


async def call(channel: grpc.aio.Channel, path: str, method, token: str | None) -> grpc.aio.AioRpcError | None:
    """Sends an empty request; returns the error, or None if the call succeeded."""
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    kwargs = {"request_serializer": request_type.SerializeToString, "response_deserializer": response_type.FromString}
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, **kwargs)(request_type(), metadata=_metadata(token), timeout=20)
            async for _ in stream:
                pass
        else:
            await channel.unary_unary(path, **kwargs)(request_type(), metadata=_metadata(token), timeout=20)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


def reason_of(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    return "", {}


def test_every_rpc_is_in_the_matrix():
    assert len(METHODS) == len(auth.PERMISSIONS)


async def test_no_token_is_unauthenticated(secured):
    wrong = []
    for path, method in METHODS:
        error = await call(secured.channel, path, method, None)
        if error is None or error.code() != grpc.StatusCode.UNAUTHENTICATED or reason_of(error)[0] != "UNAUTHENTICATED":
            wrong.append((path, error and error.code()))
    assert wrong == []


async def test_wrong_token_is_unauthenticated(secured):
    wrong = []
    for path, method in METHODS:
        error = await call(secured.channel, path, method, WRONG_TOKEN)
        if error is None or error.code() != grpc.StatusCode.UNAUTHENTICATED or reason_of(error)[0] != "INVALID_TOKEN":
            wrong.append((path, error and error.code()))
    assert wrong == []


async def test_token_without_the_permission_is_denied(secured):
    wrong = []
    for path, method in METHODS:
        permission = auth.PERMISSIONS[path]
        error = await call(secured.channel, path, method, WITHOUT[permission])
        if error is None or error.code() != grpc.StatusCode.PERMISSION_DENIED:
            wrong.append((path, error and error.code()))
            continue
        reason, metadata = reason_of(error)
        if reason != "MISSING_PERMISSION" or metadata.get("permission") != permission:
            wrong.append((path, reason, metadata))
    assert wrong == []


async def test_token_with_the_permission_gets_through(secured):
    wrong = []
    for path, method in METHODS:
        error = await call(secured.channel, path, method, WITH[auth.PERMISSIONS[path]])
        if error is not None and error.code() in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
            # An empty request may be invalid, but must not crash the server.
            grpc.StatusCode.INTERNAL,
        ):
            wrong.append((path, error.code(), error.details()))
    assert wrong == []


async def test_health_and_reflection_need_no_token(secured):
    health = health_pb2_grpc.HealthStub(secured.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)

    stub = reflection_pb2_grpc.ServerReflectionStub(secured.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert "qdata.v1.UserService" in names


async def test_reflection_can_be_switched_off(database_url):
    running = await start_api(database_url, dataclasses.replace(AUTH_SETTINGS, reflection=False))
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in responses:
                pass
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # Health still answers.
        await health_pb2_grpc.HealthStub(running.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await stop_api(running)


async def test_audit_records_and_idempotency_name_the_calling_service(secured):
    users = user_pb2_grpc.UserServiceStub(secured.channel)
    request = user_pb2.CreateUserRequest(
        request_id=rid(), email="svc@example.com", username="svcuser", password=PASSWORD
    )
    created = await users.CreateUser(request, metadata=_metadata(SIGNUP_TOKEN), timeout=10)
    # The admin service replaying signup-svc's request_id is a different request (scoped by caller).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await users.CreateUser(request, metadata=_metadata(ADMIN_TOKEN), timeout=10)
    assert reason_of(caught.value)[0] == "EMAIL_TAKEN"
    # signup-svc's own replay returns the first answer.
    again = await users.CreateUser(request, metadata=_metadata(SIGNUP_TOKEN), timeout=10)
    assert again.user.id == created.user.id

    async with await psycopg.AsyncConnection.connect(secured.database_url, row_factory=dict_row) as conn:
        audit = await (await conn.execute("SELECT actor, action FROM audit_events")).fetchall()
        keys = await (
            await conn.execute("SELECT actor FROM idempotency_keys WHERE request_id = %s", (request.request_id,))
        ).fetchall()
    assert [row["actor"] for row in audit] == ["signup-svc"]
    assert [row["actor"] for row in keys] == ["signup-svc"]


async def test_tokens_never_reach_the_log(secured, caplog):
    caplog.set_level(logging.DEBUG)
    users = user_pb2_grpc.UserServiceStub(secured.channel)
    await users.ListUsers(user_pb2.ListUsersRequest(), metadata=_metadata(ADMIN_TOKEN), timeout=10)
    for token in (WRONG_TOKEN, WITHOUT["users.read"], WITH["users.write"]):
        with pytest.raises(grpc.aio.AioRpcError):
            await users.ListUsers(user_pb2.ListUsersRequest(), metadata=_metadata(token), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError):
        await users.GetUser(user_pb2.GetUserRequest(id="nope"), metadata=_metadata(ADMIN_TOKEN), timeout=10)

    rpc_lines = [r for r in caplog.records if r.name == "qdata.rpc"]
    assert {getattr(r, "code", None) for r in rpc_lines} >= {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED"}
    assert {getattr(r, "actor", None) for r in rpc_lines} >= {"admin", "unauthenticated", "not-users-read"}
    everything = caplog.text + "".join(repr(vars(r)) for r in caplog.records)
    for token in (ADMIN_TOKEN, WRONG_TOKEN, WITHOUT["users.read"], WITH["users.write"]):
        assert token not in everything
        assert hash_token(token) not in everything


async def test_the_python_client_sends_its_token(secured):
    async with AsyncQdataClient(secured.address, token=WITH["users.read"]) as qdata:
        listed = await qdata.users.ListUsers(user_pb2.ListUsersRequest())
        assert list(listed.users) == []
        with pytest.raises(QdataError) as denied:
            await qdata.users.CreateUser(
                user_pb2.CreateUserRequest(email="c@example.com", username="client", password=PASSWORD)
            )
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.reason == "MISSING_PERMISSION"
        assert denied.value.metadata["permission"] == "users.write"
    async with AsyncQdataClient(secured.address) as anonymous:
        with pytest.raises(QdataError) as refused:
            await anonymous.users.ListUsers(user_pb2.ListUsersRequest())
        assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")

    def sync_calls() -> None:
        with QdataClient(secured.address, token=ADMIN_TOKEN) as qdata:
            qdata.users.CreateUser(
                user_pb2.CreateUserRequest(email="sync@example.com", username="syncuser", password=PASSWORD)
            )
        with QdataClient(secured.address, token=WRONG_TOKEN) as wrong:
            with pytest.raises(QdataError) as caught:
                wrong.users.ListUsers(user_pb2.ListUsersRequest())
            assert caught.value.reason == "INVALID_TOKEN"

    await asyncio.to_thread(sync_calls)
