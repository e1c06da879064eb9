"""ImportSession: ChatGPT, LibreChat and Open WebUI exports become sessions with the same tree.

Each format's fixture (tests/fixtures/chat_exports/) is a small conversation shaped like the
product's published export, with branches (a regenerated answer, an edited prompt), a tool or
unknown content part and timestamps; ExportSession must show the same tree (parents, roles,
times, current leaf). A malformed fixture per format is refused with the JSON path of its first
bad node and leaves nothing. Re-uploads are idempotent by request_id and by the source's id.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import pathlib
from typing import Any

import pytest

from qdata.v1 import chat_pb2, user_pb2
from qdata_server.chat.importing.model import MAX_DEPTH, MAX_NODES
from tests.support.calls import create_user, expect_error, field_violations, rid
from tests.support.chat import ASSISTANT, EXISTS, INVALID, NOT_FOUND, SYSTEM, TOOL, USER, list_all
from tests.support.database import table_rows

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "chat_exports"
CHATGPT = chat_pb2.IMPORT_FORMAT_CHATGPT
LIBRECHAT = chat_pb2.IMPORT_FORMAT_LIBRECHAT
OPEN_WEBUI = chat_pb2.IMPORT_FORMAT_OPEN_WEBUI
TABLES = ("chat_sessions", "chat_messages", "chat_imports", "audit_events", "idempotency_keys")


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def utc(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)


# Per fixture: the session's title, creation time and current leaf, the nodes left out, then each
# message in sequence order: (parent, role, time, start of the content, model_id, tool_call_id).
# Written out by hand from the fixture files.
EXPECTED: dict[str, dict[str, Any]] = {
    "chatgpt": {
        "format": CHATGPT,
        "title": "Boiling water at altitude",
        "source_id": "6e7c0f52-1d2b-4c3a-9f1e-2b7d8c9a0b11",
        "model_id": "gpt-4o",
        "create_time": utc("2024-06-10T06:13:09.500"),
        # The empty root and the hidden system message.
        "skipped": 2,
        "leaf": 7,
        "messages": [
            (0, USER, "2024-06-10T06:13:20.125", "At what temperature does water boil", "", ""),
            (1, ASSISTANT, "2024-06-10T06:13:25.500", "About 90 °C", "gpt-4o", ""),
            # The regenerated answer: a second child of message 1.
            (1, ASSISTANT, "2024-06-10T06:14:20", "Roughly 89.9 °C (regenerated answer).", "gpt-4o-mini", ""),
            (2, USER, "2024-06-10T06:15:00", "Plot the boiling point", "", ""),
            (4, ASSISTANT, "2024-06-10T06:15:01", "import matplotlib.pyplot as plt\n", "gpt-4o", ""),
            # No create_time in the export: its parent's time.
            (5, TOOL, "2024-06-10T06:15:01", "<<ImageDisplayed>>", "", "python"),
            (6, ASSISTANT, "2024-06-10T06:15:10", '[unsupported content part "image_asset_pointer"] {', "gpt-4o", ""),
            (3, USER, "2024-06-10T06:16:40", "Cite a source for that.", "", ""),
            (8, ASSISTANT, "2024-06-10T06:16:41", '[unsupported content part "tether_quote"] {', "gpt-4o-mini", ""),
        ],
    },
    "librechat": {
        "format": LIBRECHAT,
        "title": "PostgreSQL haiku",
        "source_id": "3f9a2c1d-5b6e-4f70-8a9b-0c1d2e3f4a5b",
        "model_id": "",
        "create_time": utc("2024-06-10T08:00:00"),
        "skipped": 0,
        # No current node in LibreChat's export: the newest message.
        "leaf": 6,
        "messages": [
            (0, USER, "2024-06-10T08:00:00", "Write a haiku about PostgreSQL.", "", ""),
            (1, ASSISTANT, "2024-06-10T08:00:04.250", "Rows in quiet rows,\n", "gpt-4o", ""),
            (2, USER, "2024-06-10T08:01:10", "Now search the web", "", ""),
            (
                3,
                ASSISTANT,
                "2024-06-10T08:01:15.500",
                '[unsupported content part "tool_call"] {"tool_call":',
                "gpt-4o",
                "",
            ),
            # The edited prompt: a second child of message 2.
            (2, USER, "2024-06-10T08:03:00", "Make it about SQLite instead.", "", ""),
            (5, ASSISTANT, "2024-06-10T08:03:03", "One file holds all,\n", "gpt-4o-mini", ""),
        ],
    },
    "open_webui": {
        "format": OPEN_WEBUI,
        "title": "Grey cat names",
        "source_id": "b6f4c2a0-1e3d-4f5a-9b8c-7d6e5f4a3b2c",
        "model_id": "llama3.1:8b",
        "create_time": utc("2024-06-11T09:59:55"),
        "skipped": 0,
        # history.currentId: the regenerated answer, not the newest branch's end.
        "leaf": 5,
        "messages": [
            (0, USER, "2024-06-11T10:00:00", "Suggest a name for a grey cat.", "", ""),
            (1, ASSISTANT, "2024-06-11T10:00:03", "How about Ash?", "llama3.1:8b", ""),
            (
                2,
                USER,
                "2024-06-11T10:00:20",
                'Does this one look like an Ash?\n[unsupported content part "file"] {',
                "",
                "",
            ),
            (
                3,
                ASSISTANT,
                "2024-06-11T10:00:25",
                'Yes: the fur is ash grey.\n[unsupported content part "image_url"]',
                "llama3.1:8b",
                "",
            ),
            (1, ASSISTANT, "2024-06-11T10:00:40", "Maybe Smokey, or Pebble.", "qwen2:7b", ""),
        ],
    },
}
# The recursive LibreChat export (messagesTree) of the same conversation gives the same session.
EXPECTED["librechat_recursive"] = EXPECTED["librechat"]

MALFORMED = {
    "chatgpt_malformed": (CHATGPT, '[0].mapping["orphan-9"].parent'),
    "librechat_malformed": (LIBRECHAT, "messages[3].parentMessageId"),
    "open_webui_malformed": (OPEN_WEBUI, '[0].chat.history.messages["3c2d1e0f-aaaa-4bbb-8ccc-000000000004"].role'),
}


def request(user_id: str, format: int, data: bytes, request_id: str | None = None) -> chat_pb2.ImportSessionRequest:
    return chat_pb2.ImportSessionRequest(request_id=request_id or rid(), user_id=user_id, format=format, data=data)


async def export(api, session: chat_pb2.Session) -> tuple[chat_pb2.Session, list[chat_pb2.Message]]:
    stream = api.chat.ExportSession(chat_pb2.ExportSessionRequest(user_id=session.user_id, session_id=session.id))
    first, messages = None, []
    async for chunk in stream:
        first = first or chunk.session
        messages += chunk.messages
    assert first is not None
    return first, messages


def branch_of(messages: list[chat_pb2.Message], leaf: int) -> list[int]:
    parent = {m.sequence_number: m.parent_sequence_number for m in messages}
    path = []
    while leaf:
        path.append(leaf)
        leaf = parent[leaf]
    return path[::-1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_each_format_round_trips_its_branches(api, name):
    expected = EXPECTED[name]
    user = await create_user(api)
    reply = await api.chat.ImportSession(request(user.id, expected["format"], fixture(name)))
    assert not reply.already_imported
    assert reply.imported_message_count == len(expected["messages"])
    assert reply.skipped_node_count == expected["skipped"]

    session, messages = await export(api, reply.session)
    assert session == reply.session
    assert session.title == expected["title"]
    assert session.model_id == expected["model_id"]
    assert session.create_time.ToDatetime(datetime.UTC) == expected["create_time"]
    assert session.current_leaf_sequence_number == expected["leaf"]
    assert session.message_count == session.last_sequence_number == len(expected["messages"])
    assert dict(session.metadata) == {
        "import.format": chat_pb2.ImportFormat.Name(expected["format"]).removeprefix("IMPORT_FORMAT_").lower(),
        "import.source_id": expected["source_id"],
    }
    # The newest message's time.
    newest = max(utc(m[2]) for m in expected["messages"])
    assert session.last_activity_time.ToDatetime(datetime.UTC) == newest

    got = [
        (
            m.parent_sequence_number,
            m.role,
            m.create_time.ToDatetime(datetime.UTC),
            m.content,
            m.model_id,
            m.tool_call_id,
        )
        for m in messages
    ]
    assert [m.sequence_number for m in messages] == list(range(1, len(expected["messages"]) + 1))
    assert [g[:3] for g in got] == [(p, role, utc(t)) for p, role, t, *_ in expected["messages"]]
    for g, (*_, content, model_id, tool_call_id) in zip(got, expected["messages"], strict=True):
        assert g[3].startswith(content), (g[3], content)
        assert g[4:] == (model_id, tool_call_id)

    # The branch walks (jump pointers set by the import) agree with the parent links.
    for leaf in {expected["leaf"], len(expected["messages"])}:
        listed = await list_all(
            api, session, scope=chat_pb2.MESSAGE_SCOPE_BRANCH, leaf_sequence_number=leaf, page_size=2
        )
        assert [m.sequence_number for m in listed] == branch_of(messages, leaf)
    # An append goes on from the current leaf, as after any append.
    appended = await api.chat.AppendMessages(
        chat_pb2.AppendMessagesRequest(
            request_id=rid(),
            user_id=user.id,
            session_id=session.id,
            messages=[chat_pb2.MessageInput(role=USER, content="and then?")],
        )
    )
    assert appended.messages[0].parent_sequence_number == expected["leaf"]


async def test_unknown_content_is_kept_as_text_after_a_note(api):
    user = await create_user(api)
    reply = await api.chat.ImportSession(request(user.id, CHATGPT, fixture("chatgpt")))
    _, messages = await export(api, reply.session)
    text = messages[8].content
    assert text.startswith('[unsupported content part "tether_quote"] ')
    assert json.loads(text.split(" ", 4)[4]) == {
        "domain": "en.wikipedia.org",
        "text": "Water boils at about 90 °C at 3,000 m.",
        "title": "High-altitude cooking",
        "url": "https://en.wikipedia.org/wiki/High-altitude_cooking",
    }


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_a_malformed_export_is_refused_with_the_path_of_its_first_bad_node(api, name):
    format, path = MALFORMED[name]
    user = await create_user(api)
    before = await table_rows(api, *TABLES)
    error = await expect_error(
        api.chat.ImportSession(request(user.id, format, fixture(name))), INVALID, "INVALID_ARGUMENT"
    )
    assert list(field_violations(error)) == [path]
    assert await table_rows(api, *TABLES) == before


async def test_a_reupload_under_a_new_request_id_returns_the_first_session(api):
    user = await create_user(api)
    first = await api.chat.ImportSession(request(user.id, OPEN_WEBUI, fixture("open_webui")))
    before = await table_rows(api, "chat_sessions", "chat_messages", "chat_imports")
    again = await api.chat.ImportSession(request(user.id, OPEN_WEBUI, fixture("open_webui")))
    assert again.already_imported and not again.source_differs
    assert again.session == first.session
    assert (again.imported_message_count, again.skipped_node_count) == (0, 0)
    assert await table_rows(api, "chat_sessions", "chat_messages", "chat_imports") == before

    # A re-export after the conversation went on: still the first session, flagged as different.
    changed = json.loads(fixture("open_webui"))
    changed[0]["chat"]["history"]["messages"]["3c2d1e0f-aaaa-4bbb-8ccc-000000000003"]["content"] = "Luna."
    differs = await api.chat.ImportSession(request(user.id, OPEN_WEBUI, json.dumps(changed).encode()))
    assert differs.already_imported and differs.source_differs
    assert differs.session.id == first.session.id
    assert await table_rows(api, "chat_sessions", "chat_messages", "chat_imports") == before

    # The same conversation id under another format, or for another user, is another source.
    other = await create_user(api)
    theirs = await api.chat.ImportSession(request(other.id, OPEN_WEBUI, fixture("open_webui")))
    assert not theirs.already_imported and theirs.session.id != first.session.id


async def test_a_replay_of_the_request_id_answers_the_same_and_other_data_is_refused(api):
    user = await create_user(api)
    key = rid()
    first = await api.chat.ImportSession(request(user.id, LIBRECHAT, fixture("librechat"), key))
    replay = await api.chat.ImportSession(request(user.id, LIBRECHAT, fixture("librechat"), key))
    assert replay == first
    await expect_error(
        api.chat.ImportSession(request(user.id, LIBRECHAT, fixture("librechat_recursive"), key)),
        EXISTS,
        "REQUEST_ID_REUSED",
    )


async def test_concurrent_uploads_of_one_conversation_create_one_session(api):
    user = await create_user(api)
    data = fixture("chatgpt")
    replies = await asyncio.gather(*(api.chat.ImportSession(request(user.id, CHATGPT, data)) for _ in range(6)))
    assert sorted(r.already_imported for r in replies) == [False] + [True] * 5
    assert len({r.session.id for r in replies}) == 1
    listed = await api.chat.ListSessions(chat_pb2.ListSessionsRequest(user_id=user.id))
    assert [s.id for s in listed.sessions] == [replies[0].session.id]


async def test_deleting_the_session_lets_the_conversation_be_imported_again(api):
    user = await create_user(api)
    first = await api.chat.ImportSession(request(user.id, LIBRECHAT, fixture("librechat")))
    await api.chat.DeleteSession(
        chat_pb2.DeleteSessionRequest(request_id=rid(), user_id=user.id, session_id=first.session.id)
    )
    again = await api.chat.ImportSession(request(user.id, LIBRECHAT, fixture("librechat")))
    assert not again.already_imported and again.session.id != first.session.id


async def test_deleting_the_user_removes_its_imports(api):
    user = await create_user(api)
    await api.chat.ImportSession(request(user.id, LIBRECHAT, fixture("librechat")))
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))
    rows = await table_rows(api, "chat_imports")
    assert [r for r in rows["chat_imports"] if str(r["user_id"]) == user.id] == []
    await expect_error(
        api.chat.ImportSession(request(user.id, LIBRECHAT, fixture("librechat"))), NOT_FOUND, "USER_NOT_FOUND"
    )


def chatgpt_conversation(nodes: dict[str, dict[str, Any]], current: str | None = None) -> bytes:
    return json.dumps(
        {
            "conversation_id": rid(),
            "title": "generated",
            "create_time": 1.7e9,
            "mapping": nodes,
            "current_node": current,
        }
    ).encode()


def chain(count: int, *, content: str = "m") -> dict[str, dict[str, Any]]:
    """A ChatGPT mapping of one branch of count messages, n0 -> n1 -> ..."""
    return {
        f"n{i}": {
            "id": f"n{i}",
            "parent": f"n{i - 1}" if i else None,
            "children": [f"n{i + 1}"] if i + 1 < count else [],
            "message": {
                "author": {"role": "user" if i % 2 == 0 else "assistant"},
                "create_time": 1.7e9 + i,
                "content": {"content_type": "text", "parts": [content]},
            },
        }
        for i in range(count)
    }


async def test_limits_are_invalid_argument_naming_the_field(api):
    user = await create_user(api)
    before = await table_rows(api, *TABLES)

    async def refused(data: bytes, reason: str = "INVALID_ARGUMENT", format: int = CHATGPT) -> dict[str, str]:
        error = await expect_error(api.chat.ImportSession(request(user.id, format, data)), INVALID, reason)
        return field_violations(error)

    # Size: the server's maximum message (4 MiB in tests) less 64 KiB.
    too_big = b" " * (4 * 1024 * 1024 - 64 * 1024 + 1)
    assert list(await refused(too_big, "CONTENT_TOO_LARGE")) == ["data"]
    # Messages: at most MAX_NODES nodes in one import.
    assert list(await refused(chatgpt_conversation(chain(MAX_NODES + 1, content="")))) == ["mapping"]
    # Depth: the first message deeper than MAX_DEPTH.
    assert list(await refused(chatgpt_conversation(chain(MAX_DEPTH + 1)))) == [f'mapping["n{MAX_DEPTH}"]']
    # One message's content over the content limit (1 MiB).
    big = chain(2)
    big["n1"]["message"]["content"]["parts"] = ["x" * (1024 * 1024 + 1)]
    assert list(await refused(chatgpt_conversation(big), "CONTENT_TOO_LARGE")) == ['mapping["n1"]']
    # Not JSON, two conversations in one call, no format, a cycle.
    assert list(await refused(b"{not json")) == ["data"]
    two = json.dumps([json.loads(chatgpt_conversation(chain(1)))] * 2).encode()
    assert list(await refused(two)) == ["[1]"]
    assert list(await refused(fixture("chatgpt"), format=chat_pb2.IMPORT_FORMAT_UNSPECIFIED)) == ["format"]
    loop = chain(3)
    loop["n0"]["parent"] = "n2"
    loop["n2"]["children"] = ["n0"]
    assert list(await refused(chatgpt_conversation(loop))) == ['mapping["n0"].parent']
    assert await table_rows(api, *TABLES) == before


async def test_a_deep_branch_at_the_limit_is_imported(api):
    user = await create_user(api)
    reply = await api.chat.ImportSession(
        request(user.id, CHATGPT, chatgpt_conversation(chain(MAX_DEPTH), current="n0"))
    )
    assert reply.imported_message_count == MAX_DEPTH
    assert reply.session.current_leaf_sequence_number == 1
    page = await api.chat.ListMessages(
        chat_pb2.ListMessagesRequest(
            user_id=user.id,
            session_id=reply.session.id,
            scope=chat_pb2.MESSAGE_SCOPE_BRANCH,
            leaf_sequence_number=MAX_DEPTH,
            after_sequence_number=MAX_DEPTH - 3,
        )
    )
    assert [m.sequence_number for m in page.messages] == [MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH]


async def test_system_messages_keep_their_role(api):
    user = await create_user(api)
    nodes = chain(2)
    nodes["n0"]["message"]["author"]["role"] = "system"
    reply = await api.chat.ImportSession(request(user.id, CHATGPT, chatgpt_conversation(nodes)))
    _, messages = await export(api, reply.session)
    assert [m.role for m in messages] == [SYSTEM, ASSISTANT]


async def test_a_message_without_content_is_skipped_and_its_children_hang_from_its_parent(api):
    user = await create_user(api)
    nodes = chain(4)
    nodes["n1"]["message"]["content"]["parts"] = [""]
    reply = await api.chat.ImportSession(request(user.id, CHATGPT, chatgpt_conversation(nodes, current="n1")))
    assert (reply.imported_message_count, reply.skipped_node_count) == (3, 1)
    _, messages = await export(api, reply.session)
    assert [(m.sequence_number, m.parent_sequence_number) for m in messages] == [(1, 0), (2, 1), (3, 2)]
    # The current node was the skipped one: its nearest kept ancestor is the current leaf.
    assert reply.session.current_leaf_sequence_number == 1


async def test_a_librechat_tree_child_must_name_its_parent(api):
    user = await create_user(api)
    export_ = json.loads(fixture("librechat_recursive"))
    # Nested under the first message, but naming no parent (a root).
    export_["messagesTree"][0]["children"][0]["parentMessageId"] = "00000000-0000-0000-0000-000000000000"
    error = await expect_error(
        api.chat.ImportSession(request(user.id, LIBRECHAT, json.dumps(export_).encode())), INVALID, "INVALID_ARGUMENT"
    )
    assert list(field_violations(error)) == ["messagesTree[0].children[0].parentMessageId"]
