"""The client's channel settings over real gRPC, against a stand-in server (no database).

The stand-in answers UNAVAILABLE (or ABORTED) to the first attempt of every request and then
succeeds, and records what each attempt carried: the request_id and the user-agent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

import qdata
from qdata.client import (
    RETRY_SAFE_METHODS,
    AsyncQdataClient,
    QdataClient,
    RetryPolicy,
    Unavailable,
)
from qdata.v1 import ledger_pb2, user_pb2


@dataclass
class StandIn:
    address: str
    failures: int = 1  # attempts of each call that fail before one succeeds
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    attempts: list[dict[str, str]] = field(default_factory=list)


def _handlers(stand_in: StandIn) -> grpc.GenericRpcHandler:
    async def answer(name: str, request, context, response):
        stand_in.attempts.append(
            {
                "rpc": name,
                "request_id": getattr(request, "request_id", ""),
                "user_agent": dict(context.invocation_metadata()).get("user-agent", ""),
            }
        )
        if sum(a["rpc"] == name for a in stand_in.attempts) <= stand_in.failures:
            await context.abort(stand_in.code, "try again")
        return response

    async def charge(request, context):
        return await answer("Charge", request, context, ledger_pb2.ChargeResponse())

    async def authenticate(request, context):
        return await answer("Authenticate", request, context, user_pb2.AuthenticateResponse())

    async def get_user(request, context):
        return await answer("GetUser", request, context, user_pb2.GetUserResponse(user=user_pb2.User(id="u1")))

    def unary(fn, request_type, response_type):
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
        )

    return [
        grpc.method_handlers_generic_handler(
            "qdata.v1.LedgerService", {"Charge": unary(charge, ledger_pb2.ChargeRequest, ledger_pb2.ChargeResponse)}
        ),
        grpc.method_handlers_generic_handler(
            "qdata.v1.UserService",
            {
                "Authenticate": unary(authenticate, user_pb2.AuthenticateRequest, user_pb2.AuthenticateResponse),
                "GetUser": unary(get_user, user_pb2.GetUserRequest, user_pb2.GetUserResponse),
            },
        ),
    ]


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    state = StandIn(f"127.0.0.1:{port}")
    server.add_generic_rpc_handlers(_handlers(state))
    await server.start()
    try:
        yield state
    finally:
        await server.stop(None)


def charge_request() -> ledger_pb2.ChargeRequest:
    return ledger_pb2.ChargeRequest(user_id="u1", amount_micros=5, currency_code="USD")


async def test_retry_policy_resends_a_write_through_unavailable_with_the_same_request_id(stand_in):
    async with AsyncQdataClient(stand_in.address, retry=RetryPolicy(initial_backoff=0.01)) as qdata:
        request = charge_request()
        await qdata.ledger.Charge(request)
    assert [a["rpc"] for a in stand_in.attempts] == ["Charge", "Charge"]
    assert {a["request_id"] for a in stand_in.attempts} == {request.request_id}  # the same bytes resent


async def test_retry_policy_resends_a_read_through_aborted(stand_in):
    stand_in.code = grpc.StatusCode.ABORTED
    async with AsyncQdataClient(stand_in.address, retry=True) as qdata:
        reply = await qdata.users.GetUser(user_pb2.GetUserRequest(id="u1"))
    assert reply.user.id == "u1"
    assert len(stand_in.attempts) == 2


async def test_without_opt_in_the_client_does_not_retry(stand_in):
    async with AsyncQdataClient(stand_in.address) as qdata:
        with pytest.raises(Unavailable):
            await qdata.ledger.Charge(charge_request())
    assert len(stand_in.attempts) == 1


async def test_an_rpc_unsafe_to_resend_is_not_retried(stand_in):
    # Authenticate: every attempt with a wrong password counts toward the lockout.
    assert ("qdata.v1.UserService", "Authenticate") not in RETRY_SAFE_METHODS
    async with AsyncQdataClient(stand_in.address, retry=True) as qdata:
        with pytest.raises(Unavailable):
            await qdata.users.Authenticate(user_pb2.AuthenticateRequest(login="a@example.com", password="x"))
    assert len(stand_in.attempts) == 1


async def test_attempts_are_bounded(stand_in):
    stand_in.failures = 10
    async with AsyncQdataClient(stand_in.address, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01)) as qdata:
        with pytest.raises(Unavailable):
            await qdata.ledger.Charge(charge_request())
    assert len(stand_in.attempts) == 3


async def test_sync_client_retries_too(stand_in):
    def call() -> str:
        with QdataClient(stand_in.address, retry=RetryPolicy(initial_backoff=0.01)) as qdata:
            return qdata.users.GetUser(user_pb2.GetUserRequest(id="u1")).user.id

    assert await asyncio.to_thread(call) == "u1"
    assert len(stand_in.attempts) == 2


async def test_the_server_sees_the_user_agent(stand_in):
    stand_in.failures = 0
    async with AsyncQdataClient(stand_in.address) as client:
        await client.users.GetUser(user_pb2.GetUserRequest(id="u1"))
    assert stand_in.attempts[0]["user_agent"].startswith(f"qdata-client/{qdata.__version__} ")


def test_retry_safe_methods_are_the_reads_and_the_writes_with_a_request_id():
    from qdata.v1 import budget_pb2, chat_pb2, options_pb2, usage_pb2

    expected = set()
    for module in (budget_pb2, chat_pb2, ledger_pb2, usage_pb2, user_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                permission = method.GetOptions().Extensions[options_pb2.permission]
                if permission.endswith(".read") or "request_id" in method.input_type.fields_by_name:
                    expected.add((service.full_name, method.name))
    assert set(RETRY_SAFE_METHODS) == expected
    assert ("qdata.v1.UsageService", "RecordUsageBatch") not in expected  # its records carry the ids
    config = json.loads(RetryPolicy().service_config())
    (method_config,) = config["methodConfig"]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "ABORTED"]
    assert len(method_config["name"]) == len(RETRY_SAFE_METHODS)


def test_channel_options_keepalive_user_agent_and_explicit_overrides():
    from qdata.client import USER_AGENT, _channel_options

    assert _channel_options(None, False, None, ()) == [("grpc.primary_user_agent", USER_AGENT)]
    options = dict(_channel_options(None, False, 300, ()))
    assert options["grpc.keepalive_time_ms"] == 300_000
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert "grpc.service_config" not in options
    overridden = _channel_options(None, True, None, [("grpc.primary_user_agent", "billing/2")])
    assert [v for k, v in overridden if k == "grpc.primary_user_agent"] == ["billing/2"]  # the caller's wins
    assert dict(overridden)["grpc.service_config"] == RetryPolicy().service_config()
