"""ChatService sessions over real gRPC and PostgreSQL: CreateSession, GetSession, ListSessions,
UpdateSession, DeleteSession, idempotency, and DeleteUser removing a user's chats.

Rejected requests are checked for their status, reason and violated fields, and for leaving the
database exactly as it was.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.protobuf import field_mask_pb2

from qdata.v1 import chat_pb2, user_pb2
from tests.support.calls import case_id, create_user, expect_error, rid
from tests.support.chat import EXISTS, INVALID, NOT_FOUND, append, chat_state, create_session, get_session, violations
from tests.support.database import sql

UNKNOWN_USER = "00000000-0000-4000-8000-000000000000"


def update_request(session: chat_pb2.Session, paths: list[str], **fields) -> chat_pb2.UpdateSessionRequest:
    return chat_pb2.UpdateSessionRequest(
        request_id=rid(),
        session=chat_pb2.Session(id=session.id, user_id=session.user_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )


async def update(api, session: chat_pb2.Session, paths: list[str], **fields) -> chat_pb2.Session:
    return (await api.chat.UpdateSession(update_request(session, paths, **fields))).session


async def list_ids(api, user_id: str, **fields) -> list[str]:
    """Walks every page of ListSessions (page size 2) and returns the session ids in order."""
    ids, token = [], ""
    while True:
        reply = await api.chat.ListSessions(
            chat_pb2.ListSessionsRequest(user_id=user_id, page_size=2, page_token=token, **fields)
        )
        assert len(reply.sessions) <= 2
        ids += [s.id for s in reply.sessions]
        token = reply.next_page_token
        if not token:
            return ids


# ---- CreateSession and GetSession -------------------------------------------------------------


async def test_create_session_normalizes_and_get_returns_it(api):
    user = await create_user(api)
    request = chat_pb2.CreateSessionRequest(
        request_id=rid(),
        user_id=user.id,
        model_id="openai/gpt-4o",
        title="Trip to Lisbon ✈",
        metadata={"client.version": "1.2", "theme": ""},
        tags=["Travel", "travel", "work:q3", "a-b_c"],
        pinned=True,
    )
    session = (await api.chat.CreateSession(request)).session

    assert (session.user_id, session.model_id, session.title) == (user.id, "openai/gpt-4o", "Trip to Lisbon ✈")
    assert dict(session.metadata) == {"client.version": "1.2", "theme": ""}
    assert list(session.tags) == ["a-b_c", "travel", "work:q3"]
    assert session.pinned and not session.archived
    counters = (
        session.message_count,
        session.last_sequence_number,
        session.current_leaf_sequence_number,
        session.total_input_tokens,
        session.total_output_tokens,
    )
    assert counters == (0, 0, 0, 0, 0)
    assert session.last_activity_time == session.create_time == session.update_time
    assert await get_session(api, session) == session

    # A replay returns the first answer and creates nothing; other parameters are a reuse.
    assert (await api.chat.CreateSession(request)).session == session
    assert len(await sql(api, "SELECT 1 FROM chat_sessions")) == 1
    request.title = "Another title"
    await expect_error(api.chat.CreateSession(request), EXISTS, "REQUEST_ID_REUSED")

    # The audit record names the session but carries no title, model or metadata.
    [event] = await sql(api, "SELECT * FROM audit_events WHERE action = 'chat.CreateSession'")
    assert (event["target_id"], str(event["user_id"])) == (session.id, user.id)
    assert "Lisbon" not in str(event["summary"]) and "gpt" not in str(event["summary"])


CREATE_BAD_INPUT = [
    ({"user_id": ""}, {"user_id"}),
    ({"user_id": "not-a-uuid"}, {"user_id"}),
    ({"title": "t" * 201}, {"title"}),
    ({"title": "bell\x07"}, {"title"}),
    ({"model_id": "m" * 201}, {"model_id"}),
    ({"model_id": "nul\x00"}, {"model_id"}),
    ({"metadata": {"bad key": "v"}}, {"metadata['bad key']"}),
    ({"metadata": {"": "v"}}, {"metadata['']"}),
    ({"metadata": {"k" * 65: "v"}}, {f"metadata[{'k' * 64!r}]"}),
    ({"metadata": {"k": "v" * 1025}}, {"metadata['k']"}),
    ({"metadata": {"k": "a\x00b"}}, {"metadata['k']"}),
    ({"metadata": {f"k{i}": "v" for i in range(33)}}, {"metadata"}),
    ({"tags": ["ok", "not ok"]}, {"tags[1]"}),
    ({"tags": [""]}, {"tags[0]"}),
    ({"tags": ["t" * 33]}, {"tags[0]"}),
    ({"tags": ["ünïcode"]}, {"tags[0]"}),
    ({"tags": [f"t{i}" for i in range(17)]}, {"tags"}),
    ({"title": "t" * 201, "tags": ["x y"], "user_id": "nope"}, {"title", "tags[0]", "user_id"}),
]


def fill(message: Any, fields: dict[str, Any]) -> None:
    """Sets fields on a message: maps are updated, repeated fields extended, the rest assigned."""
    for key, value in fields.items():
        if isinstance(value, dict):
            getattr(message, key).update(value)
        elif isinstance(value, list):
            getattr(message, key).extend(value)
        else:
            setattr(message, key, value)


@pytest.mark.parametrize(("fields", "expected"), CREATE_BAD_INPUT, ids=case_id)
async def test_create_session_rejects_bad_input_and_changes_nothing(api, fields, expected):
    user = await create_user(api)
    before = await chat_state(api)
    request = chat_pb2.CreateSessionRequest(request_id=rid(), user_id=user.id)
    fill(request, fields)
    assert await violations(api.chat.CreateSession(request)) == expected
    assert await chat_state(api) == before


async def test_create_session_limits_and_unknown_users(api):
    user = await create_user(api)
    before = await chat_state(api)
    # 16 distinct tags (17 before folding) and 32 metadata entries are within the limits.
    tags = [f"t{i}" for i in range(16)] + ["T0"]
    ok = await create_session(api, user.id, tags=tags, metadata={f"k{i}": "v" * 1024 for i in range(32)})
    assert len(ok.tags) == 16 and len(ok.metadata) == 32
    await api.chat.DeleteSession(chat_pb2.DeleteSessionRequest(request_id=rid(), user_id=user.id, session_id=ok.id))

    # Unknown and deleted users are USER_NOT_FOUND; a missing request_id is INVALID_ARGUMENT.
    await expect_error(
        api.chat.CreateSession(chat_pb2.CreateSessionRequest(request_id=rid(), user_id=UNKNOWN_USER)),
        NOT_FOUND,
        "USER_NOT_FOUND",
    )
    await expect_error(api.chat.CreateSession(chat_pb2.CreateSessionRequest(user_id=user.id)), INVALID)
    after = await chat_state(api)
    assert after["chat_sessions"] == before["chat_sessions"] == []
    gone = await create_user(api)
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=gone.id))
    await expect_error(
        api.chat.CreateSession(chat_pb2.CreateSessionRequest(request_id=rid(), user_id=gone.id)),
        NOT_FOUND,
        "USER_NOT_FOUND",
    )
    await expect_error(
        api.chat.GetSession(chat_pb2.GetSessionRequest(user_id=user.id, session_id=ok.id)),
        NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    assert await violations(api.chat.GetSession(chat_pb2.GetSessionRequest(user_id=user.id))) == {"session_id"}


# ---- ListSessions ---------------------------------------------------------------------------------


async def test_list_sessions_orders_by_activity_filters_and_pages(api):
    user = await create_user(api)
    other = await create_user(api)
    await create_session(api, other.id, tags=["work"])
    a = await create_session(api, user.id, title="a", tags=["work", "q3"])
    b = await create_session(api, user.id, title="b", tags=["home"], pinned=True)
    c = await create_session(api, user.id, title="c", tags=["work"])
    d = await create_session(api, user.id, title="d")
    e = await create_session(api, user.id, title="e", tags=["work"])
    # Appending moves a session to the front; updating does not.
    await append(api, a, "first message")
    await update(api, c, ["archived"], archived=True)
    await update(api, d, ["title"], title="d2")

    assert await list_ids(api, user.id) == [a.id, e.id, d.id, b.id]
    include = chat_pb2.ARCHIVE_FILTER_INCLUDE
    assert await list_ids(api, user.id, archive_filter=include) == [a.id, e.id, d.id, c.id, b.id]
    assert await list_ids(api, user.id, archive_filter=chat_pb2.ARCHIVE_FILTER_ONLY) == [c.id]
    assert await list_ids(api, user.id, tags=["WORK"]) == [a.id, e.id]
    assert await list_ids(api, user.id, tags=["work", "q3"], archive_filter=include) == [a.id]
    assert await list_ids(api, user.id, tags=["work"], archive_filter=include) == [a.id, e.id, c.id]
    assert await list_ids(api, user.id, pinned=True) == [b.id]
    assert await list_ids(api, user.id, pinned=False) == [a.id, e.id, d.id]
    assert await list_ids(api, user.id, tags=["nothing"]) == []

    # One page holds everything with the default size; the token is bound to the filters.
    reply = await api.chat.ListSessions(chat_pb2.ListSessionsRequest(user_id=user.id))
    assert [s.title for s in reply.sessions] == ["a", "e", "d2", "b"] and not reply.next_page_token
    first = await api.chat.ListSessions(chat_pb2.ListSessionsRequest(user_id=user.id, page_size=1))
    assert first.next_page_token
    reused = chat_pb2.ListSessionsRequest(user_id=user.id, page_token=first.next_page_token, pinned=True)
    assert await violations(api.chat.ListSessions(reused)) == {"page_token"}
    reused = chat_pb2.ListSessionsRequest(user_id=other.id, page_token=first.next_page_token)
    assert await violations(api.chat.ListSessions(reused)) == {"page_token"}
    bad = chat_pb2.ListSessionsRequest(user_id=user.id, page_size=-1, tags=["no way"], archive_filter=9)
    assert await violations(api.chat.ListSessions(bad)) == {"page_size", "tags[0]", "archive_filter"}
    await expect_error(
        api.chat.ListSessions(chat_pb2.ListSessionsRequest(user_id=UNKNOWN_USER)), NOT_FOUND, "USER_NOT_FOUND"
    )


# ---- UpdateSession --------------------------------------------------------------------------------


async def test_update_session_applies_the_mask(api):
    user = await create_user(api)
    session = await create_session(api, user.id, title="old", model_id="m1", metadata={"a": "1", "b": "2"}, tags=["x"])
    await asyncio.sleep(0.01)

    updated = await update(
        api,
        session,
        ["title", "model_id", "pinned", "archived", "tags"],
        title="new",
        model_id="m2",
        pinned=True,
        archived=True,
        tags=["Y", "z"],
        metadata={"ignored": "not in the mask"},
    )
    assert (updated.title, updated.model_id, updated.pinned, updated.archived) == ("new", "m2", True, True)
    assert list(updated.tags) == ["y", "z"] and dict(updated.metadata) == {"a": "1", "b": "2"}
    assert updated.update_time.ToDatetime() > session.update_time.ToDatetime()
    assert updated.last_activity_time == session.last_activity_time
    assert updated.create_time == session.create_time

    # "metadata.<key>" sets or removes one key; "metadata" replaces the map.
    updated = await update(api, session, ["metadata.b", "metadata.c"], metadata={"c": "3"})
    assert dict(updated.metadata) == {"a": "1", "c": "3"}
    updated = await update(api, session, ["metadata"], metadata={"only": "this"})
    assert dict(updated.metadata) == {"only": "this"}
    updated = await update(api, session, ["tags", "pinned"])
    assert list(updated.tags) == [] and not updated.pinned
    assert await get_session(api, session) == updated

    # Replays return the first answer; a reused id with other values is refused.
    request = update_request(session, ["title"], title="replayed")
    first = (await api.chat.UpdateSession(request)).session
    await update(api, session, ["title"], title="later")
    assert (await api.chat.UpdateSession(request)).session == first
    request.session.title = "different"
    await expect_error(api.chat.UpdateSession(request), EXISTS, "REQUEST_ID_REUSED")

    # The audit summaries name fields, never titles or metadata values.
    events = await sql(api, "SELECT summary FROM audit_events WHERE action = 'chat.UpdateSession'")
    assert len(events) == 6
    assert all("replayed" not in str(e["summary"]) and "this" not in str(e["summary"]) for e in events)


UPDATE_BAD_INPUT = [
    ([], {}, {"update_mask"}),
    (["nope"], {}, {"update_mask"}),
    (["id"], {}, {"update_mask"}),
    (["message_count"], {}, {"update_mask"}),
    (["title", "title"], {}, {"update_mask"}),
    (["metadata", "metadata.a"], {}, {"update_mask"}),
    (["metadata.bad key"], {}, {"update_mask"}),
    (["metadata."], {}, {"update_mask"}),
    (["title"], {"title": "t" * 201}, {"session.title"}),
    (["model_id"], {"model_id": "\x1b[31m"}, {"session.model_id"}),
    (["tags"], {"tags": ["ok", "no way"]}, {"session.tags[1]"}),
    (["metadata"], {"metadata": {"k": "v" * 1025}}, {"session.metadata['k']"}),
    (["metadata"], {"metadata": {f"k{i}": "v" for i in range(33)}}, {"session.metadata"}),
    (["current_leaf_sequence_number"], {"current_leaf_sequence_number": 0}, {"session.current_leaf_sequence_number"}),
    (["current_leaf_sequence_number"], {"current_leaf_sequence_number": -5}, {"session.current_leaf_sequence_number"}),
]


@pytest.mark.parametrize(("paths", "fields", "expected"), UPDATE_BAD_INPUT, ids=case_id)
async def test_update_session_rejects_bad_input_and_changes_nothing(api, paths, fields, expected):
    user = await create_user(api)
    session = await create_session(api, user.id, metadata={f"k{i}": "v" for i in range(32)})
    await append(api, session, "one")
    before = await chat_state(api)
    request = update_request(session, paths)
    fill(request.session, fields)
    assert await violations(api.chat.UpdateSession(request)) == expected
    assert await chat_state(api) == before


async def test_update_session_rejects_what_only_the_stored_session_shows(api):
    user = await create_user(api)
    session = await create_session(api, user.id, metadata={f"k{i}": "v" for i in range(32)})
    await append(api, session, "one")
    before = await chat_state(api)
    # A 33rd metadata entry is only known to be too many once merged with the stored ones.
    request = update_request(session, ["metadata.k32"])
    request.session.metadata["k32"] = "v"
    assert await violations(api.chat.UpdateSession(request)) == {"session.metadata"}
    # The new leaf must be a live message of the session.
    await expect_error(
        api.chat.UpdateSession(
            update_request(session, ["current_leaf_sequence_number"], current_leaf_sequence_number=2)
        ),
        NOT_FOUND,
        "MESSAGE_NOT_FOUND",
    )
    missing = chat_pb2.Session(id=rid(), user_id=user.id)
    await expect_error(
        api.chat.UpdateSession(update_request(missing, ["title"], title="x")), NOT_FOUND, "SESSION_NOT_FOUND"
    )
    assert await violations(api.chat.UpdateSession(update_request(chat_pb2.Session(), ["title"]))) == {
        "session.id",
        "session.user_id",
    }
    assert await chat_state(api) == before


# ---- DeleteSession and DeleteUser -----------------------------------------------------------------


async def test_delete_session_removes_its_messages(api):
    user = await create_user(api)
    keep = await create_session(api, user.id)
    await append(api, keep, "kept")
    session = await create_session(api, user.id)
    await append(api, session, "one", "two", "three")
    request = chat_pb2.DeleteSessionRequest(request_id=rid(), user_id=user.id, session_id=session.id)

    assert await api.chat.DeleteSession(request) == chat_pb2.DeleteSessionResponse()
    assert await sql(api, "SELECT 1 FROM chat_messages WHERE session_id = %s", (session.id,)) == []
    assert len(await sql(api, "SELECT 1 FROM chat_messages")) == 1
    await expect_error(
        api.chat.GetSession(chat_pb2.GetSessionRequest(user_id=user.id, session_id=session.id)),
        NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    # A replay answers like the first call; a new request for the same session finds nothing.
    assert await api.chat.DeleteSession(request) == chat_pb2.DeleteSessionResponse()
    request.request_id = rid()
    await expect_error(api.chat.DeleteSession(request), NOT_FOUND, "SESSION_NOT_FOUND")
    [event] = await sql(api, "SELECT * FROM audit_events WHERE action = 'chat.DeleteSession'")
    assert event["target_id"] == session.id


async def test_delete_user_removes_their_chats(api):
    user = await create_user(api)
    other = await create_user(api)
    sessions = [await create_session(api, user.id, title=f"s{i}") for i in range(3)]
    for session in sessions:
        await append(api, session, "private words", "more private words")
    theirs = await create_session(api, other.id)
    await append(api, theirs, "private words of someone else")

    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))

    assert await sql(api, "SELECT 1 FROM chat_sessions WHERE user_id = %s", (user.id,)) == []
    assert await sql(api, "SELECT 1 FROM chat_messages WHERE user_id = %s", (user.id,)) == []
    # The stored responses of their chat requests (which repeat content) are gone too.
    leftovers = await sql(
        api, "SELECT method FROM idempotency_keys WHERE user_id = %s AND method LIKE %s", (user.id, "%ChatService%")
    )
    assert leftovers == []
    assert len(await sql(api, "SELECT 1 FROM chat_messages WHERE user_id = %s", (other.id,))) == 1
    for session in sessions:
        await expect_error(
            api.chat.GetSession(chat_pb2.GetSessionRequest(user_id=user.id, session_id=session.id)),
            NOT_FOUND,
            "SESSION_NOT_FOUND",
        )
    await expect_error(
        api.chat.ListSessions(chat_pb2.ListSessionsRequest(user_id=user.id)), NOT_FOUND, "USER_NOT_FOUND"
    )
    await expect_error(
        api.chat.SearchMessages(chat_pb2.SearchMessagesRequest(user_id=user.id, query="private")),
        NOT_FOUND,
        "USER_NOT_FOUND",
    )
    assert len((await get_session(api, theirs)).id) == 36


async def test_create_session_racing_delete_user_leaves_no_orphan(api):
    """CreateSession share-locks the user: a session created while the user is deleted is either
    removed with the user or refused, never left behind."""
    for _ in range(3):
        user = await create_user(api)
        creates = [
            api.chat.CreateSession(chat_pb2.CreateSessionRequest(request_id=rid(), user_id=user.id)) for _ in range(8)
        ]
        delete = api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))
        results = await asyncio.gather(delete, *creates, return_exceptions=True)
        assert not isinstance(results[0], Exception)
        for result in results[1:]:
            if isinstance(result, Exception):
                assert result.code() == NOT_FOUND, result
        assert await sql(api, "SELECT 1 FROM chat_sessions WHERE user_id = %s", (user.id,)) == []


async def test_seed_gives_alice_two_chats_and_seeding_again_changes_nothing(api):
    from qdata_server.seed import seed

    assert await seed(api.server.deps) == 3
    alice = (await api.users.GetUser(user_pb2.GetUserRequest(username="alice"))).user
    listed = (await api.chat.ListSessions(chat_pb2.ListSessionsRequest(user_id=alice.id))).sessions
    assert sorted(s.title for s in listed) == ["A weekend in Lisbon", "Reading a CSV file in Python"]
    trip = next(s for s in listed if s.tags == ["travel"])
    assert (trip.message_count, trip.current_leaf_sequence_number) == (6, 6)
    reply = await api.chat.ListMessages(
        chat_pb2.ListMessagesRequest(user_id=alice.id, session_id=trip.id, scope=chat_pb2.MESSAGE_SCOPE_BRANCH)
    )
    assert [m.sequence_number for m in reply.messages] == [1, 2, 3, 4, 6]
    before = await chat_state(api)
    assert await seed(api.server.deps, only_if_empty=False) == 3  # replays of the same request_ids
    assert await chat_state(api) == before
