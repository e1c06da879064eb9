"""Every RPC of every service answers hostile input with a deliberate status, never INTERNAL.

The requests are built from the contract's descriptors: each string field of each request gets
values that have broken services before (empty, huge, SQL metacharacters, NUL and control
characters, odd Unicode, UUID look-alikes), each integer field extreme values.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from qdata.v1 import budget_pb2, chat_pb2, ledger_pb2, usage_pb2, user_pb2
from tests.support.calls import PASSWORD, create_user, rid

HOSTILE_STRINGS = [
    "",
    " ",
    "x" * 20_000,
    "'; DROP TABLE users; --",
    '" OR 1=1 --',
    "%(user_id)s",
    "%s%s%s",
    "\x00",
    "abc\x00def",
    "\x1b[31m\r\n",
    "\u202etxt.exe",
    "😀" * 50,
    "00000000-0000-0000-0000-000000000000",
    "123e4567-e89b-12d3-a456-42661417400Z",
    "..//..//etc/passwd",
]
HOSTILE_INTS = [-1, -(2**31), 2**31 - 1]
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

SERVICES = [
    ("users", user_pb2.DESCRIPTOR.services_by_name["UserService"], user_pb2),
    ("ledger", ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"], ledger_pb2),
    ("chat", chat_pb2.DESCRIPTOR.services_by_name["ChatService"], chat_pb2),
    ("usage", usage_pb2.DESCRIPTOR.services_by_name["UsageService"], usage_pb2),
    ("budgets", budget_pb2.DESCRIPTOR.services_by_name["BudgetService"], budget_pb2),
]


def valid_bases(user: user_pb2.User, session: chat_pb2.Session | None = None) -> dict[str, object]:
    """Valid requests to start from, so a hostile field is the only thing wrong and gets deep.

    Chat requests name `session` (the user's, holding message 1) when one is given.
    """
    chat = {}
    if session is not None:
        ids = {"user_id": user.id, "session_id": session.id}
        hello = chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_USER, content="hello")
        chat = {
            "CreateSession": chat_pb2.CreateSessionRequest(
                user_id=user.id, title="t", model_id="m", tags=["a"], metadata={"k": "v"}
            ),
            "GetSession": chat_pb2.GetSessionRequest(**ids),
            "ListSessions": chat_pb2.ListSessionsRequest(user_id=user.id, tags=["a"], page_size=5),
            "UpdateSession": chat_pb2.UpdateSessionRequest(
                session=chat_pb2.Session(
                    id=session.id, user_id=user.id, title="t", model_id="m", current_leaf_sequence_number=1
                ),
                update_mask={"paths": ["title", "model_id", "current_leaf_sequence_number"]},
            ),
            "DeleteSession": chat_pb2.DeleteSessionRequest(**ids),
            "AppendMessages": chat_pb2.AppendMessagesRequest(**ids, messages=[hello], parent_sequence_number=1),
            "ListMessages": chat_pb2.ListMessagesRequest(
                **ids, scope=chat_pb2.MESSAGE_SCOPE_BRANCH, leaf_sequence_number=1, page_size=5
            ),
            "GetMessage": chat_pb2.GetMessageRequest(**ids, sequence_number=1),
            "DeleteMessage": chat_pb2.DeleteMessageRequest(**ids, sequence_number=1),
            "SearchMessages": chat_pb2.SearchMessagesRequest(**ids, query="hello"),
        }
    return chat | {
        "CreateUser": user_pb2.CreateUserRequest(
            email="fresh@example.com", username="fresh", display_name="Fresh", password=PASSWORD
        ),
        "GetUser": user_pb2.GetUserRequest(id=user.id),
        "UpdateUser": user_pb2.UpdateUserRequest(user=user, update_mask={"paths": ["display_name"]}),
        "DeleteUser": user_pb2.DeleteUserRequest(id=user.id),
        "Authenticate": user_pb2.AuthenticateRequest(login=user.username, password=PASSWORD),
        "ChangePassword": user_pb2.ChangePasswordRequest(
            user_id=user.id, current_password=PASSWORD, new_password=PASSWORD + "!"
        ),
        "GetPreferences": user_pb2.GetPreferencesRequest(user_id=user.id),
        "UpdatePreferences": user_pb2.UpdatePreferencesRequest(
            preferences=user_pb2.Preferences(user_id=user.id, language="en", extra={"k": "v"}),
            update_mask={"paths": ["language", "extra"]},
        ),
        "ImportUsers": user_pb2.ImportUsersRequest(
            users=[
                user_pb2.ImportedUser(
                    email="legacy@example.com",
                    username="legacy",
                    legacy_password_hash="pbkdf2_sha256$1000$salt$" + "A" * 43 + "=",
                )
            ]
        ),
    }


async def budget_bases(api, user: user_pb2.User) -> dict[str, object]:
    """Valid BudgetService requests naming one budget of user's (every field set, so each is varied)."""
    budget = budget_pb2.Budget(
        display_name="cap",
        currency_code="USD",
        limit_micros=1_000,
        period=budget_pb2.BUDGET_PERIOD_DAILY,
        time_zone="Europe/Berlin",
        caller="svc",
        enforcement=budget_pb2.BUDGET_ENFORCEMENT_SOFT,
        alert_thresholds_percent=[50],
    )
    made = (
        await api.budgets.CreateBudget(budget_pb2.CreateBudgetRequest(request_id=rid(), user_id=user.id, budget=budget))
    ).budget
    ids = {"user_id": user.id, "budget_id": made.id}
    return {
        "CreateBudget": budget_pb2.CreateBudgetRequest(user_id=user.id, budget=budget),
        "GetBudget": budget_pb2.GetBudgetRequest(**ids),
        "ListBudgets": budget_pb2.ListBudgetsRequest(user_id=user.id, page_size=5),
        "UpdateBudget": budget_pb2.UpdateBudgetRequest(
            user_id=user.id,
            budget=made,
            update_mask={"paths": ["display_name", "limit_micros", "enforcement", "alert_thresholds_percent"]},
        ),
        "DeleteBudget": budget_pb2.DeleteBudgetRequest(**ids),
        "ListBudgetAlerts": budget_pb2.ListBudgetAlertsRequest(user_id=user.id, page_size=5),
    }


def variants(message_class, base=None) -> list:
    """One request per (scalar field, hostile value), the rest valid, including nested messages."""
    return list(_mutations(message_class, base))


def _mutations(message_class, base):
    for field in message_class.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated and base is not None:
            if field.message_type.full_name.startswith("qdata.") and base.HasField(field.name):
                for inner in _mutations(type(getattr(base, field.name)), getattr(base, field.name)):
                    request = type(base)()
                    request.CopyFrom(base)
                    getattr(request, field.name).CopyFrom(inner)
                    if "request_id" in message_class.DESCRIPTOR.fields_by_name:
                        request.request_id = rid()
                    yield request
            continue
        if field.is_repeated:
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            values = HOSTILE_STRINGS
        elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
            values = HOSTILE_INTS + ([-(2**63), 2**63 - 1] if field.type == FieldDescriptor.TYPE_INT64 else [])
        else:
            continue
        for value in values:
            request = message_class()
            if base is not None:
                request.CopyFrom(base)
            if "request_id" in message_class.DESCRIPTOR.fields_by_name and field.name != "request_id":
                request.request_id = rid()
            setattr(request, field.name, value)
            yield request


def cases():
    for attribute, service, module in SERVICES:
        for method in service.methods:
            if method.server_streaming or method.client_streaming:
                continue
            yield pytest.param(attribute, method.name, getattr(module, method.input_type.name), id=method.full_name)


@pytest.mark.parametrize(("stub_name", "method_name", "request_class"), list(cases()))
async def test_hostile_scalars_never_cause_internal_errors(api, stub_name, method_name, request_class):
    method = getattr(getattr(api, stub_name), method_name)
    user = await create_user(api)
    session = None
    if stub_name == "chat":
        session = (
            await api.chat.CreateSession(chat_pb2.CreateSessionRequest(request_id=rid(), user_id=user.id))
        ).session
        hello = chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_USER, content="hello")
        await api.chat.AppendMessages(
            chat_pb2.AppendMessagesRequest(request_id=rid(), user_id=user.id, session_id=session.id, messages=[hello])
        )
    base = valid_bases(user, session).get(method_name) if stub_name in ("users", "chat") else None
    if stub_name == "budgets":
        base = (await budget_bases(api, user))[method_name]
    for request in variants(request_class, base):
        try:
            await method(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            assert error.code() not in BAD_CODES, (
                f"{method_name}({request!r:.200}) -> {error.code()}: {error.details()}"
            )
            assert "Traceback" not in (error.details() or "")
            assert "SELECT" not in (error.details() or "") and "INSERT" not in (error.details() or "")
