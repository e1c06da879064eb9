"""What the server takes from the contract's descriptors: each RPC's permission, reasons' wire names.

The protos decide both (protos/qdata/v1/options.proto, error_reason.proto); this module reads
them once at import from the generated descriptors, so no second copy lives in Python. An RPC
without a `(qdata.v1.permission)` option is absent from PERMISSIONS and refused (fail closed);
tests/unit/test_contract_permissions.py keeps every RPC carrying exactly one known permission.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from qdata.v1 import budget_pb2, chat_pb2, ledger_pb2, options_pb2, usage_pb2, user_pb2
from qdata.v1.error_reason_pb2 import ErrorReason

# Every service the server serves, in the order app.py registers them.
SERVICE_DESCRIPTORS: tuple[ServiceDescriptor, ...] = (
    user_pb2.DESCRIPTOR.services_by_name["UserService"],
    ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"],
    chat_pb2.DESCRIPTOR.services_by_name["ChatService"],
    usage_pb2.DESCRIPTOR.services_by_name["UsageService"],
    budget_pb2.DESCRIPTOR.services_by_name["BudgetService"],
)

# ErrorInfo.reason is the enum value's name without this prefix (see error_reason.proto).
REASON_PREFIX = "ERROR_REASON_"

_WIRE_REASONS: dict[int, str] = {
    value.number: value.name.removeprefix(REASON_PREFIX)
    for value in ErrorReason.DESCRIPTOR.values
    if value.number != ErrorReason.ERROR_REASON_UNSPECIFIED
}


def wire_reason(reason: ErrorReason) -> str:
    """The ErrorInfo.reason string of a reason: "USER_NOT_FOUND" for ERROR_REASON_USER_NOT_FOUND."""
    try:
        return _WIRE_REASONS[reason]
    except KeyError:
        raise ValueError(f"{reason!r} is not an ErrorReason a call can carry") from None


def method_permission(method: MethodDescriptor) -> str:
    """The `(qdata.v1.permission)` option of an RPC ("" if it has none)."""
    # grpcio-tools' .pyi types an extension as a plain FieldDescriptor; types-protobuf's
    # _ExtensionDict wants its own descriptor type. The value is the option's string.
    return str(method.GetOptions().Extensions[options_pb2.permission])  # type: ignore[index]


def full_method_name(service: ServiceDescriptor, method: MethodDescriptor) -> str:
    """The method's path as gRPC names it: "/qdata.v1.UserService/GetUser"."""
    return f"/{service.full_name}/{method.name}"


def permission_table(services: Iterable[ServiceDescriptor] = SERVICE_DESCRIPTORS) -> dict[str, str]:
    """Full method name -> the permission its option names, for every RPC that names one."""
    return {
        full_method_name(service, method): permission
        for service in services
        for method in service.methods
        if (permission := method_permission(method))
    }


# Full method name -> the one permission it needs (read from the descriptors once, at import).
PERMISSIONS: dict[str, str] = permission_table()
# Every permission some RPC needs: what a token's grants may name.
KNOWN_PERMISSIONS: frozenset[str] = frozenset(PERMISSIONS.values())
