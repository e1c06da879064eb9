"""LibreChat's JSON export of one conversation.

The export (client/src/hooks/Conversations/useExportConversation.ts) is an object with
"conversationId", "endpoint", "title", "exportAt", "branches", "recursive" and either "messages"
(a flat array) or, for a recursive export, "messagesTree" (root messages, each with its
"children"). A message has "messageId", "parentMessageId" (the nil UUID, or null, for a root),
"sender", "isCreatedByUser", "text", optional "content" parts ({"type": "text", "text": str or
{"value": str}}; other types are kept as text with a note), "model" and "createdAt" (ISO 8601).
LibreChat has no current-node pointer: the newest message (by createdAt, the last one in the file
on a tie) is the current leaf.
"""

from __future__ import annotations

from typing import Any

from qdata_server.chat.importing.model import (
    BadExport,
    Conversation,
    SourceMessage,
    check_source_id,
    iso_time,
    optional_text,
    require_id,
    require_list,
    require_object,
    unsupported,
)

NO_PARENT = "00000000-0000-0000-0000-000000000000"


def parse(doc: Any, root: str) -> Conversation:
    """The conversation at path root of the upload (root is "" or "[0]")."""
    prefix = root + "." if root else ""
    conv = require_object(doc, root or "data")
    source_id = check_source_id(conv.get("conversationId"), prefix + "conversationId")
    nodes: list[SourceMessage] = []
    if "messagesTree" in conv:
        # Depth-first with an explicit stack, children in file order.
        stack: list[tuple[Any, str, str | None]] = [
            (m, f"{prefix}messagesTree[{i}]", None)
            for i, m in reversed(list(enumerate(require_list(conv["messagesTree"], prefix + "messagesTree"))))
        ]
        while stack:
            raw, path, parent = stack.pop()
            node = _message(raw, path, parent_from_tree=parent, nested=True)
            nodes.append(node)
            children = require_list(raw.get("children", []), path + ".children")
            stack.extend((c, f"{path}.children[{i}]", node.key) for i, c in reversed(list(enumerate(children))))
    else:
        for index, raw in enumerate(require_list(conv.get("messages"), prefix + "messages")):
            nodes.append(_message(raw, f"{prefix}messages[{index}]", parent_from_tree=None, nested=False))
    return Conversation(
        source_id=source_id,
        title=optional_text(conv.get("title"), prefix + "title"),
        model_id="",
        created_at=None,
        nodes=nodes,
        current=None,
        nodes_path=prefix + ("messagesTree" if "messagesTree" in conv else "messages"),
    )


def _message(raw: Any, path: str, *, parent_from_tree: str | None, nested: bool) -> SourceMessage:
    message = require_object(raw, path)
    key = require_id(message.get("messageId"), path + ".messageId")
    parent = message.get("parentMessageId")
    if parent is not None:
        parent = require_id(parent, path + ".parentMessageId")
    if parent == NO_PARENT:
        parent = None
    if nested and parent != parent_from_tree:
        raise BadExport(path + ".parentMessageId", "must name the message this one is a child of")
    by_user = message.get("isCreatedByUser")
    if not isinstance(by_user, bool):
        raise BadExport(path + ".isCreatedByUser", "must be true or false")
    created = iso_time(message.get("createdAt"), path + ".createdAt")
    content = _content(message, path)
    model = message.get("model")
    return SourceMessage(
        key=key,
        path=path,
        parent=parent,
        role="user" if by_user else "assistant",
        content=content,
        created_at=created,
        model_id=model if isinstance(model, str) and not by_user else "",
        parent_field=".parentMessageId",
    )


def _content(message: dict[str, Any], path: str) -> str:
    parts = message.get("content")
    if not parts:
        return optional_text(message.get("text"), path + ".text")
    texts = []
    for index, part in enumerate(require_list(parts, path + ".content")):
        part = require_object(part, f"{path}.content[{index}]")
        kind = part.get("type")
        if not isinstance(kind, str) or not kind:
            raise BadExport(f"{path}.content[{index}].type", "must be a non-empty string")
        text = part.get("text")
        if kind == "text" and isinstance(text, dict):
            text = text.get("value")
        if kind == "text" and isinstance(text, str):
            texts.append(text)
        else:
            texts.append(unsupported(kind, {k: v for k, v in part.items() if k != "type"}))
    return "\n".join(t for t in texts if t)
