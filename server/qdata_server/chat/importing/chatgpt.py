"""ChatGPT's data export: one conversation of conversations.json.

A conversation is an object with its id ("conversation_id", or "id"), "title", "create_time"
(float seconds), "default_model_slug", "current_node" and "mapping": node id -> {"id", "parent"
(a node id or null), "children" (node ids), "message" (null for the empty root)}. A message has
"author" {"role": system|user|assistant|tool, "name"}, "create_time" (float seconds or null),
"content" {"content_type", ...}, and "metadata" ("model_slug", "is_visually_hidden_from_
conversation"). Content types kept as text: "text" and "multimodal_text" (string parts),
"code" and "execution_output" ("text"); any other type, and any part that is not a string, is
kept as text with a note (model.unsupported).
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

_TEXT_TYPES = {"text", "multimodal_text"}
_TEXT_FIELD_TYPES = {"code", "execution_output"}


def parse(doc: Any, root: str) -> Conversation:
    """The conversation at path root of the upload (root is "" or "[0]")."""
    prefix = root + "." if root else ""
    conv = require_object(doc, root or "data")
    source_id = conv.get("conversation_id") or conv.get("id")
    source_id = check_source_id(source_id, prefix + ("conversation_id" if "conversation_id" in conv else "id"))
    mapping = require_object(conv.get("mapping"), prefix + "mapping")
    nodes: list[SourceMessage] = []
    for key, node in mapping.items():
        path = key_path(prefix + "mapping", key)
        nodes.append(_node(mapping, key, node, path))
    current = conv.get("current_node")
    if current is not None:
        current = require_id(current, prefix + "current_node")
        if current not in mapping:
            raise BadExport(prefix + "current_node", "names no node of mapping")
    return Conversation(
        source_id=source_id,
        title=optional_text(conv.get("title"), prefix + "title"),
        model_id=optional_text(conv.get("default_model_slug"), prefix + "default_model_slug"),
        created_at=epoch_seconds(conv.get("create_time"), prefix + "create_time"),
        nodes=nodes,
        current=current,
        current_path=prefix + "current_node",
        nodes_path=prefix + "mapping",
    )


def _node(mapping: dict[str, Any], key: str, node: Any, path: str) -> SourceMessage:
    node = require_object(node, path)
    if "id" in node and node["id"] != key:
        raise BadExport(path + ".id", "must equal the node's key in mapping")
    parent = node.get("parent")
    if parent is not None:
        parent = require_id(parent, path + ".parent")
        if parent not in mapping:
            raise BadExport(path + ".parent", "names no node of mapping")
        siblings = mapping[parent].get("children") if isinstance(mapping[parent], dict) else None
        if not isinstance(siblings, list) or key not in siblings:
            raise BadExport(path + ".parent", "names a node whose children do not include this node")
    for index, child in enumerate(require_list(node.get("children", []), path + ".children")):
        child_path = f"{path}.children[{index}]"
        child = require_id(child, child_path)
        if child not in mapping or not isinstance(mapping[child], dict) or mapping[child].get("parent") != key:
            raise BadExport(child_path, "names no node of mapping whose parent is this node")
    message = node.get("message")
    if message is None:
        return SourceMessage(key=key, path=path, parent=parent, role=None, content="", created_at=None)
    mpath = path + ".message"
    message = require_object(message, mpath)
    author = require_object(message.get("author"), mpath + ".author")
    role = author.get("role")
    if role not in ROLES:
        raise BadExport(mpath + ".author.role", "must be one of " + ", ".join(ROLES))
    created = epoch_seconds(message.get("create_time"), mpath + ".create_time")
    metadata = message.get("metadata") or {}
    metadata = require_object(metadata, mpath + ".metadata")
    content = _content(require_object(message.get("content"), mpath + ".content"), mpath + ".content")
    if metadata.get("is_visually_hidden_from_conversation") is True:
        role, content = None, ""
    model = metadata.get("model_slug")
    tool_name = author.get("name") if isinstance(author.get("name"), str) else ""
    return SourceMessage(
        key=key,
        path=path,
        parent=parent,
        role=role,
        content=content,
        created_at=created,
        model_id=model if isinstance(model, str) else "",
        tool_call_id=(tool_name or "tool") if role == "tool" else "",
    )


def _content(content: dict[str, Any], path: str) -> str:
    kind = content.get("content_type")
    if not isinstance(kind, str) or not kind:
        raise BadExport(path + ".content_type", "must be a non-empty string")
    if kind in _TEXT_TYPES:
        parts = require_list(content.get("parts", []), path + ".parts")
        texts = []
        for part in parts:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("content_type"), str):
                texts.append(unsupported(part["content_type"], part))
            else:
                texts.append(unsupported("part", part))
        return "\n".join(t for t in texts if t)
    if kind in _TEXT_FIELD_TYPES and isinstance(content.get("text"), str):
        return str(content["text"])
    return unsupported(kind, {k: v for k, v in content.items() if k != "content_type"})
