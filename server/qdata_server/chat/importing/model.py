"""The normalized conversation the format parsers produce, its limits, and how they fail."""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

# A branch deeper than this is refused (the depth walks of chat/tree.py stay short).
MAX_DEPTH = 10_000
# Source nodes (messages, and nodes without one) in one import.
MAX_NODES = 20_000
# Room left in a gRPC message beside data (request_id, user_id, format and framing).
DATA_HEADROOM_BYTES = 64 * 1024
# The longest source conversation id kept (the chat_imports_source_id_length CHECK).
MAX_SOURCE_ID_LENGTH = 256

ROLES = ("system", "user", "assistant", "tool")


class BadExport(Exception):
    """The export breaks its format at path (a JSON path into the uploaded document)."""

    def __init__(self, path: str, description: str, *, too_large: bool = False) -> None:
        super().__init__(f"{path}: {description}")
        self.path = path
        self.description = description
        self.too_large = too_large


@dataclasses.dataclass
class SourceMessage:
    """One node of the source tree; role None means a node without a message (skipped)."""

    key: str
    path: str
    parent: str | None
    role: str | None
    content: str
    created_at: datetime.datetime | None
    model_id: str = ""
    tool_call_id: str = ""
    # Where the node names its parent, relative to path (".parent", ".parentMessageId", ...).
    parent_field: str = ".parent"


@dataclasses.dataclass
class Conversation:
    """One source conversation, its nodes in document order."""

    source_id: str
    title: str
    model_id: str
    created_at: datetime.datetime | None
    nodes: list[SourceMessage]
    # Key of the source's current node; None when the format has none (the newest message is).
    current: str | None
    # Path of the current node's reference, for errors.
    current_path: str = ""
    # Path of the container of the nodes, for the count limit.
    nodes_path: str = ""


def key_path(prefix: str, key: str) -> str:
    """The path of an object member: prefix["key"] (the key JSON-quoted)."""
    return f"{prefix}[{json.dumps(key, ensure_ascii=False)}]"


def unsupported(kind: str, part: Any) -> str:
    """Content the mapping does not know, kept as text: the note, then the part as JSON."""
    return f"[unsupported content part {json.dumps(kind, ensure_ascii=False)}] " + json.dumps(
        part, ensure_ascii=False, sort_keys=True, separators=(",", ":")
    )


def require_object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadExport(path, "must be a JSON object")
    return value


def require_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadExport(path, "must be a JSON array")
    return value


def require_id(value: Any, path: str) -> str:
    """A non-empty string identifier."""
    if not isinstance(value, str) or not value:
        raise BadExport(path, "must be a non-empty string")
    return value


def check_source_id(value: Any, path: str) -> str:
    """The source's conversation id: a non-empty string of at most MAX_SOURCE_ID_LENGTH characters."""
    found = require_id(value, path)
    if len(found) > MAX_SOURCE_ID_LENGTH:
        raise BadExport(path, f"must be at most {MAX_SOURCE_ID_LENGTH} characters")
    return found


def optional_text(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadExport(path, "must be a string")
    return value


def epoch_seconds(value: Any, path: str) -> datetime.datetime | None:
    """A time given as (possibly fractional) seconds since 1970; null for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadExport(path, "must be a number of seconds since 1970 or null")
    if not 0 <= value < 253_402_300_800:  # 9999-12-31
        raise BadExport(path, "must be a time between 1970 and 9999")
    return datetime.datetime.fromtimestamp(value, datetime.UTC)


def iso_time(value: Any, path: str) -> datetime.datetime | None:
    """A time given as ISO 8601 text (a trailing Z allowed; no offset means UTC); null for none."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadExport(path, "must be an ISO 8601 time or null")
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise BadExport(path, "must be an ISO 8601 time or null") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)
