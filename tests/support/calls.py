"""Helpers for asserting on rich gRPC errors and for making test data through the API."""

from __future__ import annotations

import uuid

import grpc
from google.protobuf import message, text_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from qdata.v1 import user_pb2

PASSWORD = "correct horse battery staple"


def rid() -> str:
    """A fresh request_id."""
    return str(uuid.uuid4())


def case_id(value: object) -> str:
    """A short, readable test id for one parametrized value (pytest numbers repeated ids)."""
    if isinstance(value, str):
        text = value.encode("unicode_escape").decode("ascii")
    elif isinstance(value, message.Message):
        text = text_format.MessageToString(value, as_one_line=True)
    else:
        text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of a failed call (every qdata error carries one)."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("status carries no ErrorInfo")


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """{field: description} from the BadRequest detail of an INVALID_ARGUMENT error."""
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError("status carries no BadRequest")


async def expect_error(call, code: grpc.StatusCode, reason: str | None = None) -> grpc.aio.AioRpcError:
    """Awaits call, asserts it fails with code (and ErrorInfo reason), returns the error."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        assert error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}"
        if reason is not None:
            assert error_info(error).reason == reason
            assert error_info(error).domain == "qdata"
        return error
    raise AssertionError(f"expected {code.name}, but the call succeeded")


async def outcome(call) -> tuple[str, str, set[str]]:
    """(status code name, ErrorInfo reason, violated fields) of a call; ("OK", "", set()) on success."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        invalid = error.code() == grpc.StatusCode.INVALID_ARGUMENT
        return error.code().name, error_info(error).reason, set(field_violations(error)) if invalid else set()
    return "OK", "", set()


async def create_user(api, name: str | None = None, *, password: str = PASSWORD, **fields) -> user_pb2.User:
    """Creates a user through the API and returns it."""
    name = name or f"user{uuid.uuid4().hex[:10]}"
    request = user_pb2.CreateUserRequest(
        request_id=rid(), email=f"{name}@example.com", username=name, display_name=name.title(), password=password
    )
    for key, value in fields.items():
        setattr(request, key, value)
    return (await api.users.CreateUser(request)).user
