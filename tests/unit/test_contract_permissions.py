"""Permissions come from the contract: one (qdata.v1.permission) option per RPC, read at start.

The server's table (qdata_server.contract.PERMISSIONS, re-exported by auth) is built from the
generated descriptors; these tests keep the protos, their prose, the table and the token-file
parser in step.
"""

from __future__ import annotations

import importlib
import re

import pytest

from qdata_server import auth, contract
from qdata_server.config import ConfigError
from tests.unit import contract_scan as scan

# Every permission the contract may name. Adding one is a deliberate change: it enlarges what a
# token's grants can say (docs/security.md documents the families), so it is listed here too.
EXPECTED_PERMISSIONS = {
    "users.read",
    "users.write",
    "users.authenticate",
    "keys.reveal",
    "audit.read",
    "ledger.read",
    "ledger.write",
    "ledger.admin",
    "chat.read",
    "chat.write",
    "chat.shared.read",
    "usage.read",
    "usage.write",
    "catalog.write",
    "budgets.read",
    "budgets.write",
    "budgets.alerts.read",
}
_PERMISSION = re.compile(r"\b[a-z]+(?:\.[a-z]+)?\.(?:read|write|admin|authenticate|reveal)\b")


def _contract_services() -> list:
    """Every service declared in protos/qdata/v1, from the generated modules."""
    services = []
    for path in sorted(scan.PROTOS.glob("*.proto")):
        module = importlib.import_module(f"qdata.v1.{path.stem}_pb2")
        services += list(module.DESCRIPTOR.services_by_name.values())
    return services


def test_the_server_serves_every_service_of_the_contract() -> None:
    assert {s.full_name for s in contract.SERVICE_DESCRIPTORS} == {s.full_name for s in _contract_services()}


def test_every_rpc_has_exactly_one_known_permission() -> None:
    problems = []
    for service in _contract_services():
        for method in service.methods:
            permission = contract.method_permission(method)
            if not permission:
                problems.append(f"{service.name}.{method.name} has no (qdata.v1.permission) option")
            elif permission not in EXPECTED_PERMISSIONS:
                problems.append(f"{service.name}.{method.name} names an unknown permission {permission!r}")
    assert not problems, problems
    # In the text too: one option line inside each rpc's braces.
    for path in sorted(scan.PROTOS.glob("*.proto")):
        for match in re.finditer(r"rpc (\w+)\([^)]*\) returns \([^)]*\)\s*(\{[^}]*\}|;)", path.read_text("utf-8")):
            count = match.group(2).count("(qdata.v1.permission)")
            assert count == 1, f"{path.name}: rpc {match.group(1)} sets the permission option {count} times"


def test_the_server_table_is_the_contract() -> None:
    table = contract.permission_table(_contract_services())
    assert auth.PERMISSIONS == contract.PERMISSIONS == table
    assert len(table) == sum(len(s.methods) for s in _contract_services())
    assert auth.KNOWN_PERMISSIONS == contract.KNOWN_PERMISSIONS == frozenset(table.values()) == EXPECTED_PERMISSIONS


def test_the_token_parser_knows_exactly_the_contract_permissions() -> None:
    digest = auth.hash_token("token")
    for permission in sorted(contract.KNOWN_PERMISSIONS):
        (entry,) = auth.parse_tokens(f"svc {digest} {permission}", "test")
        assert entry.grants == {permission}
    with pytest.raises(ConfigError, match="unknown permission"):
        auth.parse_tokens(f"svc {digest} users.fly", "test")
    with pytest.raises(ConfigError, match="matches no permission"):
        auth.parse_tokens(f"svc {digest} billing.*", "test")


def _listed(text: str) -> list[str]:
    return [w for w in re.split(r",\s*|\s+and\s+", text.strip()) if w]


def test_proto_prose_about_permissions_agrees_with_the_options() -> None:
    docs = scan.rpc_docs()
    problems = []
    # An RPC's comment may name only its own permission.
    for method, doc in docs.items():
        option = contract.PERMISSIONS.get(method, "")
        for named in set(_PERMISSION.findall(doc.comment)) - {option}:
            problems.append(f"{method}'s comment names {named}, but its option is {option or 'missing'}")
    # A service's comment names exactly its RPCs' permissions, and "P for A, B and C" holds.
    for service in contract.SERVICE_DESCRIPTORS:
        text = _service_comment(service.name)
        own = {contract.method_permission(m) for m in service.methods}
        if set(_PERMISSION.findall(text)) != own:
            problems.append(
                f"{service.name}'s comment names {sorted(set(_PERMISSION.findall(text)))}, its RPCs need {sorted(own)}"
            )
        perms = rf"{_PERMISSION.pattern}(?:(?:,\s*|\s+and\s+){_PERMISSION.pattern})*"
        rpcs = r"[A-Z]\w+(?:(?:,\s*|\s+and\s+)[A-Z]\w+)*"
        for match in re.finditer(rf"({perms})\s+for\s+({rpcs})", " ".join(text.split())):
            named, methods = _listed(match.group(1)), _listed(match.group(2))
            pairs = zip(named, methods, strict=True) if len(named) > 1 else ((named[0], m) for m in methods)
            for permission, rpc in pairs:
                actual = contract.PERMISSIONS.get(f"/{service.full_name}/{rpc}")
                if actual != permission:
                    problems.append(f"{service.name}'s comment says {rpc} needs {permission}; its option is {actual}")
    assert not problems, "\n".join(problems)


def _service_comment(name: str) -> str:
    for path in sorted(scan.PROTOS.glob("*.proto")):
        text = path.read_text("utf-8")
        match = re.search(rf"((?://[^\n]*\n)+)service {name} \{{", text)
        if match:
            return "\n".join(line.strip()[2:].strip() for line in match.group(1).splitlines())
    raise AssertionError(f"service {name} not found")


def test_the_documented_permission_table_agrees() -> None:
    """The "| permission | RPCs |" table of the documentation (README or docs/) matches the options."""
    pages = [scan.ROOT / "README.md", *sorted((scan.ROOT / "docs").rglob("*.md"))]
    tables = 0
    for page in pages:
        if not page.is_file():
            continue
        text = page.read_text("utf-8")
        for block in re.finditer(r"^\| permission \| RPCs \|\n\|[- |]+\|\n((?:\|.*\|\n?)+)", text, re.M):
            tables += 1
            documented: dict[str, str] = {}
            for row in block.group(1).splitlines():
                permission, rpcs = (cell.strip() for cell in row.strip().strip("|").split("|"))
                service, _, names = re.sub(r"\([^)]*\)", "", rpcs).partition(" ")
                for rpc in _listed(names):
                    documented[f"/qdata.v1.{service}/{rpc}"] = permission.strip("`")
            assert documented == contract.PERMISSIONS, f"{page.name}: the permission table differs from the options"
    assert tables >= 1, "no '| permission | RPCs |' table found in README.md or docs/"
