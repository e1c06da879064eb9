"""Which permission every RPC needs: the table the interceptor enforces and tokens are checked against.

A permission is `<family>.<action>` ("ledger.write") or `<family>.<resource>.<action>`
("chat.shared.read"); a grant is a permission, a family wildcard ("ledger.*", which also covers
"chat.shared.read" for "chat.*") or "*". The contract decides each RPC's permission (its `(qdata.v1.permission)`
option, read from the descriptors by qdata_server.contract); a method without one is refused.
This module depends only on the contract, so configuration (tokens.py) and authentication
(auth.py) both build on it without importing each other.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import ServiceDescriptor

from qdata_server.contract import KNOWN_PERMISSIONS, PERMISSIONS, SERVICE_DESCRIPTORS

__all__ = ["KNOWN_PERMISSIONS", "PERMISSIONS", "SERVICE_DESCRIPTORS", "check_table", "grants_allow"]


def grants_allow(grants: Iterable[str], permission: str) -> bool:
    """True if a grant is the permission itself, its family ("ledger.*") or "*"."""
    family = permission.split(".", 1)[0] + ".*"
    return any(grant in ("*", permission, family) for grant in grants)


def check_table(descriptors: Iterable[ServiceDescriptor] = SERVICE_DESCRIPTORS) -> tuple[set[str], set[str]]:
    """(RPCs without a permission, table entries naming no RPC); both empty when in step."""
    methods = {f"/{service.full_name}/{method.name}" for service in descriptors for method in service.methods}
    return methods - PERMISSIONS.keys(), PERMISSIONS.keys() - methods
