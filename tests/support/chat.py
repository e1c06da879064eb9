"""Helpers shared by the ChatService tests: sessions and messages through the API, and a look at
the database for what a rejected request must leave unchanged."""

from __future__ import annotations

from typing import Any

import grpc

from qdata.v1 import chat_pb2
from tests.support.calls import expect_error, field_violations, rid
from tests.support.database import table_rows

USER = chat_pb2.MESSAGE_ROLE_USER
ASSISTANT = chat_pb2.MESSAGE_ROLE_ASSISTANT
SYSTEM = chat_pb2.MESSAGE_ROLE_SYSTEM
TOOL = chat_pb2.MESSAGE_ROLE_TOOL
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS


CHAT_TABLES = ("chat_sessions", "chat_messages", "audit_events", "idempotency_keys")


async def chat_state(api) -> dict[str, Any]:
    """Everything a chat request could change, to prove that a rejected one changed nothing."""
    return await table_rows(api, *CHAT_TABLES)


async def create_session(api, user_id: str, **fields: Any) -> chat_pb2.Session:
    request = chat_pb2.CreateSessionRequest(request_id=rid(), user_id=user_id, **fields)
    return (await api.chat.CreateSession(request)).session


def message(content: str = "hello", role: int = USER, **fields: Any) -> chat_pb2.MessageInput:
    return chat_pb2.MessageInput(role=role, content=content, **fields)


async def append(
    api, session: chat_pb2.Session, *messages: chat_pb2.MessageInput | str, parent: int | None = None, **fields: Any
) -> chat_pb2.AppendMessagesResponse:
    """Appends messages (a str is a USER message with that content) and returns the response."""
    request = chat_pb2.AppendMessagesRequest(
        request_id=fields.pop("request_id", None) or rid(),
        user_id=fields.pop("user_id", None) or session.user_id,
        session_id=session.id,
        messages=[message(m) if isinstance(m, str) else m for m in messages],
        **fields,
    )
    if parent is not None:
        request.parent_sequence_number = parent
    return await api.chat.AppendMessages(request)


async def get_session(api, session: chat_pb2.Session) -> chat_pb2.Session:
    request = chat_pb2.GetSessionRequest(user_id=session.user_id, session_id=session.id)
    return (await api.chat.GetSession(request)).session


async def list_page(api, session: chat_pb2.Session, **fields: Any) -> chat_pb2.ListMessagesResponse:
    request = chat_pb2.ListMessagesRequest(user_id=session.user_id, session_id=session.id, **fields)
    return await api.chat.ListMessages(request)


async def list_all(api, session: chat_pb2.Session, **fields: Any) -> list[chat_pb2.Message]:
    """Every message ListMessages returns with these filters, following the page tokens."""
    found: list[chat_pb2.Message] = []
    token = ""
    for _ in range(10_000):
        reply = await list_page(api, session, page_token=token, **fields)
        found += reply.messages
        token = reply.next_page_token
        if not token:
            return found
    raise AssertionError("pagination does not end")


def numbers(messages) -> list[int]:
    return [m.sequence_number for m in messages]


async def violations(call, reason: str = "INVALID_ARGUMENT") -> set[str]:
    """Asserts INVALID_ARGUMENT with reason and returns the violated fields."""
    return set(field_violations(await expect_error(call, INVALID, reason)))
