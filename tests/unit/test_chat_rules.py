"""Chat pieces that need no database: snippet parsing, message rules and the content setting."""

import pytest

from qdata.v1 import chat_pb2
from qdata_server.chat import rules
from qdata_server.chat.search import LESS_THAN, START_SEL, STOP_SEL, parse_headline
from qdata_server.config import ConfigError, Settings
from qdata_server.validation import Violations


def marked(text: str) -> str:
    return text.replace("[", START_SEL).replace("]", STOP_SEL)


def spans(snippet: str, highlights) -> list[str]:
    return [snippet[h.start : h.end] for h in highlights]


def test_headline_markers_become_code_point_offsets():
    snippet, highlights = parse_headline(marked("Ünïcode 😀 [trains]  run\n\n[daily] … the [train]"))
    assert snippet == "Ünïcode 😀 trains run daily … the train"
    assert spans(snippet, highlights) == ["trains", "daily", "train"]
    assert highlights[0].start == 10  # code points, not UTF-8 or UTF-16 units


def test_the_less_than_stand_in_turns_back_into_less_than():
    snippet, highlights = parse_headline(marked(f"use {LESS_THAN}b>[bold]{LESS_THAN}/b> &  markup"))
    assert snippet == "use <b>bold</b> & markup"
    assert spans(snippet, highlights) == ["bold"]


def test_long_headlines_are_cut_at_a_word_and_keep_whole_highlights():
    text = " ".join(["word"] * 40) + " [match] " + " ".join(["tail"] * 80) + " [late]"
    snippet, highlights = parse_headline(marked(text), limit=300)
    assert len(snippet) <= 301 and snippet.endswith("…") and not snippet.endswith(" …")
    assert spans(snippet, highlights) == ["match"]
    snippet, highlights = parse_headline(marked("x" * 1000))
    assert len(snippet) == 300 and highlights == []


def test_empty_and_unbalanced_markers_are_harmless():
    assert parse_headline("") == ("", [])
    snippet, highlights = parse_headline(marked("a ] b [ c"))
    assert (snippet, highlights) == ("a b c", [])  # a stop without a start, a start without a stop


def test_tags_fold_ascii_only():
    v = Violations()
    assert rules.normalize_tags(v, "tags", ["Work", "work", "a:b"]) == ["a:b", "work"]
    assert not v
    rules.normalize_tags(v, "tags", ["\u212a"])  # KELVIN SIGN lower-cases to "k" but is not a-z
    assert [x.field for x in v.items] == ["tags[0]"]


def test_content_size_counts_tool_call_arguments():
    message = chat_pb2.MessageInput(
        role=chat_pb2.MESSAGE_ROLE_ASSISTANT,
        content="é",
        tool_calls=[chat_pb2.ToolCall(id="a", name="f", arguments_json="{}")],
    )
    assert rules.content_bytes(message) == 4


def test_content_setting_must_fit_the_grpc_maximum():
    settings = Settings.from_env({"QDATA_CHAT_MAX_CONTENT_BYTES": "2097152"})
    assert settings.chat_max_content_bytes == 2 * 1024 * 1024
    assert Settings.from_env({}).chat_max_content_bytes == 1024 * 1024
    with pytest.raises(ConfigError, match="QDATA_MAX_MESSAGE_BYTES must be at least"):
        Settings.from_env({"QDATA_CHAT_MAX_CONTENT_BYTES": str(4 * 1024 * 1024)})
    with pytest.raises(ConfigError, match="QDATA_CHAT_MAX_CONTENT_BYTES must be between"):
        Settings.from_env({"QDATA_CHAT_MAX_CONTENT_BYTES": "10"})
