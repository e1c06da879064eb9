"""Database rows to qdata.v1 chat messages."""

from __future__ import annotations

from typing import Any

from qdata.v1 import chat_pb2
from qdata_server.chat.rules import ROLE_FROM_DB

# timestamp is re-exported: chat/search.py calls convert.timestamp.
from qdata_server.convert import same_named
from qdata_server.convert import timestamp as timestamp


def session(row: dict[str, Any]) -> chat_pb2.Session:
    """A Session from a chat_sessions row."""
    return chat_pb2.Session(
        id=str(row["session_id"]),
        user_id=str(row["user_id"]),
        current_leaf_sequence_number=row["current_leaf"],
        **same_named(
            row,
            "model_id title metadata tags pinned archived message_count last_sequence_number"
            " total_input_tokens total_output_tokens",
        ),
        last_activity_time=timestamp(row["last_activity_at"]),
        create_time=timestamp(row["created_at"]),
        update_time=timestamp(row["updated_at"]),
    )


def message(row: dict[str, Any]) -> chat_pb2.Message:
    """A Message from a live chat_messages row."""
    return chat_pb2.Message(
        session_id=str(row["session_id"]),
        role=ROLE_FROM_DB[row["role"]],
        **same_named(
            row, "sequence_number parent_sequence_number content model_id input_tokens output_tokens tool_call_id"
        ),
        tool_calls=[
            chat_pb2.ToolCall(
                id=c["id"], name=c["name"], arguments_json=c["arguments_json"], private=c.get("private", False)
            )
            for c in row["tool_calls"]
        ],
        create_time=timestamp(row["created_at"]),
    )


def size_bounded(rows: list[dict[str, Any]], limit: int, budget: int) -> tuple[list[chat_pb2.Message], bool]:
    """Up to limit messages from rows whose encoded size stays within budget bytes (at least one).

    Returns the messages and whether rows held more than were taken (so another page follows).
    """
    taken: list[chat_pb2.Message] = []
    used = 0
    for row in rows[:limit]:
        converted = message(row)
        # Each repeated element costs its size plus a tag and a length prefix (<= 6 bytes).
        cost = converted.ByteSize() + 6
        if taken and used + cost > budget:
            return taken, True
        taken.append(converted)
        used += cost
    return taken, len(rows) > limit
