"""Reasons come from the contract: every reason an RPC can raise is documented on it, and back.

tests/unit/contract_scan.py explains how the scan decides which reasons an RPC can raise (a
shared layer documented once in error_reason.proto, a Python call-graph walk from each servicer
method, and the constraints its SQL can violate). The Errors paragraph that ends each RPC's
comment lists the rest, grouped by status code.
"""

from __future__ import annotations

import ast
import re

import grpc

from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import contract, errors
from qdata_server.db.constraints import CONSTRAINT_ERRORS
from tests.unit import contract_scan as scan

# (RPC, reason) pairs the scan reports but the RPC cannot raise, each with the reason why. The scan
# is a sound over-approximation: it sees that SQL writes a column, not the value it writes.
_NOT_DEPOSIT = "only deposits carry an external_reference; other transactions insert '' (not unique)"
OVER_REPORTED: dict[tuple[str, str], str] = {
    **{
        (f"/qdata.v1.{service}/{rpc}", "EXTERNAL_REFERENCE_EXISTS"): _NOT_DEPOSIT
        for service, rpc in (
            ("LedgerService", "Charge"),
            ("LedgerService", "Refund"),
            ("LedgerService", "Transfer"),
            ("LedgerService", "CaptureHold"),
            ("UsageService", "RecordUsage"),
            ("UsageService", "RecordUsageBatch"),
        )
    },
    **{
        (f"/qdata.v1.UsageService/{rpc}", "CAPTURE_EXCEEDS_HOLD"): (
            "usage_record captures least(cost, the hold's amount) and charges the overage separately"
        )
        for rpc in ("RecordUsage", "RecordUsageBatch")
    },
    # Budgets' triggers (db/functions/budget_enforcement.sql) fire on every insert into
    # ledger_transactions and ledger_holds (and the scan sees no trigger event), but only a charge,
    # a hold capture or a new hold raises consumption.
    **{
        (f"/qdata.v1.LedgerService/{rpc}", "BUDGET_EXCEEDED"): (
            "only charges, hold captures and new holds raise a budget's consumption"
        )
        for rpc in ("Deposit", "Refund", "Transfer", "ReleaseHold")
    },
    ("/qdata.v1.BudgetService/CreateBudget", "BUDGET_EXCEEDED"): (
        "its account lock (ledger_lock_account) only updates ledger_holds, sweeping expired holds; the"
        " budgets' trigger on ledger_holds fires on inserts"
    ),
    ("/qdata.v1.ChatService/ImportSession", "SESSION_NOT_FOUND"): (
        "the messages go into the session created in the same transaction, and an earlier import's session"
        " is held by chat_imports' foreign key"
    ),
}

# RPCs whose listed reasons also (or only) arrive per item in the response, not as the call's status.
ITEM_NOTES = {
    "/qdata.v1.UserService/ImportUsers": "per user, in ImportUserResult.error_reason",
    "/qdata.v1.UsageService/RecordUsageBatch": "per item, in RecordUsageResult.error_reason",
}


def _shared() -> dict[str, set[str]]:
    return scan.shared_reasons()


def _required(method: str, reasons: dict[str, set[str]]) -> dict[str, set[str]]:
    shared = _shared()
    return {r: s for r, s in reasons.items() if r not in shared and (method, r) not in OVER_REPORTED}


def test_every_enum_value_states_its_code_and_scope() -> None:
    docs = scan.reason_docs()
    assert set(docs) == scan.ALL_REASONS
    for name, doc in docs.items():
        assert doc.code in grpc.StatusCode.__members__, f"{name}: no 'Code: <status>.' line (got {doc.code!r})"
        assert doc.scope in (*scan.SHARED_SCOPES, scan.LISTED_SCOPE), f"{name}: unknown scope {doc.scope!r}"


def test_the_shared_layer_raises_exactly_the_reasons_documented_for_any_rpc() -> None:
    shared = _shared()
    documented = {n for n, d in scan.reason_docs().items() if d.scope in scan.SHARED_SCOPES}
    undocumented = {r: sorted(shared[r]) for r in set(shared) - documented}
    assert not undocumented, f"raised in the shared layer but not documented as 'Raised by: any RPC': {undocumented}"
    assert not documented - set(shared), (
        f"documented as raised by any RPC, but the shared layer never raises: {sorted(documented - set(shared))}"
    )


def test_every_reason_an_rpc_can_raise_is_listed_on_it() -> None:
    docs = scan.rpc_docs()
    missing = {}
    for method, reasons in scan.rpc_reasons().items():
        for reason, sites in _required(method, reasons).items():
            if reason not in docs[method].errors:
                missing[f"{method} {reason}"] = sorted(sites)
    assert not missing, f"reasons an RPC can raise that its Errors paragraph does not list (raised at): {missing}"


def test_every_listed_reason_exists_and_the_rpc_can_raise_it() -> None:
    docs = scan.rpc_docs()
    reasons = scan.rpc_reasons()
    reason_docs = scan.reason_docs()
    assert set(docs) == set(reasons) == set(contract.PERMISSIONS)
    problems = []
    for method, doc in docs.items():
        problems += [f"{method}: {p}" for p in doc.problems]
        for reason, code in doc.errors.items():
            if reason not in scan.ALL_REASONS:
                problems.append(f"{method} lists {reason}, which is not in the ErrorReason enum")
            elif reason_docs[reason].scope != scan.LISTED_SCOPE:
                problems.append(f"{method} lists {reason}, which error_reason.proto documents for any RPC")
            elif reason not in _required(method, reasons[method]):
                problems.append(f"{method} lists {reason}, which the server never raises for it")
            elif code != reason_docs[reason].code:
                problems.append(
                    f"{method} lists {reason} under {code}; error_reason.proto says {reason_docs[reason].code}"
                )
    assert not problems, "\n".join(problems)


def test_every_enum_value_is_raised_somewhere() -> None:
    raised = set(_shared()).union(*scan.rpc_reasons().values())
    assert not scan.ALL_REASONS - raised, f"enum values nothing raises: {sorted(scan.ALL_REASONS - raised)}"


def test_over_reported_pairs_are_still_reported() -> None:
    reasons = scan.rpc_reasons()
    stale = [pair for pair in OVER_REPORTED if pair[1] not in reasons.get(pair[0], {})]
    assert not stale, f"the scan no longer reports these; drop them from OVER_REPORTED: {stale}"


def test_nothing_escapes_the_scan() -> None:
    assert scan.unattributed() == {}, "ErrorReason uses that no RPC reaches and no shared module holds"
    assert scan.unlocated_constraints() == set(), "constraints the SQL scan cannot place"


def test_the_server_spells_no_reason_as_a_string() -> None:
    assert list(scan.iter_reason_literals()) == [], "use ErrorReason values (qdata_server.errors takes them)"


def test_wire_names_drop_the_prefix() -> None:
    for value in ErrorReason.DESCRIPTOR.values:
        if value.number:
            assert contract.wire_reason(value.number) == value.name.removeprefix("ERROR_REASON_")
    error = errors.NotFound("user not found", reason=ErrorReason.ERROR_REASON_USER_NOT_FOUND)
    assert (error.reason, error.error_reason) == ("USER_NOT_FOUND", ErrorReason.ERROR_REASON_USER_NOT_FOUND)
    assert errors.InvalidArgument([]).reason == "INVALID_ARGUMENT"


def test_each_raise_carries_the_code_its_reason_documents() -> None:
    reason_docs = scan.reason_docs()
    wrong = []
    for name, factory in CONSTRAINT_ERRORS.items():
        error = factory("")
        if error.reason in reason_docs and error.code.name != reason_docs[error.reason].code:
            wrong.append(f"constraint {name}: {error.code.name} {error.reason}")
    for module in scan.modules().values():
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Call):
                continue
            cls = getattr(errors, getattr(node.func, "id", getattr(node.func, "attr", "")), None)
            keyword = next((k.value for k in node.keywords if k.arg == "reason"), None)
            reason = scan._reason_of(keyword) if keyword is not None else None
            if isinstance(cls, type) and issubclass(cls, errors.QdataError) and reason:
                if cls.code.name != reason_docs[reason].code:
                    wrong.append(f"{module.name}:{node.lineno}: {cls.__name__} with {reason}")
    assert not wrong, f"status codes that differ from error_reason.proto's: {wrong}"


def test_proto_prose_names_only_known_reasons() -> None:
    unknown = set()
    for path in sorted(scan.PROTOS.glob("*.proto")):
        comments = " ".join(m.group(1) for m in re.finditer(r"//(.*)", path.read_text("utf-8")))
        for match in re.finditer(r"\breasons? ((?:[A-Z][A-Z0-9_]+(?:,? (?:or |and )?)?)+)", comments):
            unknown |= {f"{path.name}: {w}" for w in re.findall(r"[A-Z][A-Z0-9_]+", match.group(1))} - {
                f"{path.name}: {r}" for r in scan.ALL_REASONS
            }
    assert not unknown, f"prose names reasons the enum lacks: {sorted(unknown)}"


def test_client_docstrings_name_true_reasons() -> None:
    from qdata import client

    reason_docs = scan.reason_docs()
    problems = []
    for name in client.__all__:
        cls = getattr(client, name)
        if not (isinstance(cls, type) and issubclass(cls, client.QdataError) and cls is not client.QdataError):
            continue
        code = next(c for c, k in client._ERROR_CLASSES.items() if k is cls).name
        named = {w for w in re.findall(r"\b[A-Z][A-Z0-9_]+\b", cls.__doc__ or "") if w in scan.ALL_REASONS}
        for reason in named:
            if reason_docs[reason].code != code:
                problems.append(f"client.{name} names {reason}, which comes with {reason_docs[reason].code}")
        if "``reason`` is" in (cls.__doc__ or ""):
            # A docstring that says what reason is lists every reason of its code.
            every = {r for r, d in reason_docs.items() if d.code == code}
            if named != every:
                problems.append(f"client.{name} lists {sorted(named)}; the contract has {sorted(every)}")
    assert not problems, "\n".join(problems)
    assert client.QdataError("x", reason="HOLD_EXPIRED").error_reason == ErrorReason.ERROR_REASON_HOLD_EXPIRED
    assert client.QdataError("x", reason="FROM_A_NEWER_SERVER").error_reason == ErrorReason.ERROR_REASON_UNSPECIFIED
