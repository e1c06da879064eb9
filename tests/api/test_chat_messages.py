"""ChatService messages over real gRPC and PostgreSQL: AppendMessages (numbering, counters,
concurrency, idempotency, limits), ListMessages (both orders, bounds, pages while messages arrive,
branches), GetMessage, DeleteMessage and ExportSession.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2

from qdata.v1 import chat_pb2
from qdata_server.chat import messages
from qdata_server.errors import NotFound
from tests.support.calls import case_id, create_user, expect_error, rid
from tests.support.chat import (
    ASSISTANT,
    EXISTS,
    NOT_FOUND,
    SYSTEM,
    TOOL,
    USER,
    append,
    chat_state,
    create_session,
    get_session,
    list_all,
    list_page,
    message,
    numbers,
    violations,
)
from tests.support.database import pool_drained, sql

BRANCH = chat_pb2.MESSAGE_SCOPE_BRANCH
DESC = chat_pb2.MESSAGE_ORDER_DESCENDING
MIB = 1024 * 1024


async def new_session(api, **fields) -> chat_pb2.Session:
    user = await create_user(api)
    return await create_session(api, user.id, **fields)


async def get_message(api, session: chat_pb2.Session, sequence_number: int) -> chat_pb2.Message:
    request = chat_pb2.GetMessageRequest(
        user_id=session.user_id, session_id=session.id, sequence_number=sequence_number
    )
    return (await api.chat.GetMessage(request)).message


async def delete_message(api, session: chat_pb2.Session, sequence_number: int) -> chat_pb2.Session:
    request = chat_pb2.DeleteMessageRequest(
        request_id=rid(), user_id=session.user_id, session_id=session.id, sequence_number=sequence_number
    )
    return (await api.chat.DeleteMessage(request)).session


async def switch_leaf(api, session: chat_pb2.Session, leaf: int) -> chat_pb2.Session:
    request = chat_pb2.UpdateSessionRequest(
        request_id=rid(),
        session=chat_pb2.Session(id=session.id, user_id=session.user_id, current_leaf_sequence_number=leaf),
        update_mask=field_mask_pb2.FieldMask(paths=["current_leaf_sequence_number"]),
    )
    return (await api.chat.UpdateSession(request)).session


async def branch(api, session: chat_pb2.Session, leaf: int = 0, **fields) -> list[int]:
    return numbers(await list_all(api, session, scope=BRANCH, leaf_sequence_number=leaf, **fields))


async def export(api, session: chat_pb2.Session) -> list[chat_pb2.ExportSessionResponse]:
    stream = api.chat.ExportSession(chat_pb2.ExportSessionRequest(user_id=session.user_id, session_id=session.id))
    return [response async for response in stream]


# ---- AppendMessages -------------------------------------------------------------------------------


async def test_append_numbers_a_chain_and_moves_the_counters(api):
    session = await new_session(api, title="t")
    tool_call = chat_pb2.ToolCall(id="call_1", name="weather", arguments_json='{"city": "Paris"}')
    reply = await append(
        api,
        session,
        message("You are terse.", SYSTEM),
        message("Weather in Paris?", USER, input_tokens=0),
        message("", ASSISTANT, model_id="openai/gpt-4o", input_tokens=30, output_tokens=12, tool_calls=[tool_call]),
        message('{"temp_c": 21}', TOOL, tool_call_id="call_1"),
        message("21 °C and sunny.", ASSISTANT, model_id="openai/gpt-4o", input_tokens=50, output_tokens=8),
    )
    assert numbers(reply.messages) == [1, 2, 3, 4, 5]
    assert [m.parent_sequence_number for m in reply.messages] == [0, 1, 2, 3, 4]
    assert reply.messages[2].tool_calls == [tool_call] and reply.messages[3].tool_call_id == "call_1"
    assert {m.session_id for m in reply.messages} == {session.id}
    s = reply.session
    assert (s.message_count, s.last_sequence_number, s.current_leaf_sequence_number) == (5, 5, 5)
    assert (s.total_input_tokens, s.total_output_tokens) == (80, 20)
    assert s.last_activity_time == s.update_time == reply.messages[0].create_time
    assert s.last_activity_time.ToDatetime() > session.last_activity_time.ToDatetime()
    assert s == await get_session(api, session)
    for m in reply.messages:
        assert await get_message(api, session, m.sequence_number) == m

    # The next append continues the chain from the current leaf.
    more = await append(api, session, "and tomorrow?")
    assert (more.messages[0].sequence_number, more.messages[0].parent_sequence_number) == (6, 5)
    assert more.session.message_count == 6

    # One audit record per append, without content.
    events = await sql(api, "SELECT summary FROM audit_events WHERE action = 'chat.AppendMessages' ORDER BY 1")
    assert len(events) == 2 and all("Paris" not in str(e["summary"]) for e in events)


async def test_concurrent_appends_get_gapless_unique_numbers(api):
    session = await new_session(api)

    async def writer(task: int):
        batch = [message(f"task {task} message {i}", input_tokens=task, output_tokens=1) for i in range(5)]
        return await append(api, session, *batch)

    replies = await asyncio.gather(*(writer(task) for task in range(20)))

    assigned = [n for reply in replies for n in numbers(reply.messages)]
    assert sorted(assigned) == list(range(1, 101))
    for reply in replies:  # each append is one consecutive run, chained onto the one before it
        run = numbers(reply.messages)
        assert run == list(range(run[0], run[0] + 5))
        assert reply.messages[0].parent_sequence_number == run[0] - 1
    s = await get_session(api, session)
    assert (s.message_count, s.last_sequence_number, s.current_leaf_sequence_number) == (100, 100, 100)
    assert (s.total_input_tokens, s.total_output_tokens) == (5 * sum(range(20)), 100)
    rows = await sql(api, "SELECT sequence_number, parent_sequence_number FROM chat_messages ORDER BY 1")
    assert [(r["sequence_number"], r["parent_sequence_number"]) for r in rows] == [(n, n - 1) for n in range(1, 101)]
    assert numbers(await list_all(api, session, page_size=17)) == list(range(1, 101))


async def test_append_is_idempotent(api):
    session = await new_session(api)
    request = chat_pb2.AppendMessagesRequest(
        request_id=rid(), user_id=session.user_id, session_id=session.id, messages=[message("once"), message("twice")]
    )
    first = await api.chat.AppendMessages(request)
    assert await api.chat.AppendMessages(request) == first
    assert (await get_session(api, session)).message_count == 2

    # Concurrent replays of a new request: one effect, every caller gets the same answer.
    request.request_id = rid()
    replies = await asyncio.gather(*(api.chat.AppendMessages(request) for _ in range(10)))
    assert all(r == replies[0] for r in replies)
    assert numbers(replies[0].messages) == [3, 4]
    assert (await get_session(api, session)).message_count == 4
    assert len(await sql(api, "SELECT 1 FROM chat_messages")) == 4

    # The same request_id with other parameters is refused and adds nothing.
    request.messages[1].content = "changed"
    await expect_error(api.chat.AppendMessages(request), EXISTS, "REQUEST_ID_REUSED")
    # A rejected request leaves no trace: corrected, it succeeds under the same request_id.
    retry = chat_pb2.AppendMessagesRequest(
        request_id=rid(), user_id=session.user_id, session_id=session.id, messages=[message("")]
    )
    await violations(api.chat.AppendMessages(retry))
    retry.messages[0].content = "corrected"
    assert numbers((await api.chat.AppendMessages(retry)).messages) == [5]


def _append_case(**fields) -> chat_pb2.MessageInput:
    base = {"role": USER, "content": "fine"}
    base.update(fields)
    return chat_pb2.MessageInput(**base)


APPEND_BAD_MESSAGES = [
    (_append_case(role=chat_pb2.MESSAGE_ROLE_UNSPECIFIED), {"messages[0].role"}),
    (_append_case(role=17), {"messages[0].role"}),
    (_append_case(content=""), {"messages[0].content"}),
    (_append_case(content="nul \x00 inside"), {"messages[0].content"}),
    (_append_case(model_id="m" * 201), {"messages[0].model_id"}),
    (_append_case(input_tokens=-1), {"messages[0].input_tokens"}),
    (_append_case(output_tokens=1_000_000_001), {"messages[0].output_tokens"}),
    (_append_case(tool_calls=[chat_pb2.ToolCall(id="a", name="f")]), {"messages[0].tool_calls"}),
    (_append_case(tool_call_id="call_1"), {"messages[0].tool_call_id"}),
    (_append_case(role=TOOL), {"messages[0].tool_call_id"}),
    (_append_case(role=TOOL, tool_call_id="x" * 129), {"messages[0].tool_call_id"}),
    (
        _append_case(role=ASSISTANT, content="", tool_calls=[chat_pb2.ToolCall(id="", name="f")]),
        {"messages[0].tool_calls[0].id"},
    ),
    (
        _append_case(role=ASSISTANT, tool_calls=[chat_pb2.ToolCall(id="a", name="f", arguments_json="{nope")]),
        {"messages[0].tool_calls[0].arguments_json"},
    ),
    (
        _append_case(role=ASSISTANT, tool_calls=[chat_pb2.ToolCall(id="a", name="f", arguments_json="[" * 100_000)]),
        {"messages[0].tool_calls[0].arguments_json"},
    ),
    (
        _append_case(role=ASSISTANT, tool_calls=[chat_pb2.ToolCall(id="a", name="f", arguments_json="NaN")]),
        {"messages[0].tool_calls[0].arguments_json"},
    ),
    (
        _append_case(
            role=ASSISTANT, tool_calls=[chat_pb2.ToolCall(id="a", name="f"), chat_pb2.ToolCall(id="a", name="g")]
        ),
        {"messages[0].tool_calls[1].id"},
    ),
    (
        _append_case(role=ASSISTANT, tool_calls=[chat_pb2.ToolCall(id=f"c{i}", name="f") for i in range(65)]),
        {"messages[0].tool_calls"},
    ),
]


def append_request(session: chat_pb2.Session, *messages, **fields) -> chat_pb2.AppendMessagesRequest:
    values = {"request_id": rid(), "user_id": session.user_id, "session_id": session.id, "messages": messages}
    values.update(fields)
    return chat_pb2.AppendMessagesRequest(**values)


@pytest.mark.parametrize(("bad", "expected"), APPEND_BAD_MESSAGES, ids=case_id)
async def test_append_rejects_a_bad_message_and_changes_nothing(api, bad, expected):
    session = await new_session(api)
    await append(api, session, "existing")
    before = await chat_state(api)
    assert await violations(api.chat.AppendMessages(append_request(session, bad))) == expected
    assert await chat_state(api) == before


async def test_append_rejects_bad_input_and_limits_and_changes_nothing(api):
    session = await new_session(api)
    await append(api, session, "existing")
    before = await chat_state(api)

    def request(*messages, **fields) -> chat_pb2.AppendMessagesRequest:
        return append_request(session, *messages, **fields)

    # Several problems at once are listed together, with the index of the message.
    assert await violations(api.chat.AppendMessages(request(message("ok"), message(""), session_id="x"))) == {
        "messages[1].content",
        "session_id",
    }
    assert await violations(api.chat.AppendMessages(request())) == {"messages"}
    assert await violations(api.chat.AppendMessages(request(*[message("m")] * 101))) == {"messages"}
    assert await violations(api.chat.AppendMessages(request(message("m"), parent_sequence_number=-1))) == {
        "parent_sequence_number"
    }
    # Size limits: content (with tool-call arguments) over 1 MiB is CONTENT_TOO_LARGE.
    too_big = message("é" * (MIB // 2) + "x")
    assert await violations(api.chat.AppendMessages(request(too_big)), "CONTENT_TOO_LARGE") == {"messages[0].content"}
    args = chat_pb2.ToolCall(id="a", name="f", arguments_json='"' + "a" * 1000 + '"')
    over = message("b" * (MIB - 1000), ASSISTANT, tool_calls=[args])
    assert await violations(api.chat.AppendMessages(request(over)), "CONTENT_TOO_LARGE") == {"messages[0].content"}
    # Together the messages must leave room for the response (4 MiB gRPC limit - 256 KiB).
    many = [message("c" * MIB) for _ in range(3)] + [message("d" * (MIB * 8 // 10))]
    assert await violations(api.chat.AppendMessages(request(*many)), "CONTENT_TOO_LARGE") == {"messages"}
    # Above the gRPC maximum itself, gRPC refuses the request before the server sees it.
    huge = [message("c" * MIB) for _ in range(4)]
    await expect_error(api.chat.AppendMessages(request(*huge)), grpc.StatusCode.RESOURCE_EXHAUSTED)
    # Parents must be live messages of the session; sessions must be the user's.
    await expect_error(
        api.chat.AppendMessages(request(message("m"), parent_sequence_number=2)), NOT_FOUND, "MESSAGE_NOT_FOUND"
    )
    await expect_error(api.chat.AppendMessages(request(message("m"), session_id=rid())), NOT_FOUND, "SESSION_NOT_FOUND")
    assert await chat_state(api) == before

    # Exactly at the limit is fine (1 MiB of 2-byte characters), as are 100 messages at once.
    exact = await append(api, session, message("é" * (MIB // 2)))
    assert len(exact.messages[0].content.encode()) == MIB
    assert numbers((await append(api, session, *[message(f"m{i}") for i in range(100)])).messages) == list(
        range(3, 103)
    )


# ---- ListMessages ---------------------------------------------------------------------------------


async def test_list_messages_both_orders_bounds_and_last_n(api):
    session = await new_session(api)
    await append(api, session, *[f"message {i}" for i in range(1, 31)])

    assert numbers(await list_all(api, session, page_size=4)) == list(range(1, 31))
    assert numbers(await list_all(api, session, page_size=4, order=DESC)) == list(range(30, 0, -1))
    # "The last N messages" is one call.
    last = await list_page(api, session, order=DESC, page_size=5)
    assert numbers(last.messages) == [30, 29, 28, 27, 26] and last.next_page_token
    assert last.messages[0].content == "message 30"
    # Bounds are exclusive, in both orders, across pages.
    assert numbers(await list_all(api, session, page_size=3, after_sequence_number=10, before_sequence_number=18)) == [
        11,
        12,
        13,
        14,
        15,
        16,
        17,
    ]
    bounded = await list_all(api, session, page_size=3, order=DESC, after_sequence_number=25)
    assert numbers(bounded) == [30, 29, 28, 27, 26]
    assert numbers(await list_all(api, session, after_sequence_number=30)) == []
    # The default page holds 50; a page size above 1,000 is capped.
    await append(api, session, *[f"more {i}" for i in range(40)])
    assert len((await list_page(api, session)).messages) == 50
    assert len((await list_page(api, session, page_size=5000)).messages) == 70


async def test_pages_neither_skip_nor_repeat_while_messages_arrive(api):
    session = await new_session(api)
    await append(api, session, *[f"seed {i}" for i in range(40)])
    stop = asyncio.Event()

    async def writer():
        count = 0
        while not stop.is_set():
            await append(api, session, f"live {count}", f"live {count} reply")
            count += 1
        return count

    task = asyncio.create_task(writer())
    try:
        up: list[int] = []
        down: list[int] = []
        up_token = down_token = None
        for _ in range(12):
            if up_token != "":
                reply = await list_page(api, session, page_size=6, page_token=up_token or "")
                up += numbers(reply.messages)
                up_token = reply.next_page_token
            if down_token != "":
                reply = await list_page(api, session, page_size=6, order=DESC, page_token=down_token or "")
                down += numbers(reply.messages)
                down_token = reply.next_page_token
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        written = await task
    assert written > 0
    # Ascending pages form one gapless run from 1; descending pages one gapless run down to 1 from
    # the highest number of the first page, though newer ones arrived meanwhile.
    assert up == list(range(1, len(up) + 1)) and len(up) > 40
    assert down == list(range(down[0], 0, -1)) and down[0] >= 40 and down_token == ""
    # Polling after the highest number seen continues without a gap.
    rest = numbers(await list_all(api, session, after_sequence_number=up[-1], page_size=100))
    assert up + rest == list(range(1, 40 + 2 * written + 1))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"page_size": -1}, {"page_size"}),
        ({"after_sequence_number": -1}, {"after_sequence_number"}),
        ({"before_sequence_number": -5}, {"before_sequence_number"}),
        ({"leaf_sequence_number": 2}, {"leaf_sequence_number"}),
        ({"scope": BRANCH, "leaf_sequence_number": -1}, {"leaf_sequence_number"}),
        ({"scope": 7, "order": 9}, {"scope", "order"}),
        ({"page_token": "forged"}, {"page_token"}),
    ],
    ids=case_id,
)
async def test_list_messages_rejects_a_bad_field(api, fields, expected):
    session = await new_session(api)
    await append(api, session, "one", "two", "three")
    assert await violations(list_page(api, session, **fields)) == expected


async def test_list_messages_rejects_bad_input(api):
    session = await new_session(api)
    await append(api, session, "one", "two", "three")
    first = await list_page(api, session, page_size=1)
    for other in ({"order": DESC}, {"after_sequence_number": 1}, {"scope": BRANCH}):
        assert await violations(list_page(api, session, page_token=first.next_page_token, **other)) == {"page_token"}
    other_session = await create_session(api, session.user_id)
    assert await violations(list_page(api, other_session, page_token=first.next_page_token)) == {"page_token"}
    await expect_error(list_page(api, session, scope=BRANCH, leaf_sequence_number=4), NOT_FOUND, "MESSAGE_NOT_FOUND")
    for bad in (0, -3):
        request = chat_pb2.GetMessageRequest(user_id=session.user_id, session_id=session.id, sequence_number=bad)
        assert await violations(api.chat.GetMessage(request)) == {"sequence_number"}
    await expect_error(
        api.chat.GetMessage(
            chat_pb2.GetMessageRequest(user_id=session.user_id, session_id=session.id, sequence_number=4)
        ),
        NOT_FOUND,
        "MESSAGE_NOT_FOUND",
    )


async def test_large_messages_page_within_the_grpc_limit(api):
    session = await new_session(api)
    for i in range(5):
        await append(api, session, message(str(i) * MIB))
    first = await list_page(api, session, page_size=5)
    assert numbers(first.messages) == [1, 2, 3] and first.next_page_token  # 3 MiB fit in 4 MiB - 256 KiB
    assert numbers(await list_all(api, session, page_size=5)) == [1, 2, 3, 4, 5]
    chunks = await export(api, session)
    assert [numbers(c.messages) for c in chunks] == [[1, 2, 3], [4, 5]]


# ---- Branches -------------------------------------------------------------------------------------


async def test_branches_from_edit_and_regenerate(api):
    session = await new_session(api)
    await append(
        api, session, message("Q1"), message("A1", ASSISTANT), message("Q2"), message("A2", ASSISTANT)
    )  # 1 2 3 4
    assert await branch(api, session) == [1, 2, 3, 4]

    # Regenerate A2: a new answer to Q2 (parent 3).
    regenerated = await append(api, session, message("A2 again", ASSISTANT), parent=3)  # 5
    assert regenerated.messages[0].parent_sequence_number == 3
    assert regenerated.session.current_leaf_sequence_number == 5
    assert await branch(api, session) == [1, 2, 3, 5]

    # Edit Q2: a new question after A1 (parent 2) and its answer.
    edited = await append(api, session, message("Q2 edited"), message("A2 for the edit", ASSISTANT), parent=2)  # 6 7
    assert [m.parent_sequence_number for m in edited.messages] == [2, 6]
    assert await branch(api, session) == [1, 2, 6, 7]
    assert await branch(api, session, 4) == [1, 2, 3, 4]
    assert await branch(api, session, 5, order=DESC) == [5, 3, 2, 1]
    branch_messages = await list_all(api, session, scope=BRANCH, leaf_sequence_number=7)
    assert [m.content for m in branch_messages] == ["Q1", "A1", "Q2 edited", "A2 for the edit"]
    # All scope keeps append order across branches; sequence numbers stay gapless.
    assert numbers(await list_all(api, session)) == [1, 2, 3, 4, 5, 6, 7]
    # Pages and bounds on a branch, both ways.
    assert await branch(api, session, 7, page_size=1) == [1, 2, 6, 7]
    assert await branch(api, session, 7, page_size=1, order=DESC) == [7, 6, 2, 1]
    assert await branch(api, session, 7, after_sequence_number=1, before_sequence_number=7) == [2, 6]
    assert await branch(api, session, 7, order=DESC, page_size=2, before_sequence_number=7) == [6, 2, 1]

    # Switching the leaf is an update; the next append attaches there.
    switched = await switch_leaf(api, session, 4)
    assert switched.current_leaf_sequence_number == 4
    assert await branch(api, session) == [1, 2, 3, 4]
    follow_up = await append(api, session, "Q3 on the first branch")  # 8
    assert follow_up.messages[0].parent_sequence_number == 4
    assert await branch(api, session) == [1, 2, 3, 4, 8]
    # A new root (parent 0) starts a separate tree.
    root = await append(api, session, "fresh start", parent=0)  # 9
    assert root.messages[0].parent_sequence_number == 0
    assert await branch(api, session) == [9]

    # A branch's pages keep the leaf they started with even if the current leaf moves.
    first = await list_page(api, session, scope=BRANCH, page_size=2)
    assert numbers(first.messages) == [9] and not first.next_page_token
    await switch_leaf(api, session, 8)
    first = await list_page(api, session, scope=BRANCH, page_size=2)
    await switch_leaf(api, session, 7)
    second = await list_page(api, session, scope=BRANCH, page_size=2, page_token=first.next_page_token)
    assert numbers(first.messages) + numbers(second.messages) == [1, 2, 3, 4]


# ---- DeleteMessage --------------------------------------------------------------------------------


async def test_delete_message_erases_it_and_keeps_the_tree(api):
    session = await new_session(api)
    await append(
        api,
        session,
        message("Q1", input_tokens=1),
        message("A1", ASSISTANT, input_tokens=10, output_tokens=20),
        message("Q2", input_tokens=2),
    )  # 1 2 3
    await append(api, session, message("A1 regenerated", ASSISTANT, output_tokens=5), parent=1)  # 4, leaf

    s = await delete_message(api, session, 2)
    assert (s.message_count, s.last_sequence_number, s.total_input_tokens, s.total_output_tokens) == (3, 4, 3, 5)
    assert s.current_leaf_sequence_number == 4  # not the leaf: unchanged
    assert s.last_activity_time == (await get_session(api, session)).last_activity_time
    await expect_error(
        api.chat.GetMessage(chat_pb2.GetMessageRequest(user_id=s.user_id, session_id=s.id, sequence_number=2)),
        NOT_FOUND,
        "MESSAGE_NOT_FOUND",
    )
    # The branch through it lists without it; its child keeps it as parent.
    assert await branch(api, session, 3) == [1, 3]
    assert (await get_message(api, session, 3)).parent_sequence_number == 2
    assert numbers(await list_all(api, session)) == [1, 3, 4]
    [row] = await sql(api, "SELECT * FROM chat_messages WHERE sequence_number = 2")
    assert (row["content"], row["input_tokens"], row["output_tokens"], row["deleted_at"] is not None) == (
        "",
        0,
        0,
        True,
    )
    # The deleted message can be neither a parent nor a new leaf; its number is not reused.
    await expect_error(append(api, session, "child", parent=2), NOT_FOUND, "MESSAGE_NOT_FOUND")
    await expect_error(switch_leaf(api, session, 2), NOT_FOUND, "MESSAGE_NOT_FOUND")
    await expect_error(delete_message(api, session, 2), NOT_FOUND, "MESSAGE_NOT_FOUND")
    await expect_error(delete_message(api, session, 99), NOT_FOUND, "MESSAGE_NOT_FOUND")

    # Deleting the current leaf moves it to the nearest live ancestor ...
    s = await switch_leaf(api, session, 3)
    s = await delete_message(api, session, 3)
    assert s.current_leaf_sequence_number == 1  # 3's parent 2 is deleted too
    # ... or to 0 when none is left; the next append then starts a new root.
    s = await delete_message(api, session, 1)
    assert (s.current_leaf_sequence_number, s.message_count) == (0, 1)
    assert await branch(api, session, 4) == [4]
    reply = await append(api, session, "after the deletions")
    assert (reply.messages[0].sequence_number, reply.messages[0].parent_sequence_number) == (5, 0)
    # A replay of a deletion answers like the first call.
    request = chat_pb2.DeleteMessageRequest(request_id=rid(), user_id=s.user_id, session_id=s.id, sequence_number=5)
    first = await api.chat.DeleteMessage(request)
    assert await api.chat.DeleteMessage(request) == first
    assert (await get_session(api, session)).message_count == 1


# ---- ExportSession --------------------------------------------------------------------------------


async def test_export_streams_a_long_session_in_order(api):
    session = await new_session(api, title="long")
    for batch in range(12):
        await append(api, session, *[message(f"batch {batch} line {i}", output_tokens=1) for i in range(100)])
    await delete_message(api, session, 500)

    stream = api.chat.ExportSession(chat_pb2.ExportSessionRequest(user_id=session.user_id, session_id=session.id))
    chunks = []
    async for chunk in stream:
        if not chunks:
            # Appended after the export started: not included.
            await append(api, session, "too late")
        chunks.append(chunk)

    assert chunks[0].session.id == session.id and chunks[0].session.message_count == 1199
    assert all(not c.HasField("session") for c in chunks[1:])
    assert all(len(c.messages) <= 100 for c in chunks) and len(chunks) >= 12
    exported = [m for c in chunks for m in c.messages]
    assert numbers(exported) == [n for n in range(1, 1201) if n != 500]
    assert exported[0].content == "batch 0 line 0" and exported[-1].content == "batch 11 line 99"

    # An empty session exports its session alone; a missing one fails before anything is sent.
    empty = await create_session(api, session.user_id)
    [only] = await export(api, empty)
    assert only.session.id == empty.id and not only.messages
    missing = chat_pb2.Session(id=rid(), user_id=session.user_id)
    await expect_error(export(api, missing), NOT_FOUND, "SESSION_NOT_FOUND")
    bad = chat_pb2.Session(id="nope", user_id=session.user_id)
    assert await violations(export(api, bad)) == {"session_id"}


async def test_export_of_a_session_deleted_midway_ends_with_not_found(api):
    """Driven through the domain generator, so the deletion lands between two chunks for sure (over
    gRPC the server may have read ahead into the transport's buffers)."""
    session = await new_session(api)
    await append(api, session, *[f"m{i}" for i in range(100)])
    await append(api, session, *[f"n{i}" for i in range(100)])
    request = chat_pb2.ExportSessionRequest(user_id=session.user_id, session_id=session.id)
    chunks = messages.export_session(api.server.deps, request)
    first = await anext(chunks)
    assert len(first.messages) == 100
    await api.chat.DeleteSession(
        chat_pb2.DeleteSessionRequest(request_id=rid(), user_id=session.user_id, session_id=session.id)
    )
    with pytest.raises(NotFound) as caught:
        await anext(chunks)
    assert caught.value.reason == "SESSION_NOT_FOUND"


async def test_cancelled_exports_return_their_connections(api):
    session = await new_session(api)
    for batch in range(5):
        await append(api, session, *[f"batch {batch} line {i}" for i in range(100)])
    pool = api.server.pool
    streams = [
        api.chat.ExportSession(chat_pb2.ExportSessionRequest(user_id=session.user_id, session_id=session.id))
        for _ in range(12)
    ]
    for stream in streams:
        first = await stream.read()
        assert len(first.messages) == 100
    for stream in streams:
        stream.cancel()
    await pool_drained(pool)
    # The server still exports in full afterwards.
    assert numbers([m for c in await export(api, session) for m in c.messages]) == list(range(1, 501))
