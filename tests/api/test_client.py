"""The thin client (qdata.client) against the real server: timeouts, request_ids, error mapping."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from qdata.client import (
    AlreadyExists,
    AsyncQdataClient,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QdataClient,
    QdataError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from qdata.v1 import chat_pb2, ledger_pb2, user_pb2
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import auth
from qdata_server.users.service import UserServicer
from tests.support.calls import PASSWORD
from tests.support.chat import append
from tests.support.server import start_api, stop_api


def new_user_request(name: str | None = None, **fields) -> user_pb2.CreateUserRequest:
    """A valid CreateUserRequest without a request_id (the client fills it in)."""
    name = name or f"user{uuid.uuid4().hex[:10]}"
    values = {"email": f"{name}@example.com", "username": name, "display_name": name.title(), "password": PASSWORD}
    return user_pb2.CreateUserRequest(**(values | fields))


@pytest.fixture
async def client(api):
    async with AsyncQdataClient(api.address) as qdata:
        yield qdata


async def test_create_and_get_user_fills_request_id(client):
    request = new_user_request("ada")
    assert request.request_id == ""

    created = (await client.users.CreateUser(request)).user

    assert str(uuid.UUID(request.request_id, version=4)) == request.request_id  # written into the request
    got = (await client.users.GetUser(user_pb2.GetUserRequest(username="ada"))).user
    assert got.id == created.id
    assert got.email == "ada@example.com"


async def test_request_id_is_filled_per_call(client):
    first, second = new_user_request(), new_user_request()
    await client.users.CreateUser(first)
    await client.users.CreateUser(second)
    assert first.request_id and second.request_id
    assert first.request_id != second.request_id


async def test_replaying_a_request_id_returns_the_same_user(client):
    request_id = str(uuid.uuid4())
    first = (await client.users.CreateUser(new_user_request("grace", request_id=request_id))).user
    replay = new_user_request("grace", request_id=request_id)
    again = (await client.users.CreateUser(replay)).user
    assert again.id == first.id
    assert replay.request_id == request_id  # an explicit id is kept, not replaced


async def test_resending_the_same_request_object_replays_its_generated_id(client):
    request = new_user_request()
    first = (await client.users.CreateUser(request)).user
    generated = request.request_id
    again = (await client.users.CreateUser(request)).user
    assert request.request_id == generated
    assert again.id == first.id


async def test_invalid_argument_carries_field_violations(client):
    with pytest.raises(InvalidArgument) as caught:
        await client.users.CreateUser(new_user_request("bob", email="not an email", password="short"))
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    assert {"email", "password"} <= error.field_violations.keys()
    assert all(error.field_violations.values())
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)


async def test_not_found_carries_reason(client):
    with pytest.raises(NotFound) as caught:
        await client.users.GetUser(user_pb2.GetUserRequest(id=str(uuid.uuid4())))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "USER_NOT_FOUND"
    assert caught.value.field_violations == {}
    assert "USER_NOT_FOUND" in str(caught.value)


async def test_already_exists_email_taken(client):
    await client.users.CreateUser(new_user_request("carol"))
    with pytest.raises(AlreadyExists) as caught:
        await client.users.CreateUser(
            user_pb2.CreateUserRequest(email="CAROL@example.com", username="carol2", password=PASSWORD)
        )
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.reason == "EMAIL_TAKEN"


async def test_unimplemented_rpc(database_url, monkeypatch):
    # Every RPC is implemented; a servicer without one falls back to the generated base class.
    monkeypatch.delattr(UserServicer, "ListAuditEvents")
    api = await start_api(database_url)
    try:
        async with AsyncQdataClient(api.address) as client:
            with pytest.raises(Unimplemented) as caught:
                await client.users.ListAuditEvents(user_pb2.ListAuditEventsRequest())
    finally:
        await stop_api(api)
    assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED


async def test_stream_errors_during_iteration_are_converted(client):
    request = chat_pb2.ExportSessionRequest(user_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()))
    stream = client.chat.ExportSession(request)
    with pytest.raises(NotFound) as caught:
        async for _ in stream:
            pass
    assert caught.value.reason == "SESSION_NOT_FOUND"


async def test_unknown_rpc_is_an_attribute_error(client):
    with pytest.raises(AttributeError):
        client.users.NoSuchRpc  # noqa: B018
    assert "GetUser" in dir(client.users)


# GetUser reaches the database, and the server refuses database work once the caller's deadline
# has passed, so a 1 microsecond deadline ends in DEADLINE_EXCEEDED whichever side notices first
# (the reason is then "" from the client's gRPC or DEADLINE_EXCEEDED from the server).


async def test_default_timeout_applies_and_a_call_timeout_overrides_it(api):
    async with AsyncQdataClient(api.address, default_timeout=1e-6) as qdata:
        with pytest.raises(QdataError) as caught:
            await qdata.users.GetUser(user_pb2.GetUserRequest(username="nobody"))
        assert type(caught.value) is DeadlineExceeded
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

        with pytest.raises(NotFound):  # a generous per-call timeout reaches the server
            await qdata.users.GetUser(user_pb2.GetUserRequest(username="nobody"), timeout=10)


async def test_call_timeout(client):
    with pytest.raises(DeadlineExceeded) as caught:
        await client.users.GetUser(user_pb2.GetUserRequest(username="nobody"), timeout=1e-6)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_token_and_deadline_reach_the_server():
    """A stand-in server records what the client sends: bearer token, extra metadata, deadline."""
    seen: list[dict] = []

    async def create_user(request, context):
        seen.append(
            {
                "metadata": dict(context.invocation_metadata()),
                "time_remaining": context.time_remaining(),
                "request_id": request.request_id,
            }
        )
        return user_pb2.CreateUserResponse(user=user_pb2.User(id="u1"))

    handler = grpc.method_handlers_generic_handler(
        "qdata.v1.UserService",
        {
            "CreateUser": grpc.unary_unary_rpc_method_handler(
                create_user,
                request_deserializer=user_pb2.CreateUserRequest.FromString,
                response_serializer=user_pb2.CreateUserResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncQdataClient(
            f"127.0.0.1:{port}", token="s3cret", metadata=[("x-caller", "billing")], default_timeout=7.0
        ) as qdata:
            await qdata.users.CreateUser(new_user_request(), metadata=[("x-trace", "t1")])
            await qdata.users.CreateUser(new_user_request(), timeout=60)
    finally:
        await server.stop(None)

    first, second = seen
    assert first["metadata"]["authorization"] == "Bearer s3cret"
    assert first["metadata"]["x-caller"] == "billing"
    assert first["metadata"]["x-trace"] == "t1"
    assert "x-trace" not in second["metadata"]
    assert second["metadata"]["authorization"] == "Bearer s3cret"
    # gRPC rounds the deadline it sends up a little, hence the slack.
    assert 0 < first["time_remaining"] < 8  # the default deadline (7 s)
    assert 8 < second["time_remaining"] < 61  # the call's own (60 s)
    assert uuid.UUID(first["request_id"]) != uuid.UUID(second["request_id"])


def sync_session(address: str) -> dict:
    """Runs on a worker thread: the blocking client must never block the server's event loop."""
    with QdataClient(address) as qdata:
        request = new_user_request("linus")
        created = qdata.users.CreateUser(request).user
        got = qdata.users.GetUser(user_pb2.GetUserRequest(email="LINUS@example.com")).user
        replay = qdata.users.CreateUser(request).user
        errors = {}
        for name, call in {
            "not_found": lambda: qdata.users.GetUser(user_pb2.GetUserRequest(username="nobody")),
            "invalid": lambda: qdata.users.CreateUser(new_user_request(email="nope")),
            "stream": lambda: list(qdata.chat.ExportSession(chat_pb2.ExportSessionRequest())),
        }.items():
            try:
                call()
            except QdataError as exc:
                errors[name] = exc
    # The tiny default deadline (see the note above test_default_timeout_applies...).
    with QdataClient(address, default_timeout=1e-6) as hasty:
        try:
            hasty.users.GetUser(user_pb2.GetUserRequest(username="nobody"))
        except QdataError as exc:
            errors["deadline"] = exc
    return {"request": request, "created": created, "got": got, "replay": replay, "errors": errors}


async def test_sync_client(api):
    result = await asyncio.to_thread(sync_session, api.address)

    assert result["request"].request_id
    assert result["got"].id == result["created"].id
    assert result["replay"].id == result["created"].id
    errors = result["errors"]
    assert isinstance(errors["not_found"], NotFound)
    assert errors["not_found"].reason == "USER_NOT_FOUND"
    assert isinstance(errors["invalid"], InvalidArgument)
    assert "email" in errors["invalid"].field_violations
    assert isinstance(errors["deadline"], DeadlineExceeded)
    assert errors["deadline"].code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(errors["stream"], InvalidArgument)


# Every code a test can provoke from the real server (or its transport), with the class it raises.
# ABORTED, UNKNOWN, INTERNAL, OUT_OF_RANGE and DATA_LOSS cannot be provoked on purpose; the stand-in
# server of tests/unit/test_client_errors.py answers every code.


async def test_failed_precondition_insufficient_funds(client):
    user = (await client.users.CreateUser(new_user_request())).user
    with pytest.raises(FailedPrecondition) as caught:
        await client.ledger.Charge(ledger_pb2.ChargeRequest(user_id=user.id, amount_micros=1_000_000))
    assert caught.value.reason == "INSUFFICIENT_FUNDS"
    assert caught.value.error_reason == ErrorReason.ERROR_REASON_INSUFFICIENT_FUNDS


READER_TOKEN = "qdt_reader-" + uuid.uuid4().hex


async def test_unauthenticated_and_permission_denied(api_with):
    secured = await api_with(
        allow_insecure=False,
        auth_tokens=auth.parse_tokens(f"reader {auth.hash_token(READER_TOKEN)} users.read", "test"),
    )
    async with AsyncQdataClient(secured.address) as anonymous:
        with pytest.raises(Unauthenticated) as refused:
            await anonymous.users.ListUsers(user_pb2.ListUsersRequest())
    assert refused.value.reason == "UNAUTHENTICATED"
    async with AsyncQdataClient(secured.address, token="qdt_" + "wrong" * 9) as wrong:
        with pytest.raises(Unauthenticated) as invalid:
            await wrong.users.ListUsers(user_pb2.ListUsersRequest())
    assert invalid.value.reason == "INVALID_TOKEN"
    async with AsyncQdataClient(secured.address, token=READER_TOKEN) as reader:
        await reader.users.ListUsers(user_pb2.ListUsersRequest())
        with pytest.raises(PermissionDenied) as denied:
            await reader.users.CreateUser(new_user_request())
    assert denied.value.reason == "MISSING_PERMISSION"
    assert denied.value.error_reason == ErrorReason.ERROR_REASON_MISSING_PERMISSION
    assert denied.value.metadata["permission"] == "users.write"


async def test_resource_exhausted_for_a_message_over_the_channel_limit(api):
    async with AsyncQdataClient(api.address, max_message_bytes=64) as small:
        with pytest.raises(ResourceExhausted) as caught:
            await small.users.CreateUser(new_user_request(display_name="x" * 200))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.reason == ""  # gRPC refused it, not the server


async def test_unavailable_when_nothing_listens(unused_tcp_port):
    async with AsyncQdataClient(f"127.0.0.1:{unused_tcp_port}") as nowhere:
        with pytest.raises(Unavailable) as caught:
            await nowhere.users.GetUser(user_pb2.GetUserRequest(username="nobody"))
    assert caught.value.reason == ""


def cancelled_stream(address: str, user_id: str, session_id: str) -> QdataError | None:
    with QdataClient(address) as qdata:
        stream = qdata.chat.ExportSession(chat_pb2.ExportSessionRequest(user_id=user_id, session_id=session_id))
        next(stream)  # the session
        stream.cancel()
        try:
            list(stream)
        except QdataError as exc:
            return exc
    return None


async def test_cancelled_stream(client, api):
    user = (await client.users.CreateUser(new_user_request())).user
    session = (await client.chat.CreateSession(chat_pb2.CreateSessionRequest(user_id=user.id))).session
    # Long enough for several chunks, so the stream is still open when the caller cancels it (an
    # empty session's stream can end before the cancel, and then nothing is cancelled).
    for _ in range(5):
        await append(api, session, *(f"message {i}" for i in range(100)))
    error = await asyncio.to_thread(cancelled_stream, api.address, user.id, session.id)
    assert isinstance(error, Cancelled)
