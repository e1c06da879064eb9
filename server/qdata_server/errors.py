"""Domain errors and the one place that turns them into gRPC statuses.

Domain code raises these; `to_grpc_status` builds a google.rpc.Status with an ErrorInfo (domain
"qdata") and, for invalid input, a BadRequest with one violation per field. Nothing else in the
server picks status codes, so a caller sees the same shape from every RPC.

Every error names its reason with the contract's ErrorReason enum (protos/qdata/v1/error_reason.proto),
never with a string: `NotFound("user not found", reason=ErrorReason.ERROR_REASON_USER_NOT_FOUND)`.
The classes whose code implies a reason (INVALID_ARGUMENT, UNAUTHENTICATED, MISSING_PERMISSION,
DEADLINE_EXCEEDED, NOT_IMPLEMENTED, INTERNAL) have it as their default; the others need one.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, TypeAlias

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server.contract import wire_reason

ERROR_DOMAIN = "qdata"
# A value of the contract's ErrorReason enum.
Reason: TypeAlias = ErrorReason


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    """One invalid field: its path in the request (e.g. "user.email") and why."""

    field: str
    description: str


class QdataError(Exception):
    """Base of every error the server answers deliberately (not a bug)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    # The reason when the raiser names none; None: every raiser must name one.
    default_reason: ClassVar[Reason | None] = None

    def __init__(self, message: str, *, reason: Reason | None = None, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        chosen = self.default_reason if reason is None else reason
        if chosen is None:
            raise TypeError(f"{type(self).__name__} needs a reason (an ErrorReason value)")
        self.message = message
        # The enum value, and its ErrorInfo.reason string ("USER_NOT_FOUND") for the wire and logs.
        self.error_reason: Reason = chosen
        self.reason = wire_reason(chosen)
        self.metadata = metadata or {}


class InvalidArgument(QdataError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = ErrorReason.ERROR_REASON_INVALID_ARGUMENT

    def __init__(
        self, violations: list[FieldViolation], *, reason: Reason | None = None, message: str | None = None
    ) -> None:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(message or f"invalid request: {summary}", reason=reason)
        self.violations = list(violations)


class Unauthenticated(QdataError):
    """No token, or one the server does not know (reason UNAUTHENTICATED or INVALID_TOKEN)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = ErrorReason.ERROR_REASON_UNAUTHENTICATED


class PermissionDenied(QdataError):
    """A known caller without the permission the RPC needs (reason MISSING_PERMISSION)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = ErrorReason.ERROR_REASON_MISSING_PERMISSION


class NotFound(QdataError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: dict[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        # A request field that names what was not found (BudgetService's model_id scope): sent
        # as a BadRequest field violation beside the ErrorInfo.
        self.violations = list(violations or ())


class AlreadyExists(QdataError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(QdataError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(QdataError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(QdataError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = ErrorReason.ERROR_REASON_DEADLINE_EXCEEDED


class Aborted(QdataError):
    code = grpc.StatusCode.ABORTED


class Unimplemented(QdataError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = ErrorReason.ERROR_REASON_NOT_IMPLEMENTED


class Internal(QdataError):
    """A real bug: the message is generic and the details stay in the server's log."""

    code = grpc.StatusCode.INTERNAL
    default_reason = ErrorReason.ERROR_REASON_INTERNAL


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
    return InvalidArgument(
        [], reason=ErrorReason.ERROR_REASON_MALFORMED_REQUEST, message=f"the request body is not a valid {message_type}"
    )


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_grpc_status(error: QdataError) -> grpc.Status:
    """Builds the rich status for a domain error (ErrorInfo always, BadRequest for bad input)."""
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))]
    if isinstance(error, InvalidArgument) or (isinstance(error, NotFound) and error.violations):
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
