"""The export parsers and the import plan, without a database: paths of refusals and the rules
of order, times and skipping that the API tests do not reach one by one."""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import pytest

from qdata_server.chat.importing import chatgpt, librechat, open_webui, run
from qdata_server.chat.importing.model import MAX_SOURCE_ID_LENGTH, BadExport

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def plan(parse, doc: Any, **kwargs: Any) -> run.Plan:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return run.read(data, parse, max_content_bytes=kwargs.get("max_content_bytes", 1 << 20), now=NOW)


def refused(parse, doc: Any) -> tuple[str, str]:
    with pytest.raises(BadExport) as caught:
        plan(parse, doc)
    return caught.value.path, caught.value.description


def node(key: str, parent: str | None, children: list[str], text: str | None, time: float | None = None) -> dict:
    message = None
    if text is not None:
        message = {
            "author": {"role": "user"},
            "create_time": time,
            "content": {"content_type": "text", "parts": [text]},
        }
    return {"id": key, "parent": parent, "children": children, "message": message}


def gpt(*nodes: dict, **fields: Any) -> dict:
    return {"conversation_id": "c1", "mapping": {n["id"]: n for n in nodes}, **fields}


def test_a_child_list_that_disagrees_with_the_parent_names_the_entry():
    doc = gpt(node("a", None, ["b"], "x"), node("b", None, [], "y"))
    assert refused(chatgpt.parse, doc)[0] == 'mapping["a"].children[0]'


def test_times_are_inherited_and_order_follows_them():
    # b has no time: it takes a's; c (written after b in the file) is older than b's sibling d.
    doc = gpt(
        node("a", None, ["b", "d"], "a", 100.0),
        node("b", "a", ["c"], "b", None),
        node("d", "a", [], "d", 300.0),
        node("c", "b", [], "c", 200.0),
    )
    result = plan(chatgpt.parse, doc)
    assert result.columns["contents"] == ["a", "b", "c", "d"]
    assert result.columns["parents"] == [0, 1, 2, 1]
    times = [t.timestamp() for t in result.columns["created_ats"]]  # type: ignore[attr-defined]
    assert times == [100.0, 100.0, 200.0, 300.0]
    # No current_node: the newest message.
    assert result.current_leaf == 4


def test_nul_characters_become_replacement_characters():
    result = plan(chatgpt.parse, gpt(node("a", None, [], "x\x00y")))
    assert result.columns["contents"] == ["x\ufffdy"]


def test_a_repeated_librechat_message_id_is_refused_where_it_repeats():
    message = {"messageId": "m", "parentMessageId": None, "isCreatedByUser": True, "text": "hi"}
    doc = {"conversationId": "c", "messages": [message, message]}
    assert refused(librechat.parse, doc)[0] == "messages[1]"


def test_open_webui_millisecond_timestamps_are_read_as_such():
    doc = [
        {
            "id": "c",
            "chat": {
                "history": {
                    "messages": {
                        "m": {"id": "m", "parentId": None, "role": "user", "content": "hi", "timestamp": 1.7e12}
                    },
                    "currentId": "m",
                }
            },
        }
    ]
    result = plan(open_webui.parse, doc)
    assert result.columns["created_ats"] == [datetime.datetime.fromtimestamp(1.7e9, datetime.UTC)]


def test_the_source_id_has_a_length_limit():
    doc = gpt(node("a", None, [], "x"))
    doc["conversation_id"] = "c" * (MAX_SOURCE_ID_LENGTH + 1)
    assert refused(chatgpt.parse, doc)[0] == "conversation_id"


def test_a_byte_order_mark_is_accepted_and_nan_is_not_json():
    data = json.dumps(gpt(node("a", None, [], "x"))).encode()
    assert plan(chatgpt.parse, b"\xef\xbb\xbf" + data).count == 1
    assert refused(chatgpt.parse, data.replace(b'"x"', b"NaN"))[0] == "data"


def test_the_digest_follows_the_content_not_the_key_order():
    doc = gpt(node("a", None, ["b"], "x", 1.0), node("b", "a", [], "y", 2.0))
    reordered = copy.deepcopy({"mapping": dict(reversed(list(doc["mapping"].items()))), "conversation_id": "c1"})
    assert plan(chatgpt.parse, doc).digest == plan(chatgpt.parse, reordered).digest
    doc["mapping"]["b"]["message"]["content"]["parts"] = ["z"]
    assert plan(chatgpt.parse, doc).digest != plan(chatgpt.parse, reordered).digest


def test_the_digest_of_an_export_without_times_does_not_follow_the_clock():
    doc = gpt(node("a", None, [], "x"))
    later = NOW + datetime.timedelta(hours=1)
    data = json.dumps(doc).encode()
    first = run.read(data, chatgpt.parse, max_content_bytes=1 << 20, now=NOW)
    again = run.read(data, chatgpt.parse, max_content_bytes=1 << 20, now=later)
    assert first.columns["created_ats"] == [NOW] and again.columns["created_ats"] == [later]
    assert first.digest == again.digest
