"""The audit trail across every service: one record per mutation, a verifiable hash chain.

The mutating RPCs are taken from the service descriptors (every request with a request_id), so
a new mutating RPC without a case here fails the coverage test instead of going unaudited.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import itertools
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import timestamp_pb2

from qdata.v1 import budget_pb2, chat_pb2, ledger_pb2, usage_pb2, user_pb2
from qdata_server import audit_chain
from tests.support.audit import seal
from tests.support.calls import PASSWORD, create_user, expect_error, field_violations, rid
from tests.support.chat import append, create_session
from tests.support.database import sql
from tests.support.ledger import create_hold, deposit, new_user
from tests.support.server import TEST_SETTINGS, Api, ModuleServer
from tests.support.usage import create_model, usage

SERVICES = [
    ("users", user_pb2, "UserService"),
    ("ledger", ledger_pb2, "LedgerService"),
    ("chat", chat_pb2, "ChatService"),
    ("usage", usage_pb2, "UsageService"),
    ("budgets", budget_pb2, "BudgetService"),
]
METHODS = [
    (stub, m.name, getattr(module, m.input_type.name))
    for stub, module, service in SERVICES
    for m in module.DESCRIPTOR.services_by_name[service].methods
]
MUTATING = [(stub, name) for stub, name, cls in METHODS if "request_id" in cls.DESCRIPTOR.fields_by_name]
READS = [(stub, name, cls) for stub, name, cls in METHODS if "request_id" not in cls.DESCRIPTOR.fields_by_name]
# Not mutations, but audited all the same (issue 6: "every reveal audited"); RecordUsageBatch
# writes one record per recorded item, each with the item's request_id (tested below).
AUDITED_READS = {("users", "RevealApiKey")}
BATCHES = {("usage", "RecordUsageBatch")}

# A case builds a valid request for one mutating RPC (creating what it needs first) and returns
# it with the expected (target_type, target_id); a target_id of None is taken from the response.
Case = Callable[[Any], Awaitable[tuple[Any, str, str | None]]]


async def _session(api) -> tuple[str, chat_pb2.Session]:
    user = await create_user(api)
    session = await create_session(api, user.id, title="t")
    await append(api, session, "hello")
    return user.id, session


async def _api_key(api) -> tuple[str, str]:
    user = await create_user(api)
    response = await api.users.CreateApiKey(
        user_pb2.CreateApiKeyRequest(
            request_id=rid(), user_id=user.id, provider="openai", label="k", secret="sk-test-1234"
        )
    )
    return user.id, response.api_key.id


async def case_create_user(api):
    return user_pb2.CreateUserRequest(email="new@example.com", username="newbie", password=PASSWORD), "user", None


async def case_update_user(api):
    user = await create_user(api)
    user.display_name = "Renamed"
    return user_pb2.UpdateUserRequest(user=user, update_mask={"paths": ["display_name"]}), "user", user.id


async def case_delete_user(api):
    user = await create_user(api)
    return user_pb2.DeleteUserRequest(id=user.id), "user", user.id


async def case_change_password(api):
    user = await create_user(api)
    request = user_pb2.ChangePasswordRequest(user_id=user.id, current_password=PASSWORD, new_password=PASSWORD + "!")
    return request, "user", user.id


async def case_import_users(api):
    # One imported user: ImportUsers writes one record per imported user.
    imported = user_pb2.ImportedUser(
        email="legacy@example.com", username="legacy", legacy_password_hash="pbkdf2_sha256$1000$salt$" + "A" * 43 + "="
    )
    return user_pb2.ImportUsersRequest(users=[imported]), "user", None


async def case_update_preferences(api):
    user = await create_user(api)
    request = user_pb2.UpdatePreferencesRequest(
        preferences=user_pb2.Preferences(user_id=user.id, language="en"), update_mask={"paths": ["language"]}
    )
    return request, "preferences", user.id


async def case_create_api_key(api):
    user = await create_user(api)
    request = user_pb2.CreateApiKeyRequest(user_id=user.id, provider="openai", label="main", secret="sk-test-abcdef")
    return request, "api_key", None


async def case_update_api_key(api):
    user_id, key_id = await _api_key(api)
    request = user_pb2.UpdateApiKeyRequest(
        user_id=user_id, api_key_id=key_id, label="renamed", update_mask={"paths": ["label"]}
    )
    return request, "api_key", key_id


async def case_delete_api_key(api):
    user_id, key_id = await _api_key(api)
    return user_pb2.DeleteApiKeyRequest(user_id=user_id, api_key_id=key_id), "api_key", key_id


async def case_deposit(api):
    user_id = await new_user(api)
    request = ledger_pb2.DepositRequest(
        user_id=user_id, amount_micros=1000, currency_code="USD", source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION
    )
    return request, "transaction", None


async def case_charge(api):
    user_id = await new_user(api, funds=10_000)
    return ledger_pb2.ChargeRequest(user_id=user_id, amount_micros=100, currency_code="USD"), "transaction", None


async def case_refund(api):
    user_id = await new_user(api, funds=10_000)
    charge = await api.ledger.Charge(
        ledger_pb2.ChargeRequest(request_id=rid(), user_id=user_id, amount_micros=100, currency_code="USD")
    )
    request = ledger_pb2.RefundRequest(user_id=user_id, original_transaction_id=charge.transaction.id, amount_micros=50)
    return request, "transaction", None


async def case_transfer(api):
    source, target = await new_user(api, funds=10_000), await new_user(api)
    request = ledger_pb2.TransferRequest(from_user_id=source, to_user_id=target, amount_micros=100, currency_code="USD")
    return request, "transaction", None


async def case_create_hold(api):
    user_id = await new_user(api, funds=10_000)
    return ledger_pb2.CreateHoldRequest(user_id=user_id, amount_micros=100, currency_code="USD"), "hold", None


async def case_capture_hold(api):
    user_id = await new_user(api, funds=10_000)
    hold = await create_hold(api, user_id, 100)
    return ledger_pb2.CaptureHoldRequest(user_id=user_id, hold_id=hold.id, amount_micros=60), "hold", hold.id


async def case_release_hold(api):
    user_id = await new_user(api, funds=10_000)
    hold = await create_hold(api, user_id, 100)
    return ledger_pb2.ReleaseHoldRequest(user_id=user_id, hold_id=hold.id), "hold", hold.id


async def case_create_session(api):
    user = await create_user(api)
    return chat_pb2.CreateSessionRequest(user_id=user.id, title="t"), "chat_session", None


async def case_import_session(api):
    user = await create_user(api)
    data = b'{"conversationId": "c1", "messages": [{"messageId": "m1", "isCreatedByUser": true, "text": "hi"}]}'
    request = chat_pb2.ImportSessionRequest(user_id=user.id, format=chat_pb2.IMPORT_FORMAT_LIBRECHAT, data=data)
    return request, "chat_session", None


async def case_update_session(api):
    user_id, session = await _session(api)
    request = chat_pb2.UpdateSessionRequest(
        session=chat_pb2.Session(id=session.id, user_id=user_id, title="renamed"), update_mask={"paths": ["title"]}
    )
    return request, "chat_session", session.id


async def case_delete_session(api):
    user_id, session = await _session(api)
    return chat_pb2.DeleteSessionRequest(user_id=user_id, session_id=session.id), "chat_session", session.id


async def case_append_messages(api):
    user_id, session = await _session(api)
    request = chat_pb2.AppendMessagesRequest(
        user_id=user_id,
        session_id=session.id,
        parent_sequence_number=1,
        messages=[chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_ASSISTANT, content="hi")],
    )
    return request, "chat_session", session.id


async def case_delete_message(api):
    user_id, session = await _session(api)
    request = chat_pb2.DeleteMessageRequest(user_id=user_id, session_id=session.id, sequence_number=1)
    return request, "chat_message", f"{session.id}/1"


async def _share_link(api) -> tuple[str, str]:
    user_id, session = await _session(api)
    response = await api.chat.CreateShareLink(
        chat_pb2.CreateShareLinkRequest(
            request_id=rid(), user_id=user_id, session_id=session.id, scope=chat_pb2.SHARE_SCOPE_ALL_BRANCHES
        )
    )
    return user_id, response.share_link.id


async def case_create_share_link(api):
    user_id, session = await _session(api)
    request = chat_pb2.CreateShareLinkRequest(
        user_id=user_id, session_id=session.id, scope=chat_pb2.SHARE_SCOPE_CURRENT_BRANCH
    )
    return request, "chat_share_link", None


async def case_update_share_link(api):
    user_id, link_id = await _share_link(api)
    request = chat_pb2.UpdateShareLinkRequest(
        share_link=chat_pb2.ShareLink(id=link_id, user_id=user_id),
        update_mask={"paths": ["snapshot_sequence_number"]},
    )
    return request, "chat_share_link", link_id


async def case_revoke_share_link(api):
    user_id, link_id = await _share_link(api)
    return chat_pb2.RevokeShareLinkRequest(user_id=user_id, share_link_id=link_id), "chat_share_link", link_id


async def _budget(api) -> tuple[str, str]:
    user = await create_user(api)
    response = await api.budgets.CreateBudget(
        budget_pb2.CreateBudgetRequest(
            request_id=rid(),
            user_id=user.id,
            budget=budget_pb2.Budget(limit_micros=1_000, period=budget_pb2.BUDGET_PERIOD_DAILY),
        )
    )
    return user.id, response.budget.id


async def case_create_budget(api):
    user = await create_user(api)
    budget = budget_pb2.Budget(limit_micros=1_000, period=budget_pb2.BUDGET_PERIOD_WEEKLY)
    return budget_pb2.CreateBudgetRequest(user_id=user.id, budget=budget), "budget", None


async def case_update_budget(api):
    user_id, budget_id = await _budget(api)
    request = budget_pb2.UpdateBudgetRequest(
        user_id=user_id,
        budget=budget_pb2.Budget(id=budget_id, limit_micros=2_000),
        update_mask={"paths": ["limit_micros"]},
    )
    return request, "budget", budget_id


async def case_delete_budget(api):
    user_id, budget_id = await _budget(api)
    return budget_pb2.DeleteBudgetRequest(user_id=user_id, budget_id=budget_id), "budget", budget_id


async def case_upsert_model(api):
    request = usage_pb2.UpsertModelRequest(model=usage_pb2.Model(id="acme/m1", provider="acme", display_name="M1"))
    return request, "model", "acme/m1"


async def case_record_usage(api):
    await create_model(api)
    user = await create_user(api)
    await deposit(api, user.id, 25_000_000)
    request = usage(user.id)
    request.ClearField("request_id")
    return request, "usage_record", None


async def case_rate_model(api):
    await create_model(api, "acme/rated")
    user = await create_user(api)
    request = usage_pb2.RateModelRequest(user_id=user.id, model_id="acme/rated", stars=4)
    return request, "model_rating", f"{user.id}/acme/rated"


CASES: dict[tuple[str, str], Case] = {
    ("users", "CreateUser"): case_create_user,
    ("users", "UpdateUser"): case_update_user,
    ("users", "DeleteUser"): case_delete_user,
    ("users", "ChangePassword"): case_change_password,
    ("users", "ImportUsers"): case_import_users,
    ("users", "UpdatePreferences"): case_update_preferences,
    ("users", "CreateApiKey"): case_create_api_key,
    ("users", "UpdateApiKey"): case_update_api_key,
    ("users", "DeleteApiKey"): case_delete_api_key,
    ("ledger", "Deposit"): case_deposit,
    ("ledger", "Charge"): case_charge,
    ("ledger", "Refund"): case_refund,
    ("ledger", "Transfer"): case_transfer,
    ("ledger", "CreateHold"): case_create_hold,
    ("ledger", "CaptureHold"): case_capture_hold,
    ("ledger", "ReleaseHold"): case_release_hold,
    ("chat", "CreateSession"): case_create_session,
    ("chat", "UpdateSession"): case_update_session,
    ("chat", "DeleteSession"): case_delete_session,
    ("chat", "AppendMessages"): case_append_messages,
    ("chat", "DeleteMessage"): case_delete_message,
    ("chat", "ImportSession"): case_import_session,
    ("chat", "CreateShareLink"): case_create_share_link,
    ("chat", "UpdateShareLink"): case_update_share_link,
    ("chat", "RevokeShareLink"): case_revoke_share_link,
    ("usage", "UpsertModel"): case_upsert_model,
    ("usage", "RecordUsage"): case_record_usage,
    ("usage", "RateModel"): case_rate_model,
    ("budgets", "CreateBudget"): case_create_budget,
    ("budgets", "UpdateBudget"): case_update_budget,
    ("budgets", "DeleteBudget"): case_delete_budget,
}


async def audit_count(api) -> int:
    return (await sql(api, "SELECT count(*) AS n FROM audit_events"))[0]["n"]


async def events_after(api, last_id: int) -> list[dict[str, Any]]:
    return await sql(api, "SELECT * FROM audit_events WHERE audit_event_id > %s ORDER BY audit_event_id", (last_id,))


async def last_id(api) -> int:
    return (await sql(api, "SELECT coalesce(max(audit_event_id), 0) AS id FROM audit_events"))[0]["id"]


def response_target(response) -> str:
    """The id of the resource a mutation's response wraps (the first message field with an id)."""
    for field, value in response.ListFields():
        if field.message_type is None:
            continue
        if isinstance(value, Sequence):  # ImportUsers: results[0].user
            value = value[0].user if value and hasattr(value[0], "user") else None
        if value is not None and hasattr(value, "id") and value.id:
            return value.id
    raise AssertionError(f"no id in {type(response).__name__}")


async def is_unimplemented(call) -> bool:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            return True
        raise
    return False


# ---- every mutation leaves exactly one record ---------------------------------------------------


def test_every_mutating_rpc_has_a_case():
    """Every RPC with a request_id is covered here (add a case when adding a mutating RPC)."""
    assert set(MUTATING) - set(CASES) == set()
    assert set(CASES) - set(MUTATING) == set()


# An API key vault key ring, so every mutating RPC can succeed.
VAULT_SETTINGS = dataclasses.replace(TEST_SETTINGS, key_ring="1:" + base64.b64encode(os.urandom(32)).decode())


@pytest.fixture
async def vault_api(module_server: ModuleServer) -> Api:
    """The module's server with an API key vault key ring."""
    return await module_server.api(VAULT_SETTINGS)


@pytest.mark.parametrize(("stub_name", "method_name"), MUTATING, ids=[f"{s}.{m}" for s, m in MUTATING])
async def test_mutation_leaves_exactly_one_record(vault_api, stub_name, method_name):
    api = vault_api
    method = getattr(getattr(api, stub_name), method_name)
    try:
        request, target_type, target_id = await CASES[(stub_name, method_name)](api)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip(f"{method_name}'s prerequisites are not implemented yet")
        raise
    request.request_id = rid()
    before = await last_id(api)
    try:
        response = await method(request)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip(f"{method_name} is not implemented yet")
        raise
    events = await events_after(api, before)
    assert len(events) == 1, [e["action"] for e in events]
    (event,) = events
    assert event["action"] == f"{stub_name}.{method_name}"
    assert event["request_id"] == request.request_id
    assert event["target_type"] == target_type
    assert event["target_id"] == (target_id or response_target(response))
    assert event["actor"]

    # A replay answers from the idempotency record and writes nothing.
    count = await audit_count(api)
    await method(request)
    assert await audit_count(api) == count
    await seal(api)
    report = await audit_chain.verify(api.database_url)
    assert report.ok, report.problems
    assert (report.checked, report.unsealed) == (count, 0)


async def test_reveal_api_key_leaves_one_record(vault_api):
    api = vault_api
    try:
        user_id, key_id = await _api_key(api)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip("the API key vault is not implemented yet")
        raise
    before = await last_id(api)
    await api.users.RevealApiKey(user_pb2.RevealApiKeyRequest(user_id=user_id, api_key_id=key_id))
    events = await events_after(api, before)
    assert [(e["action"], e["target_type"], e["target_id"]) for e in events] == [
        ("users.RevealApiKey", "api_key", key_id)
    ]
    assert "sk-test" not in str(events)


async def test_record_usage_batch_leaves_one_record_per_item(api):
    await create_model(api)
    user = await create_user(api)
    await deposit(api, user.id, 25_000_000)
    items = [usage(user.id), usage(user.id)]
    before = await last_id(api)
    request = usage_pb2.RecordUsageBatchRequest(requests=items)
    await api.usage.RecordUsageBatch(request)
    events = await events_after(api, before)
    assert [(e["action"], e["request_id"]) for e in events] == [("usage.RecordUsage", i.request_id) for i in items]
    count = await audit_count(api)
    await api.usage.RecordUsageBatch(request)
    assert await audit_count(api) == count


PLAIN_READS = [(s, m, c) for s, m, c in READS if (s, m) not in AUDITED_READS | BATCHES]


@pytest.mark.parametrize(
    ("stub_name", "method_name", "request_class"), PLAIN_READS, ids=[f"{s}.{m}" for s, m, _ in PLAIN_READS]
)
async def test_reads_leave_no_record(api, stub_name, method_name, request_class):
    """Every read RPC, called with a plausible request (valid or not), appends nothing."""
    user = await create_user(api)
    await deposit(api, user.id, 1000)
    session = await create_session(api, user.id, title="t")
    await append(api, session, "hello")
    await create_model(api)
    plausible: dict[str, dict[str, Any]] = {
        "users": {"user_id": user.id, "id": user.id},
        "ledger": {"user_id": user.id, "currency_code": "USD"},
        "chat": {"user_id": user.id, "session_id": session.id, "sequence_number": 1, "query": "hello"},
        "usage": {"user_id": user.id, "model_id": "openai/gpt-4o-mini"},
        "budgets": {"user_id": user.id, "budget_id": str(uuid.uuid4())},
    }
    count = await audit_count(api)
    method = getattr(getattr(api, stub_name), method_name)
    fields = request_class.DESCRIPTOR.fields_by_name
    values = {k: v for k, v in plausible[stub_name].items() if k in fields}
    try:
        call = method(request_class(**values))
        if hasattr(call, "__aiter__"):  # ExportSession streams
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as error:
        assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    assert await audit_count(api) == count, "a read wrote an audit record"


async def test_rejected_mutation_leaves_no_record(api):
    count = await audit_count(api)
    await expect_error(
        api.ledger.Charge(
            ledger_pb2.ChargeRequest(
                request_id=rid(), user_id=(await new_user(api)), amount_micros=5, currency_code="USD"
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert await audit_count(api) == count + 1  # only new_user's CreateUser


# ---- the hash chain ---------------------------------------------------------------------------


async def test_chains_stay_linear_under_concurrent_mutations(api):
    users = await asyncio.gather(*(create_user(api) for _ in range(50)))
    await asyncio.gather(*(deposit(api, u.id, 1000) for u in users[:25]))
    await seal(api)
    report = await audit_chain.verify(api.database_url, batch_size=3)
    assert report.ok, report.problems
    assert report.checked == await audit_count(api) >= 75
    rows = await sql(api, "SELECT chain_shard, chain_seq, prev_hash, hash FROM audit_events ORDER BY 1, 2")
    chains: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        chains.setdefault(row["chain_shard"], []).append(row)
    assert len(chains) > 1  # the burst spread over several chains
    for chain in chains.values():
        assert [r["chain_seq"] for r in chain] == list(range(1, len(chain) + 1))
        assert chain[0]["prev_hash"] == audit_chain.GENESIS
        for before, after in itertools.pairwise(chain):
            assert after["prev_hash"] == before["hash"]


async def tamper(api, statement: str, params: Any) -> None:
    """Runs statement with the append-only trigger off, as an intruder with the owner's rights would."""
    await sql(api, "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete")
    try:
        await sql(api, statement, params)
    finally:
        await sql(api, "ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update_delete")


async def one_chain_of_five(api) -> list[int]:
    """Five events written by one transaction (hence on one chain, consecutive), after some API traffic."""
    for _ in range(3):
        await create_user(api)
    rows = await sql(
        api,
        "INSERT INTO audit_events (actor, action, target_type, target_id, request_id, summary)"
        " SELECT 'test', 'test.Tamper', 'thing', n::text, 'r' || n, jsonb_build_object('n', n)"
        " FROM generate_series(1, 5) AS n RETURNING audit_event_id",
    )
    await seal(api)
    rows = await sql(
        api,
        "SELECT audit_event_id, chain_seq FROM audit_events WHERE audit_event_id = ANY (%s)",
        ([r["audit_event_id"] for r in rows],),
    )
    return [r["audit_event_id"] for r in sorted(rows, key=lambda r: r["chain_seq"])]


def verify_cli(api) -> subprocess.CompletedProcess:
    env = {"DATABASE_URL": api.database_url, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "qdata_server", "verify-audit"], env=env, capture_output=True, text=True, timeout=60
    )


def kinds(report: audit_chain.Report) -> list[tuple[int | None, str]]:
    return [(p.audit_event_id, p.kind) for p in report.problems]


async def test_intact_trail_verifies_from_the_command_line(api):
    await one_chain_of_five(api)
    done = await asyncio.to_thread(verify_cli, api)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{await audit_count(api)} event(s) verified" in done.stdout


async def test_edited_event_is_detected(api):
    ids = await one_chain_of_five(api)
    victim = ids[2]
    await tamper(api, "UPDATE audit_events SET summary = '{\"n\": 0}' WHERE audit_event_id = %s", (victim,))
    assert kinds(await audit_chain.verify(api.database_url)) == [(victim, "edited")]
    done = await asyncio.to_thread(verify_cli, api)
    assert done.returncode == 1
    assert f"audit event {victim} (chain" in done.stdout
    assert "edited" in done.stdout


async def test_edited_event_with_recomputed_hash_breaks_the_next_link(api):
    ids = await one_chain_of_five(api)
    await tamper(
        api,
        "UPDATE audit_events SET actor = 'someone-else', hash = audit_event_hash(prev_hash, chain_shard, chain_seq,"
        " audit_event_id, occurred_at, 'someone-else', user_id, action, target_type, target_id, request_id, summary)"
        " WHERE audit_event_id = %s",
        (ids[1],),
    )
    assert kinds(await audit_chain.verify(api.database_url)) == [(ids[2], "relinked")]


async def test_deleted_event_is_detected(api):
    ids = await one_chain_of_five(api)
    await tamper(api, "DELETE FROM audit_events WHERE audit_event_id = %s", (ids[2],))
    report = await audit_chain.verify(api.database_url)
    assert kinds(report) == [(ids[3], "missing")]
    done = await asyncio.to_thread(verify_cli, api)
    assert done.returncode == 1
    assert f"audit event {ids[3]} (chain" in done.stdout
    assert "missing" in done.stdout


async def test_deleted_newest_event_is_detected(api):
    ids = await one_chain_of_five(api)
    (row,) = await sql(api, "SELECT chain_shard, chain_seq FROM audit_events WHERE audit_event_id = %s", (ids[-1],))
    await tamper(api, "DELETE FROM audit_events WHERE audit_event_id = %s", (ids[-1],))
    report = await audit_chain.verify(api.database_url)
    assert kinds(report) == [(None, "truncated")]
    assert (report.problems[0].chain_shard, report.problems[0].chain_seq) == (row["chain_shard"], row["chain_seq"])


async def test_reordered_events_are_detected(api):
    ids = await one_chain_of_five(api)
    a, b = ids[1], ids[2]
    # Swap the contents of two events: what reordering the trail amounts to.
    await tamper(
        api,
        "UPDATE audit_events AS e SET occurred_at = o.occurred_at, actor = o.actor, user_id = o.user_id,"
        " action = o.action, target_type = o.target_type, target_id = o.target_id, request_id = o.request_id,"
        " summary = o.summary FROM audit_events AS o"
        " WHERE (e.audit_event_id, o.audit_event_id) IN ((%s, %s), (%s, %s))",
        (a, b, b, a),
    )
    assert kinds(await audit_chain.verify(api.database_url)) == [(a, "edited"), (b, "edited")]


async def test_database_still_refuses_changes(api):
    await create_user(api)
    for statement in ("UPDATE audit_events SET actor = 'x'", "DELETE FROM audit_events", "TRUNCATE audit_events"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            await sql(api, statement)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="cannot be deleted"):
        await sql(api, "DELETE FROM audit_chain_heads")


async def test_chain_fields_are_assigned_by_the_database(api):
    await create_user(api)
    (row,) = await sql(
        api,
        "INSERT INTO audit_events (actor, action, target_type, target_id, request_id, chain_shard, chain_seq,"
        " prev_hash, hash) VALUES ('x', 'x.Y', 't', '1', 'r', 999, 999, %s, %s) RETURNING *",
        (b"\x01" * 32, b"\x02" * 32),
    )
    # Appended unsealed, whatever the caller supplied; the sealer decides.
    assert (row["chain_shard"], row["chain_seq"], row["prev_hash"], row["hash"]) == (None, None, None, None)
    await seal(api)
    (row,) = await sql(
        api,
        "SELECT chain_shard, chain_seq, hash FROM audit_events WHERE audit_event_id = %s",
        (row["audit_event_id"],),
    )
    assert 0 <= row["chain_shard"] < 32
    assert row["chain_seq"] != 999
    assert row["hash"] != b"\x02" * 32
    assert (await audit_chain.verify(api.database_url)).ok


# ---- ListAuditEvents ----------------------------------------------------------------------------


def ts(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


async def list_all(api, **filters: Any) -> list[user_pb2.AuditEvent]:
    events, token = [], ""
    while True:
        page = await api.users.ListAuditEvents(user_pb2.ListAuditEventsRequest(page_token=token, **filters))
        events += page.events
        token = page.next_page_token
        if not token:
            return events


async def test_list_audit_events_filters_and_pages(api):
    alice, bob = await create_user(api), await create_user(api)
    for user in (alice, bob, alice):
        await api.users.UpdatePreferences(
            user_pb2.UpdatePreferencesRequest(
                request_id=rid(),
                preferences=user_pb2.Preferences(user_id=user.id, language="en"),
                update_mask={"paths": ["language"]},
            )
        )
    everything = await list_all(api, page_size=2)
    assert [e.id for e in everything] == sorted((e.id for e in everything), reverse=True)
    assert len(everything) == 5
    newest = everything[0]
    assert newest.action == "users.UpdatePreferences"
    assert newest.user_id == alice.id
    assert newest.target_type == "preferences"
    assert newest.summary_json.startswith("{")
    assert newest.event_time.seconds > 0

    assert [e.action for e in await list_all(api, user_id=alice.id, page_size=1)] == [
        "users.UpdatePreferences",
        "users.UpdatePreferences",
        "users.CreateUser",
    ]
    assert len(await list_all(api, action="users.CreateUser")) == 2
    assert len(await list_all(api, actor=newest.actor)) == 5
    assert await list_all(api, actor="nobody") == []
    now = datetime.datetime.now(datetime.UTC)
    assert (
        len(
            await list_all(
                api, start_time=ts(now - datetime.timedelta(hours=1)), end_time=ts(now + datetime.timedelta(hours=1))
            )
        )
        == 5
    )
    assert await list_all(api, end_time=ts(now - datetime.timedelta(hours=1))) == []


async def test_list_audit_events_tokens_are_bound_to_filters(api):
    user = await create_user(api)
    await create_user(api)
    page = await api.users.ListAuditEvents(user_pb2.ListAuditEventsRequest(page_size=1))
    assert page.next_page_token
    error = await expect_error(
        api.users.ListAuditEvents(
            user_pb2.ListAuditEventsRequest(page_size=1, user_id=user.id, page_token=page.next_page_token)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in field_violations(error)
    error = await expect_error(
        api.users.ListAuditEvents(user_pb2.ListAuditEventsRequest(page_token=page.next_page_token[:-4] + "AAAA")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in field_violations(error)


async def test_list_audit_events_validation(api):
    now = datetime.datetime.now(datetime.UTC)
    bad = user_pb2.ListAuditEventsRequest(
        user_id="not-a-uuid",
        actor="x" * 201,
        action="a\x00b",
        start_time=ts(now),
        end_time=ts(now - datetime.timedelta(seconds=1)),
    )
    error = await expect_error(api.users.ListAuditEvents(bad), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(field_violations(error)) == {"user_id", "actor", "action", "end_time"}
    error = await expect_error(
        api.users.ListAuditEvents(user_pb2.ListAuditEventsRequest(page_size=-1)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert set(field_violations(error)) == {"page_size"}
    error = await expect_error(
        api.users.ListAuditEvents(user_pb2.ListAuditEventsRequest(start_time=timestamp_pb2.Timestamp(seconds=-5))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(field_violations(error)) == {"start_time"}
