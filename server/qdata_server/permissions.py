"""Which permission every RPC needs: the table the interceptor enforces and tokens are checked against.

A permission is `<family>.<action>` ("ledger.write"); a grant is a permission, a family wildcard
("ledger.*") or "*". The table covers every RPC of every service (a unit test compares it with
the descriptors, `check_table`), and a method missing here is refused. This module depends only
on the contract's descriptors, so configuration (tokens.py) and authentication (auth.py) both
build on it without importing each other.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import ServiceDescriptor

from qdata.v1 import chat_pb2, ledger_pb2, usage_pb2, user_pb2


def _table(service: str, permissions: dict[str, str]) -> dict[str, str]:
    return {f"/qdata.v1.{service}/{rpc}": permission for rpc, permission in permissions.items()}


# Full method name -> the one permission it needs. Every RPC of every service is listed (a unit
# test compares this with the descriptors), and a method missing here is refused.
PERMISSIONS: dict[str, str] = {
    **_table(
        "UserService",
        {
            "CreateUser": "users.write",
            "GetUser": "users.read",
            "ListUsers": "users.read",
            "UpdateUser": "users.write",
            "DeleteUser": "users.write",
            # Checking a login is its own right: a login front end needs it and nothing else.
            "Authenticate": "users.authenticate",
            "ChangePassword": "users.write",
            "ImportUsers": "users.write",
            "GetPreferences": "users.read",
            "UpdatePreferences": "users.write",
            "CreateApiKey": "users.write",
            "ListApiKeys": "users.read",
            "RevealApiKey": "keys.reveal",
            "UpdateApiKey": "users.write",
            "DeleteApiKey": "users.write",
            "ListAuditEvents": "audit.read",
        },
    ),
    **_table(
        "LedgerService",
        {
            "GetBalance": "ledger.read",
            "Deposit": "ledger.write",
            "Charge": "ledger.write",
            "Refund": "ledger.write",
            "Transfer": "ledger.write",
            "CreateHold": "ledger.write",
            "GetHold": "ledger.read",
            "CaptureHold": "ledger.write",
            "ReleaseHold": "ledger.write",
            "GetTransaction": "ledger.read",
            "ListTransactions": "ledger.read",
            "VerifyLedger": "ledger.admin",
        },
    ),
    **_table(
        "ChatService",
        {
            "CreateSession": "chat.write",
            "GetSession": "chat.read",
            "ListSessions": "chat.read",
            "UpdateSession": "chat.write",
            "DeleteSession": "chat.write",
            "AppendMessages": "chat.write",
            "ListMessages": "chat.read",
            "GetMessage": "chat.read",
            "DeleteMessage": "chat.write",
            "ExportSession": "chat.read",
            "SearchMessages": "chat.read",
        },
    ),
    **_table(
        "UsageService",
        {
            "UpsertModel": "catalog.write",
            "GetModel": "usage.read",
            "ListModels": "usage.read",
            "ListModelPrices": "usage.read",
            "RecordUsage": "usage.write",
            "RecordUsageBatch": "usage.write",
            "GetUserUsage": "usage.read",
            "GetModelStats": "usage.read",
            "ListTopModels": "usage.read",
            "RateModel": "usage.write",
            "ListModelRatings": "usage.read",
        },
    ),
}

KNOWN_PERMISSIONS = frozenset(PERMISSIONS.values())
SERVICE_DESCRIPTORS = (
    user_pb2.DESCRIPTOR.services_by_name["UserService"],
    ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"],
    chat_pb2.DESCRIPTOR.services_by_name["ChatService"],
    usage_pb2.DESCRIPTOR.services_by_name["UsageService"],
)


def grants_allow(grants: Iterable[str], permission: str) -> bool:
    """True if a grant is the permission itself, its family ("ledger.*") or "*"."""
    family = permission.split(".", 1)[0] + ".*"
    return any(grant in ("*", permission, family) for grant in grants)


def check_table(descriptors: Iterable[ServiceDescriptor] = SERVICE_DESCRIPTORS) -> tuple[set[str], set[str]]:
    """(RPCs without a permission, table entries naming no RPC); both empty when in step."""
    methods = {f"/{service.full_name}/{method.name}" for service in descriptors for method in service.methods}
    return methods - PERMISSIONS.keys(), PERMISSIONS.keys() - methods
