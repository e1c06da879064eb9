"""The runtime every service shares: health, reflection, errors, deadlines, cancellation, logs."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qdata.v1 import chat_pb2, user_pb2
from qdata_server.app import SERVICE_NAMES
from qdata_server.users.service import UserServicer
from tests.support.calls import PASSWORD, create_user, error_info, expect_error, rid
from tests.support.database import pool_drained
from tests.support.server import start_api, stop_api

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


async def health_status(api, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(api.channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status


async def test_health_reports_serving_for_the_server_and_each_service(api):
    for name in ("", *SERVICE_NAMES):
        assert await health_status(api, name) == health_pb2.HealthCheckResponse.SERVING


def grpcurl(api, *args: str, data: str | None = None) -> subprocess.CompletedProcess:
    command = [GRPCURL, "-plaintext", "-max-time", "10"]
    if data is not None:
        command += ["-d", data]
    return subprocess.run([*command, api.address, *args], capture_output=True, text=True, timeout=20, check=False)


async def test_reflection_lets_grpcurl_list_describe_and_call(api):
    listed = await asyncio.to_thread(grpcurl, api, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert set(SERVICE_NAMES) <= services
    assert "grpc.health.v1.Health" in services

    described = await asyncio.to_thread(grpcurl, api, "describe", "qdata.v1.UserService")
    assert described.returncode == 0 and "rpc CreateUser" in described.stdout

    body = json.dumps({"requestId": rid(), "email": "op@example.com", "username": "operator", "password": PASSWORD})
    created = await asyncio.to_thread(grpcurl, api, "qdata.v1.UserService/CreateUser", data=body)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["user"]["username"] == "operator"

    login = json.dumps({"login": "op@example.com", "password": PASSWORD})
    answer = await asyncio.to_thread(grpcurl, api, "qdata.v1.UserService/Authenticate", data=login)
    assert json.loads(answer.stdout)["outcome"] == "AUTHENTICATE_OUTCOME_SUCCESS"


async def test_unimplemented_rpcs_say_so(database_url, monkeypatch):
    # Every RPC is implemented; a servicer without ListAuditEvents falls back to the generated
    # base class, which raises NotImplementedError.
    monkeypatch.delattr(UserServicer, "ListAuditEvents")
    api = await start_api(database_url)
    try:
        error = await expect_error(
            api.users.ListAuditEvents(user_pb2.ListAuditEventsRequest()),
            grpc.StatusCode.UNIMPLEMENTED,
            "NOT_IMPLEMENTED",
        )
    finally:
        await stop_api(api)
    assert "qdata.v1.UserService/ListAuditEvents is not implemented yet" in error.details()


async def test_streaming_rpc_errors_get_the_same_mapping(api):
    # ChatService.ExportSession, an async generator.
    stream = api.chat.ExportSession(chat_pb2.ExportSessionRequest())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "INVALID_ARGUMENT"


async def test_unknown_method_is_unimplemented(api):
    call = api.channel.unary_unary("/qdata.v1.UserService/NoSuchMethod")(b"")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_data_survives_a_server_restart(database_url):
    first = await start_api(database_url)
    try:
        user = await create_user(first, "persistent")
    finally:
        await stop_api(first)
    second = await start_api(database_url)
    try:
        got = await second.users.GetUser(user_pb2.GetUserRequest(id=user.id))
        assert got.user == user
        login = await second.users.Authenticate(user_pb2.AuthenticateRequest(login="persistent", password=PASSWORD))
        assert login.outcome == user_pb2.AUTHENTICATE_OUTCOME_SUCCESS
    finally:
        await stop_api(second)


class RowLock:
    """Holds FOR UPDATE on one user row from a separate connection until released."""

    def __init__(self, database_url: str, user_id: str):
        self.database_url = database_url
        self.user_id = user_id

    async def __aenter__(self) -> RowLock:
        self.conn = await psycopg.AsyncConnection.connect(self.database_url)
        await self.conn.execute("SELECT 1 FROM users WHERE user_id = %s FOR UPDATE", (self.user_id,))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.conn.rollback()
        await self.conn.close()


def rename(user_id: str, name: str, request_id: str | None = None) -> user_pb2.UpdateUserRequest:
    return user_pb2.UpdateUserRequest(
        request_id=request_id or rid(),
        user=user_pb2.User(id=user_id, display_name=name),
        update_mask={"paths": ["display_name"]},
    )


async def waiting_qdata_backends(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'qdata' AND wait_event_type = 'Lock'"
        )
        return (await cur.fetchone())[0]


async def test_the_callers_deadline_bounds_database_work(api):
    user = await create_user(api)
    async with RowLock(api.database_url, user.id):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.users.UpdateUser(rename(user.id, "Blocked"), timeout=1.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The statement gave up with the deadline instead of waiting on the lock forever.
        for _ in range(50):
            if await waiting_qdata_backends(api.database_url) == 0:
                break
            await asyncio.sleep(0.05)
        assert await waiting_qdata_backends(api.database_url) == 0
    got = await api.users.GetUser(user_pb2.GetUserRequest(id=user.id))
    assert got.user.display_name == user.display_name


async def test_cancelled_calls_return_their_connections(api):
    user = await create_user(api)
    pool = api.server.pool
    async with RowLock(api.database_url, user.id):
        calls = [api.users.UpdateUser(rename(user.id, f"n{i}")) for i in range(20)]
        tasks = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0.5)
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Every connection comes back to the pool, and the pool still serves.
    stats = await pool_drained(pool)
    assert stats["pool_size"] <= pool.max_size
    got = await api.users.UpdateUser(rename(user.id, "After"))
    assert got.user.display_name == "After"


async def test_database_outage_is_unavailable_and_not_serving(fresh_api, postgres_url):
    api = fresh_api  # its database is dropped
    user = await create_user(api)
    dbname = psycopg.conninfo.conninfo_to_dict(api.database_url)["dbname"]
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(dbname)))
    error = await expect_error(
        api.users.GetUser(user_pb2.GetUserRequest(id=user.id)), grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"
    )
    assert "SELECT" not in error.details() and "Traceback" not in error.details()
    assert await api.server.check_health() is False
    assert await health_status(api) == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_one_log_line_per_rpc_without_secrets(api, caplog):
    caplog.set_level(logging.INFO, logger="qdata.rpc")
    request_id = rid()
    secret = "a-password-nobody-may-log-1234"
    created = await api.users.CreateUser(
        user_pb2.CreateUserRequest(
            request_id=request_id, email="logged@example.com", username="logged", password=secret
        )
    )
    await expect_error(api.users.GetUser(user_pb2.GetUserRequest(id="not-a-uuid")), grpc.StatusCode.INVALID_ARGUMENT)
    await api.users.Authenticate(user_pb2.AuthenticateRequest(login="logged", password=secret))

    lines = [r for r in caplog.records if r.name == "qdata.rpc"]
    assert [r.method for r in lines] == [
        "/qdata.v1.UserService/CreateUser",
        "/qdata.v1.UserService/GetUser",
        "/qdata.v1.UserService/Authenticate",
    ]
    assert [r.code for r in lines] == ["OK", "INVALID_ARGUMENT", "OK"]
    assert lines[0].request_id == request_id
    assert all(r.duration_ms >= 0 for r in lines)
    for record in caplog.records:
        assert secret not in record.getMessage() and secret not in json.dumps(record.__dict__, default=str)
    assert created.user.username == "logged"


async def test_graceful_shutdown_drains_in_flight_calls(database_url):
    api = await start_api(database_url)
    try:
        user = await create_user(api)
        async with RowLock(database_url, user.id) as lock:
            in_flight = asyncio.ensure_future(api.users.UpdateUser(rename(user.id, "Drained"), timeout=10))
            await asyncio.sleep(0.3)
            stopping = asyncio.ensure_future(api.server.stop(grace=5.0))
            await asyncio.sleep(0.3)
            # Shutting down: the probe says NOT_SERVING while the call still drains.
            probe = await api.server.health.Check(health_pb2.HealthCheckRequest(), None)
            assert probe.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await lock.conn.rollback()
            reply = await in_flight
            assert reply.user.display_name == "Drained"
            await stopping
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.users.GetUser(user_pb2.GetUserRequest(id=user.id), timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await api.channel.close()
