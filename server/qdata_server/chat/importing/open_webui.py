"""Open WebUI's JSON export of a chat.

The export of one chat is an array holding one object: "id" (the chat's id), "title",
"created_at" and "updated_at" (seconds), and "chat" with "models", "history" {"messages":
message id -> message, "currentId"} and "messages" (the current branch again, not read). A
message has "id", "parentId" (null for a root), "childrenIds", "role" (user, assistant or
system), "content" (a string, or OpenAI-style parts: "text" parts are kept, any other part is
kept as text with a note), "timestamp" (seconds), "model" and optional "files" (each kept as a
noted part after the text).
"""

from __future__ import annotations

from typing import Any

from qdata_server.chat.importing.model import (
    ROLES,
    BadExport,
    Conversation,
    SourceMessage,
    check_source_id,
    epoch_seconds,
    key_path,
    optional_text,
    require_id,
    require_list,
    require_object,
    unsupported,
)

_ROLES = tuple(r for r in ROLES if r != "tool")


def parse(doc: Any, root: str) -> Conversation:
    """The chat at path root of the upload (root is "" or "[0]")."""
    prefix = root + "." if root else ""
    wrapper = require_object(doc, root or "data")
    source_id = check_source_id(wrapper.get("id"), prefix + "id")
    chat = require_object(wrapper.get("chat"), prefix + "chat")
    history = require_object(chat.get("history"), prefix + "chat.history")
    mpath = prefix + "chat.history.messages"
    messages = require_object(history.get("messages"), mpath)
    nodes = [_message(messages, key, raw, key_path(mpath, key)) for key, raw in messages.items()]
    current = history.get("currentId")
    if current is not None:
        current = require_id(current, prefix + "chat.history.currentId")
        if current not in messages:
            raise BadExport(prefix + "chat.history.currentId", "names no message of chat.history.messages")
    models = chat.get("models")
    model = models[0] if isinstance(models, list) and models and isinstance(models[0], str) else ""
    title = wrapper.get("title", chat.get("title"))
    return Conversation(
        source_id=source_id,
        title=optional_text(title, prefix + "title"),
        model_id=model,
        created_at=epoch_seconds(wrapper.get("created_at"), prefix + "created_at"),
        nodes=nodes,
        current=current,
        current_path=prefix + "chat.history.currentId",
        nodes_path=mpath,
    )


def _message(messages: dict[str, Any], key: str, raw: Any, path: str) -> SourceMessage:
    message = require_object(raw, path)
    if "id" in message and message["id"] != key:
        raise BadExport(path + ".id", "must equal the message's key in chat.history.messages")
    parent = message.get("parentId")
    if parent is not None:
        parent = require_id(parent, path + ".parentId")
        if parent not in messages:
            raise BadExport(path + ".parentId", "names no message of chat.history.messages")
        siblings = messages[parent].get("childrenIds") if isinstance(messages[parent], dict) else None
        if not isinstance(siblings, list) or key not in siblings:
            raise BadExport(path + ".parentId", "names a message whose childrenIds do not include this one")
    for index, child in enumerate(require_list(message.get("childrenIds", []), path + ".childrenIds")):
        child_path = f"{path}.childrenIds[{index}]"
        child = require_id(child, child_path)
        if not isinstance(messages.get(child), dict) or messages[child].get("parentId") != key:
            raise BadExport(child_path, "names no message whose parentId is this message")
    role = message.get("role")
    if role not in _ROLES:
        raise BadExport(path + ".role", "must be one of " + ", ".join(_ROLES))
    stamp = message.get("timestamp")
    # Seconds; a value too large for seconds is taken as milliseconds.
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and stamp > 100_000_000_000:
        stamp = stamp / 1000
    created = epoch_seconds(stamp, path + ".timestamp")
    content = _content(message, path)
    model = message.get("model")
    return SourceMessage(
        key=key,
        path=path,
        parent=parent,
        role=role,
        content=content,
        created_at=created,
        model_id=model if isinstance(model, str) and role == "assistant" else "",
        parent_field=".parentId",
    )


def _content(message: dict[str, Any], path: str) -> str:
    content = message.get("content", "")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for index, part in enumerate(content):
            part = require_object(part, f"{path}.content[{index}]")
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                texts.append(unsupported(str(kind or "part"), part))
    else:
        raise BadExport(path + ".content", "must be a string or an array of parts")
    for index, file in enumerate(require_list(message.get("files") or [], path + ".files")):
        texts.append(unsupported("file", require_object(file, f"{path}.files[{index}]")))
    return "\n".join(t for t in texts if t)
