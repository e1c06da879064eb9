"""Sample data so a newcomer can explore the API at once (`make run` loads it on first start).

Every record goes through the same domain functions as an RPC, with fixed request_ids, so seeding
twice changes nothing and the audit trail shows where the data came from.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from google.protobuf import field_mask_pb2

from qdata.v1 import chat_pb2, ledger_pb2, user_pb2
from qdata_server import callctx
from qdata_server.chat import messages as chat_messages
from qdata_server.chat import sessions as chat_sessions
from qdata_server.db.sql import fetch_row
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS
from qdata_server.ledger import operations as ledger
from qdata_server.usage import samples as usage_samples
from qdata_server.users import accounts, preferences

if TYPE_CHECKING:
    from qdata_server.deps import Deps

log = logging.getLogger("qdata.seed")

# Documented in README: every sample user logs in with this password.
SAMPLE_PASSWORD = "marketplace-demo"
SAMPLE_MODEL = "openai/gpt-4o-mini"
SAMPLE_USERS = (
    ("alice@example.com", "alice", "Alice Example"),
    ("bob@example.com", "bob", "Bob Example"),
    ("carol@example.com", "carol", "Carol Example"),
)


async def seed(deps: Deps, *, only_if_empty: bool = True) -> int:
    """Loads the sample users, their welcome credits and Alice's preferences; returns the user count."""
    if only_if_empty:
        row = await deps.transaction(lambda conn: fetch_row(conn, "count_users"), acting=ACTING_FOR_ALL_USERS)
        if row["n"]:
            return 0
    token = callctx.bind(callctx.CallContext(method="seed", actor="seed"))
    try:
        created = 0
        for email, username, name in SAMPLE_USERS:
            request = user_pb2.CreateUserRequest(
                request_id=f"seed-user-{username}",
                email=email,
                username=username,
                display_name=name,
                password=SAMPLE_PASSWORD,
            )
            response = await accounts.create_user(deps, request)
            created += 1
            # Every sample user starts with 25 USD of promotional credits.
            await ledger.deposit(
                deps,
                ledger_pb2.DepositRequest(
                    request_id=f"seed-credits-{username}",
                    user_id=response.user.id,
                    amount_micros=25_000_000,
                    source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
                    description="Welcome credits",
                ),
            )
            if username == "alice":
                await preferences.update_preferences(
                    deps,
                    user_pb2.UpdatePreferencesRequest(
                        request_id="seed-preferences-alice",
                        preferences=user_pb2.Preferences(
                            user_id=response.user.id,
                            default_model_id=SAMPLE_MODEL,
                            language="en",
                            theme=user_pb2.THEME_DARK,
                            extra={"chat.stream": "true"},
                        ),
                        update_mask=field_mask_pb2.FieldMask(paths=["default_model_id", "language", "theme", "extra"]),
                    ),
                )
                await seed_chats(deps, response.user.id)
        # Sample models with prices, a few calls of the sample users and their ratings.
        await usage_samples.seed(deps)
        log.info("seeded sample data", extra={"users": created})
        return created
    finally:
        callctx.unbind(token)


def _answer(input_tokens: int, output_tokens: int, content: str = "", **fields: Any) -> chat_pb2.MessageInput:
    """An answer of the sample model, with the tokens it used."""
    return chat_pb2.MessageInput(
        role=chat_pb2.MESSAGE_ROLE_ASSISTANT,
        model_id=SAMPLE_MODEL,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        content=content,
        **fields,
    )


def _ask(content: str) -> chat_pb2.MessageInput:
    return chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_USER, content=content)


async def _session(deps: Deps, request_id: str, user_id: str, title: str, tags: list[str], **fields: Any) -> str:
    """Creates a session of the sample model; returns its id."""
    response = await chat_sessions.create_session(
        deps,
        chat_pb2.CreateSessionRequest(
            request_id=request_id, user_id=user_id, model_id=SAMPLE_MODEL, title=title, tags=tags, **fields
        ),
    )
    return response.session.id


async def _append(
    deps: Deps, request_id: str, user_id: str, session_id: str, messages: list[chat_pb2.MessageInput], **fields: Any
) -> None:
    await chat_messages.append_messages(
        deps,
        chat_pb2.AppendMessagesRequest(
            request_id=request_id, user_id=user_id, session_id=session_id, messages=messages, **fields
        ),
    )


async def seed_chats(deps: Deps, user_id: str) -> None:
    """Two chat sessions for Alice: a conversation with a regenerated answer (two branches) and one
    with a tool call."""
    trip = await _session(
        deps,
        "seed-chat-alice-lisbon",
        user_id,
        "A weekend in Lisbon",
        ["travel"],
        pinned=True,
        metadata={"client": "web"},
    )
    await _append(
        deps,
        "seed-chat-alice-lisbon-1",
        user_id,
        trip,
        [
            chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_SYSTEM, content="You are a concise travel guide."),
            _ask("What should I see in Lisbon in two days?"),
            _answer(
                42,
                61,
                "Day 1: Alfama, the castle and a fado evening. Day 2: Belém (tower, monastery, "
                "pastéis de nata) and sunset at the Miradouro da Senhora do Monte.",
            ),
            _ask("Is tram 28 worth it?"),
            _answer(120, 38, "Yes, early in the morning before the queues; otherwise walk the same route."),
        ],
    )
    # "Regenerate" the last answer: a second branch from the question (message 4).
    await _append(
        deps,
        "seed-chat-alice-lisbon-2",
        user_id,
        trip,
        [_answer(120, 35, "It is charming but crowded; ride it from Martim Moniz at 8 am for a seat.")],
        parent_sequence_number=4,
    )
    code = await _session(deps, "seed-chat-alice-csv", user_id, "Reading a CSV file in Python", ["code", "python"])
    call = chat_pb2.ToolCall(id="call_1", name="run_python", arguments_json='{"code": "import csv"}')
    await _append(
        deps,
        "seed-chat-alice-csv-1",
        user_id,
        code,
        [
            _ask("How do I read a CSV file with a header row in Python?"),
            _answer(25, 12, tool_calls=[call]),
            chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_TOOL, tool_call_id="call_1", content="ok"),
            _answer(
                60,
                44,
                "Use csv.DictReader: `with open(path, newline='') as f: rows = list(csv.DictReader(f))` "
                "gives one dict per row, keyed by the header.",
            ),
        ],
    )
