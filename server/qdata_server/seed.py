"""Sample data so a newcomer can explore the API at once (`make run` loads it on first start).

Every record goes through the same domain functions as an RPC, with fixed request_ids, so seeding
twice changes nothing and the audit trail shows where the data came from.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

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
                            default_model_id="openai/gpt-4o-mini",
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


async def seed_chats(deps: Deps, user_id: str) -> None:
    """Two chat sessions for Alice: a conversation with a regenerated answer (two branches) and one
    with a tool call."""
    user, assistant = chat_pb2.MESSAGE_ROLE_USER, chat_pb2.MESSAGE_ROLE_ASSISTANT
    model = "openai/gpt-4o-mini"
    trip = await chat_sessions.create_session(
        deps,
        chat_pb2.CreateSessionRequest(
            request_id="seed-chat-alice-lisbon",
            user_id=user_id,
            model_id=model,
            title="A weekend in Lisbon",
            tags=["travel"],
            pinned=True,
            metadata={"client": "web"},
        ),
    )
    await chat_messages.append_messages(
        deps,
        chat_pb2.AppendMessagesRequest(
            request_id="seed-chat-alice-lisbon-1",
            user_id=user_id,
            session_id=trip.session.id,
            messages=[
                chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_SYSTEM, content="You are a concise travel guide."),
                chat_pb2.MessageInput(role=user, content="What should I see in Lisbon in two days?"),
                chat_pb2.MessageInput(
                    role=assistant,
                    model_id=model,
                    input_tokens=42,
                    output_tokens=61,
                    content="Day 1: Alfama, the castle and a fado evening. Day 2: Belém (tower, monastery, "
                    "pastéis de nata) and sunset at the Miradouro da Senhora do Monte.",
                ),
                chat_pb2.MessageInput(role=user, content="Is tram 28 worth it?"),
                chat_pb2.MessageInput(
                    role=assistant,
                    model_id=model,
                    input_tokens=120,
                    output_tokens=38,
                    content="Yes, early in the morning before the queues; otherwise walk the same route.",
                ),
            ],
        ),
    )
    # "Regenerate" the last answer: a second branch from the question (message 4).
    await chat_messages.append_messages(
        deps,
        chat_pb2.AppendMessagesRequest(
            request_id="seed-chat-alice-lisbon-2",
            user_id=user_id,
            session_id=trip.session.id,
            parent_sequence_number=4,
            messages=[
                chat_pb2.MessageInput(
                    role=assistant,
                    model_id=model,
                    input_tokens=120,
                    output_tokens=35,
                    content="It is charming but crowded; ride it from Martim Moniz at 8 am for a seat.",
                )
            ],
        ),
    )
    code = await chat_sessions.create_session(
        deps,
        chat_pb2.CreateSessionRequest(
            request_id="seed-chat-alice-csv",
            user_id=user_id,
            model_id=model,
            title="Reading a CSV file in Python",
            tags=["code", "python"],
        ),
    )
    call = chat_pb2.ToolCall(id="call_1", name="run_python", arguments_json='{"code": "import csv"}')
    await chat_messages.append_messages(
        deps,
        chat_pb2.AppendMessagesRequest(
            request_id="seed-chat-alice-csv-1",
            user_id=user_id,
            session_id=code.session.id,
            messages=[
                chat_pb2.MessageInput(role=user, content="How do I read a CSV file with a header row in Python?"),
                chat_pb2.MessageInput(
                    role=assistant, model_id=model, input_tokens=25, output_tokens=12, tool_calls=[call]
                ),
                chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_TOOL, tool_call_id="call_1", content="ok"),
                chat_pb2.MessageInput(
                    role=assistant,
                    model_id=model,
                    input_tokens=60,
                    output_tokens=44,
                    content="Use csv.DictReader: `with open(path, newline='') as f: rows = list(csv.DictReader(f))` "
                    "gives one dict per row, keyed by the header.",
                ),
            ],
        ),
    )
