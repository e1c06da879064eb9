"""Limits and validation of chat fields: titles, model ids, tags, metadata and message inputs.

Every check adds to a Violations with the field's path in the request (e.g. "messages[3].content"),
so one INVALID_ARGUMENT lists everything wrong with a request. The limits are the contract's
(protos/qdata/v1/chat.proto); only the content size is configurable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence

from qdata.v1 import chat_pb2
from qdata_server.validation import MODEL_ID_MAX_LENGTH, Violations, has_control_characters

MAX_TITLE_LENGTH = 200
MAX_MODEL_ID_LENGTH = MODEL_ID_MAX_LENGTH
MAX_METADATA_ENTRIES = 32
MAX_METADATA_VALUE_LENGTH = 1024
MAX_TAGS = 16
MAX_MESSAGES_PER_APPEND = 100
MAX_TOOL_CALLS = 64
MAX_TOOL_FIELD_LENGTH = 128
MAX_TOKENS = 1_000_000_000
MAX_QUERY_LENGTH = 500
# Room kept in a gRPC message beside the appended messages themselves, so the response (which
# repeats them with their numbers and adds the session) still fits the maximum message size.
RESPONSE_HEADROOM_BYTES = 256 * 1024

METADATA_KEY_RULE = "keys are 1 to 64 characters of a-z, A-Z, 0-9, '_', '-' and '.'"
TAG_RULE = "tags are 1 to 32 characters of a-z, 0-9, '_', '-' and ':'"
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)
_TAG = re.compile(r"[A-Za-z0-9_:-]{1,32}", re.ASCII)

ROLE_TO_DB = {
    chat_pb2.MESSAGE_ROLE_SYSTEM: "system",
    chat_pb2.MESSAGE_ROLE_USER: "user",
    chat_pb2.MESSAGE_ROLE_ASSISTANT: "assistant",
    chat_pb2.MESSAGE_ROLE_TOOL: "tool",
}
ROLE_FROM_DB = {v: k for k, v in ROLE_TO_DB.items()}


def check_title(v: Violations, field: str, title: str) -> str:
    return v.text(field, title, MAX_TITLE_LENGTH)


def check_model_id(v: Violations, field: str, model_id: str) -> str:
    """Free text (the model a chat used need not be in the catalog), at most MODEL_ID_MAX_LENGTH."""
    return v.text(field, model_id, MAX_MODEL_ID_LENGTH)


def normalize_tags(v: Violations, field: str, tags: Iterable[str]) -> list[str]:
    """Lower-cased, deduplicated, sorted; at most 16 after deduplication."""
    normalized: set[str] = set()
    for index, tag in enumerate(tags):
        if not _TAG.fullmatch(tag):
            v.add(f"{field}[{index}]", TAG_RULE)
        else:
            normalized.add(tag.lower())
    if len(normalized) > MAX_TAGS:
        v.add(field, f"must hold at most {MAX_TAGS} distinct tags (got {len(normalized)})")
    return sorted(normalized)


def metadata_key_ok(key: str) -> bool:
    return bool(_METADATA_KEY.fullmatch(key))


def check_metadata(v: Violations, field: str, metadata: Mapping[str, str], *, count: bool = True) -> dict[str, str]:
    """Checks each entry (and, with count, the number of entries); returns a plain dict."""
    for key, value in metadata.items():
        entry = f"{field}[{key[:64]!r}]"
        if not metadata_key_ok(key):
            v.add(entry, METADATA_KEY_RULE)
        if len(value) > MAX_METADATA_VALUE_LENGTH:
            v.add(entry, f"values are at most {MAX_METADATA_VALUE_LENGTH} characters (got {len(value)})")
        elif "\x00" in value:
            v.add(entry, "values must not contain NUL characters")
    if count and len(metadata) > MAX_METADATA_ENTRIES:
        v.add(field, f"may hold at most {MAX_METADATA_ENTRIES} entries (got {len(metadata)})")
    return dict(metadata)


def check_sequence_number(v: Violations, field: str, value: int) -> int:
    if value <= 0:
        v.add(field, "must be a sequence number > 0")
    return value


def check_bound(v: Violations, field: str, value: int) -> int:
    if value < 0:
        v.add(field, "must not be negative (0 means no bound)")
    return value


def _valid_json(text: str) -> bool:
    def reject(constant: str) -> None:
        raise ValueError(constant)

    try:
        json.loads(text, parse_constant=reject)
    except (ValueError, RecursionError):
        return False
    return True


def content_bytes(message: chat_pb2.MessageInput) -> int:
    """What counts toward the content limit: content and tool-call arguments, in UTF-8 bytes."""
    return len(message.content.encode("utf-8")) + sum(len(c.arguments_json.encode("utf-8")) for c in message.tool_calls)


def check_messages(
    v: Violations, messages: Sequence[chat_pb2.MessageInput], *, max_content_bytes: int, max_total_bytes: int
) -> bool:
    """Adds every problem of an append's messages to v; returns True if one is about size.

    An append that breaks a size limit (a message's content, or all messages together, which must
    leave room in the response) fails with reason CONTENT_TOO_LARGE, any other with INVALID_ARGUMENT.
    """
    too_large = False
    if not messages:
        v.add("messages", "must hold at least one message")
    elif len(messages) > MAX_MESSAGES_PER_APPEND:
        v.add("messages", f"must hold at most {MAX_MESSAGES_PER_APPEND} messages (got {len(messages)})")
    total = 0
    for index, message in enumerate(messages[:MAX_MESSAGES_PER_APPEND]):
        total += message.ByteSize()
        too_large |= _check_message(v, f"messages[{index}]", message, max_content_bytes)
    if total > max_total_bytes and not too_large:
        too_large = True
        v.add("messages", f"must together take at most {max_total_bytes} bytes encoded (got {total})")
    return too_large


def _check_message(v: Violations, field: str, message: chat_pb2.MessageInput, max_content_bytes: int) -> bool:
    """Adds the message's violations; returns True if its content is over the limit."""
    role = message.role
    if role not in ROLE_TO_DB:
        v.add(f"{field}.role", "must be MESSAGE_ROLE_SYSTEM, _USER, _ASSISTANT or _TOOL")
    size = content_bytes(message)
    too_large = size > max_content_bytes
    if too_large:
        v.add(
            f"{field}.content",
            f"content and tool-call arguments must take at most {max_content_bytes} bytes of UTF-8 (got {size})",
        )
    if "\x00" in message.content:
        v.add(f"{field}.content", "must not contain NUL characters")
    if not message.content and not (role == chat_pb2.MESSAGE_ROLE_ASSISTANT and message.tool_calls):
        v.add(f"{field}.content", "is required (only an assistant message with tool calls may be empty)")
    check_model_id(v, f"{field}.model_id", message.model_id)
    for name in ("input_tokens", "output_tokens"):
        value = getattr(message, name)
        if not 0 <= value <= MAX_TOKENS:
            v.add(f"{field}.{name}", f"must be between 0 and {MAX_TOKENS}")
    if message.tool_calls and role != chat_pb2.MESSAGE_ROLE_ASSISTANT:
        v.add(f"{field}.tool_calls", "only assistant messages carry tool calls")
    if len(message.tool_calls) > MAX_TOOL_CALLS:
        v.add(f"{field}.tool_calls", f"must hold at most {MAX_TOOL_CALLS} tool calls")
    seen: set[str] = set()
    for index, call in enumerate(message.tool_calls[:MAX_TOOL_CALLS]):
        path = f"{field}.tool_calls[{index}]"
        for name in ("id", "name"):
            value = getattr(call, name)
            if not value:
                v.add(f"{path}.{name}", "is required")
            elif len(value) > MAX_TOOL_FIELD_LENGTH or has_control_characters(value):
                v.add(f"{path}.{name}", f"must be 1 to {MAX_TOOL_FIELD_LENGTH} characters without control characters")
        if call.id in seen:
            v.add(f"{path}.id", "repeats the id of an earlier tool call of the message")
        seen.add(call.id)
        # Not parsed when the message is over the limit anyway.
        if call.arguments_json and not too_large and not _valid_json(call.arguments_json):
            v.add(f"{path}.arguments_json", "must be empty or valid JSON")
    if role == chat_pb2.MESSAGE_ROLE_TOOL:
        if not message.tool_call_id:
            v.add(f"{field}.tool_call_id", "is required for a tool message")
    elif message.tool_call_id:
        v.add(f"{field}.tool_call_id", "must be empty except for a tool message")
    if len(message.tool_call_id) > MAX_TOOL_FIELD_LENGTH or has_control_characters(message.tool_call_id):
        v.add(f"{field}.tool_call_id", f"must be at most {MAX_TOOL_FIELD_LENGTH} characters without control characters")
    return too_large


def tool_calls_json(message: chat_pb2.MessageInput) -> str:
    """The tool calls as the JSON array stored in chat_messages.tool_calls."""
    calls: list[dict[str, object]] = []
    for c in message.tool_calls:
        call: dict[str, object] = {"id": c.id, "name": c.name, "arguments_json": c.arguments_json}
        if c.private:
            # Only when set, so the calls stored before the flag existed read the same.
            call["private"] = True
        calls.append(call)
    return json.dumps(calls, ensure_ascii=False)
