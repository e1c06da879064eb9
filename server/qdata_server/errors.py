"""Domain errors and the one place that turns them into gRPC statuses.

Domain code raises these; `to_grpc_status` builds a google.rpc.Status with an ErrorInfo (domain
"qdata") and, for invalid input, a BadRequest with one violation per field. Nothing else in the
server picks status codes, so a caller sees the same shape from every RPC.
"""

from __future__ import annotations

import dataclasses

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "qdata"


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    """One invalid field: its path in the request (e.g. "user.email") and why."""

    field: str
    description: str


class QdataError(Exception):
    """Base of every error the server answers deliberately (not a bug)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = metadata or {}


class InvalidArgument(QdataError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], *, reason: str | None = None, message: str | None = None):
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(message or f"invalid request: {summary}", reason=reason)
        self.violations = list(violations)


class Unauthenticated(QdataError):
    """No token, or one the server does not know (reason UNAUTHENTICATED or INVALID_TOKEN)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(QdataError):
    """A known caller without the permission the RPC needs (reason MISSING_PERMISSION)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "MISSING_PERMISSION"


class NotFound(QdataError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(QdataError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(QdataError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Unavailable(QdataError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(QdataError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Aborted(QdataError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class Unimplemented(QdataError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "NOT_IMPLEMENTED"


class Internal(QdataError):
    """A real bug: the message is generic and the details stay in the server's log."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


class RequestRemembered(Internal):
    """The ledger already carries this request's key: the idempotency layer answers it from there.

    Raised by the ledger's functions for a money-moving request whose idempotency record was
    purged (see qdata_server.idempotency); it reaches a caller only through a bug, as INTERNAL.
    """

    def __init__(self) -> None:
        super().__init__("internal error: a remembered request was not answered")


def invalid(field: str, description: str) -> InvalidArgument:
    """Shorthand for a single-field InvalidArgument."""
    return InvalidArgument([FieldViolation(field, description)])


def malformed(message_type: str) -> InvalidArgument:
    """A request whose bytes do not parse as its message (named by its full proto name only)."""
    return InvalidArgument([], reason="MALFORMED_REQUEST", message=f"the request body is not a valid {message_type}")


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_grpc_status(error: QdataError) -> grpc.Status:
    """Builds the rich status for a domain error (ErrorInfo always, BadRequest for bad input)."""
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))]
    if isinstance(error, InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in error.violations
                    ]
                )
            )
        )
    status = status_pb2.Status(code=getattr(code_pb2, error.code.name), message=error.message, details=details)
    return rpc_status.to_status(status)
