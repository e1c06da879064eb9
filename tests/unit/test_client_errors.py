"""Every status code a failed call can carry has its own exception class, and each carries the
ErrorInfo reason (and its ErrorReason value), the ErrorInfo metadata and the BadRequest field
violations: a stand-in server answers each code with a full google.rpc.Status (no database)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from qdata import client
from qdata.client import AsyncQdataClient, QdataClient, QdataError
from qdata.v1 import user_pb2
from qdata.v1.error_reason_pb2 import ErrorReason

CODES = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]
CLASS_NAMES = {
    "CANCELLED": "Cancelled",
    "UNKNOWN": "Unknown",
    "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded",
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied",
    "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "ABORTED": "Aborted",
    "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented",
    "INTERNAL": "Internal",
    "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss",
    "UNAUTHENTICATED": "Unauthenticated",
}


def _status(code: grpc.StatusCode) -> status_pb2.Status:
    """The status the stand-in answers: a reason named after the code, metadata and a violation."""
    info, bad = any_pb2.Any(), any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="CONTENTION", domain="qdata", metadata={"code": code.name}))
    bad.Pack(error_details_pb2.BadRequest(field_violations=[{"field": "id", "description": f"{code.name} here"}]))
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=f"{code.name} answer", details=[info, bad])


@pytest.fixture(scope="module")
async def stand_in() -> AsyncIterator[str]:
    async def get_user(request, context):
        code = grpc.StatusCode[request.id]
        status = _status(code)
        await context.abort(
            code, status.message, trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),)
        )

    handler = grpc.method_handlers_generic_handler(
        "qdata.v1.UserService",
        {
            "GetUser": grpc.unary_unary_rpc_method_handler(
                get_user,
                request_deserializer=user_pb2.GetUserRequest.FromString,
                response_serializer=user_pb2.GetUserResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def test_every_code_has_its_own_class():
    classes = {code: client._ERROR_CLASSES[code] for code in CODES}
    assert len(set(classes.values())) == len(CODES)
    for code, cls in classes.items():
        assert cls.__name__ == CLASS_NAMES[code.name]
        assert cls is getattr(client, cls.__name__)
        assert cls.__name__ in client.__all__
        assert issubclass(cls, QdataError) and cls is not QdataError
        assert code.name in (cls.__doc__ or ""), f"{cls.__name__}'s docstring names its code"


def _check(error: QdataError, code: grpc.StatusCode) -> None:
    assert type(error) is client._ERROR_CLASSES[code]
    assert error.code is code
    assert error.message == f"{code.name} answer"
    assert error.reason == "CONTENTION"
    assert error.error_reason == ErrorReason.ERROR_REASON_CONTENTION
    assert error.metadata == {"code": code.name}
    assert error.field_violations == {"id": f"{code.name} here"}


@pytest.mark.parametrize("code", CODES, ids=[c.name for c in CODES])
async def test_async_client_raises_the_codes_class_with_reason_metadata_and_violations(stand_in, code):
    async with AsyncQdataClient(stand_in) as qdata:
        with pytest.raises(QdataError) as caught:
            await qdata.users.GetUser(user_pb2.GetUserRequest(id=code.name))
    _check(caught.value, code)
    assert isinstance(caught.value.__cause__, grpc.aio.AioRpcError)


async def test_sync_client_raises_the_same_classes(stand_in):
    def calls() -> dict[grpc.StatusCode, QdataError]:
        errors = {}
        with QdataClient(stand_in) as qdata:
            for code in CODES:
                try:
                    qdata.users.GetUser(user_pb2.GetUserRequest(id=code.name))
                except QdataError as exc:
                    errors[code] = exc
        return errors

    errors = await asyncio.to_thread(calls)
    assert errors.keys() == set(CODES)
    for code, error in errors.items():
        _check(error, code)
