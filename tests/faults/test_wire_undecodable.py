"""Bytes that do not parse as the request message, sent raw to every RPC of the contract.

The wire-level companion of tests/api/test_hostile_input.py: the methods come from the services'
descriptors, so a new RPC is covered without touching this file. Each answer is INVALID_ARGUMENT
(reason MALFORMED_REQUEST) naming only the request's message type, logged as one WARNING.
"""

from __future__ import annotations

import logging

import grpc
import pytest

from qdata.v1 import chat_pb2, ledger_pb2, usage_pb2, user_pb2
from tests.support.calls import error_info

SERVICES = [
    module.DESCRIPTOR.services_by_name[name]
    for module, name in (
        (user_pb2, "UserService"),
        (ledger_pb2, "LedgerService"),
        (chat_pb2, "ChatService"),
        (usage_pb2, "UsageService"),
    )
]
METHODS = [method for service in SERVICES for method in service.methods]
# Undecodable as any message: a truncated varint tag, a length-delimited field cut short, tag 0.
PAYLOADS = {"truncated-varint": b"\xff\xff\xff", "truncated-field": b"\x0a\x05ab", "field-zero": b"\x00"}


async def call_raw(channel: grpc.aio.Channel, method, payload: bytes) -> grpc.aio.AioRpcError:
    path = f"/{method.containing_service.full_name}/{method.name}"
    # No serializers: the bytes go out exactly as given.
    try:
        if method.server_streaming:
            async for _ in channel.unary_stream(path)(payload, timeout=10):
                pass
        else:
            await channel.unary_unary(path)(payload, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"{path} accepted undecodable bytes")


def test_every_rpc_of_the_contract_is_covered():
    assert len(METHODS) >= 40
    assert not any(method.client_streaming for method in METHODS)


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
async def test_undecodable_bytes_are_invalid_argument_on_every_rpc(api, caplog, payload):
    caplog.set_level(logging.INFO)
    for method in METHODS:
        caplog.clear()
        error = await call_raw(api.channel, method, payload)
        name = f"{method.containing_service.name}.{method.name}"
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {error.code().name} {error.details()}"
        assert error_info(error).reason == "MALFORMED_REQUEST", name
        assert error.details() == f"the request body is not a valid {method.input_type.full_name}", name
        problems = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not problems, f"{name}: {[r.getMessage() for r in problems]}"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("qdata")]
        assert [r.getMessage() for r in warnings] == ["undecodable request"], name
        assert warnings[0].message_type == method.input_type.full_name


async def test_the_server_still_serves_after_undecodable_bytes(api):
    for method in METHODS[:5]:
        await call_raw(api.channel, method, b"\xff\xff\xff")
    got = await api.users.ListUsers(user_pb2.ListUsersRequest(page_size=1))
    assert got is not None
