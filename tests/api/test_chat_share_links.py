"""Chat share links over real gRPC against the real database: the token kept only as a digest, the
snapshot boundary, both scopes on a branched session, deletion reaching every link at once, one
NOT_FOUND for a revoked, expired or never-issued token, private tool-call arguments, idempotency,
bad input, the row-security policies of the token path, and a chat.shared.read token that can call
nothing else (the RPC list taken from the contract's descriptors)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import hashlib
import uuid
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2, message_factory, timestamp_pb2
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from qdata.v1 import chat_pb2, user_pb2
from qdata_server import auth
from qdata_server.db import transactions
from tests.support.calls import create_user, error_info, expect_error, field_violations, rid
from tests.support.chat import ASSISTANT, EXISTS, INVALID, NOT_FOUND, append, create_session, message
from tests.support.database import sql, table_rows
from tests.support.server import TEST_SETTINGS, serving_url

BRANCH = chat_pb2.SHARE_SCOPE_CURRENT_BRANCH
ALL = chat_pb2.SHARE_SCOPE_ALL_BRANCHES
STATE_TABLES = ("chat_share_links", "chat_sessions", "chat_messages", "audit_events", "idempotency_keys")


# ---- helpers -----------------------------------------------------------------------------------


def create_request(session: chat_pb2.Session, scope: int = ALL, **fields: Any) -> chat_pb2.CreateShareLinkRequest:
    values: dict[str, Any] = {"request_id": rid(), "user_id": session.user_id, "session_id": session.id}
    values.update(fields)
    return chat_pb2.CreateShareLinkRequest(scope=scope, **values)


async def share(api, session: chat_pb2.Session, scope: int = ALL, **fields: Any) -> chat_pb2.CreateShareLinkResponse:
    return await api.chat.CreateShareLink(create_request(session, scope, **fields))


async def shared_pages(api, token: str, page_size: int = 0) -> list[list[int]]:
    """The sequence numbers of every page ListSharedMessages returns, following the tokens."""
    found, page_token = [], ""
    while True:
        reply = await api.chat.ListSharedMessages(
            chat_pb2.ListSharedMessagesRequest(token=token, page_size=page_size, page_token=page_token)
        )
        found.append([m.sequence_number for m in reply.messages])
        page_token = reply.next_page_token
        if not page_token:
            return found
        assert len(found) < 1000, "pagination does not end"


async def shared(api, token: str) -> list[int]:
    return [n for page in await shared_pages(api, token) for n in page]


async def answer(call) -> tuple[str, str, str, dict[str, str]]:
    """(code, message, reason, metadata) of a call that must fail."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        info = error_info(error)
        return error.code().name, error.details() or "", info.reason, dict(info.metadata)
    raise AssertionError("the call succeeded")


async def refuse_token(api, token: str) -> list[tuple[str, str, str, dict[str, str]]]:
    """The answers of both token RPCs for token: each must be the one SHARE_LINK_NOT_FOUND."""
    answers = [
        await answer(api.chat.GetSharedSession(chat_pb2.GetSharedSessionRequest(token=token))),
        await answer(api.chat.ListSharedMessages(chat_pb2.ListSharedMessagesRequest(token=token))),
    ]
    for code, _, reason, _ in answers:
        assert (code, reason) == ("NOT_FOUND", "SHARE_LINK_NOT_FOUND")
    return answers


def future(hours: float = 1.0) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=hours))
    return stamp


async def age_links(api, seconds: float) -> None:
    """Moves every link's expiry `seconds` into the past, as if that much time had passed.

    Expiry is compared with the database's now() in SQL on every path; moving the rows, not the
    clock, lets a test see a link expire without sleeping (tests/support/ledger.py's age_holds does
    the same for holds).
    """
    await sql(
        api,
        "UPDATE chat_share_links SET expire_at = expire_at - make_interval(secs => %(s)s) WHERE expire_at IS NOT NULL",
        {"s": seconds},
    )


async def branched(api) -> tuple[chat_pb2.Session, dict[str, list[int]]]:
    """A session 1-2-3 with an edit of 2 (1-4-5), current leaf 5."""
    user = await create_user(api)
    session = await create_session(api, user.id, title="trip planning")
    await append(api, session, "one", "two", "three")
    await append(api, session, "four", "five", parent=1)
    return session, {"first": [1, 2, 3], "current": [1, 4, 5]}


async def every_row_text(api) -> str:
    """Every row of every table in the schema (the usage partitions too), as text."""
    tables = await sql(
        api,
        "SELECT n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname IN (current_schema(), 'usage_partitions')",
    )
    assert {"chat_share_links", "idempotency_keys", "audit_events"} <= {t["name"] for t in tables}
    parts = []
    for table in tables:
        rows = await sql(
            api,
            pgsql.SQL("SELECT t::text AS row FROM {} t").format(pgsql.Identifier(table["schema"], table["name"])),
        )
        parts += [r["row"] for r in rows]
    return "\n".join(parts)


# ---- the token ---------------------------------------------------------------------------------


async def test_the_token_is_stored_only_as_its_digest(api):
    user = await create_user(api)
    session = await create_session(api, user.id)
    await append(api, session, "hello")
    request = create_request(session, ALL, expire_time=future())
    created = await api.chat.CreateShareLink(request)
    token = created.token
    assert token.startswith("qds_") and len(base64.urlsafe_b64decode(token[4:] + "=")) == 32
    assert await shared(api, token) == [1]

    raw = base64.urlsafe_b64decode(token[4:] + "=")
    encodings = {
        "text": token,
        "text without prefix": token[4:],
        "text as hex": token.encode().hex(),
        "text as base64": base64.b64encode(token.encode()).decode(),
        "random bytes as hex": raw.hex(),
        "random bytes as base64": base64.b64encode(raw).decode().rstrip("="),
    }
    everything = await every_row_text(api)
    for name, encoded in encodings.items():
        assert encoded not in everything, f"the token's {name} is in the database"
        assert encoded.lower() not in everything.lower(), f"the token's {name} is in the database"
    (row,) = await sql(api, "SELECT token_digest FROM chat_share_links")
    assert bytes(row["token_digest"]) == hashlib.sha256(token.encode()).digest()

    # A replay returns the same link and no token (the database has none to return).
    replay = await api.chat.CreateShareLink(request)
    assert replay.share_link == created.share_link and replay.token == ""
    assert len(await sql(api, "SELECT share_link_id FROM chat_share_links")) == 1
    assert token not in await every_row_text(api)


async def test_the_digest_lookup_uses_the_unique_index(api):
    plan = await sql(
        api,
        "EXPLAIN (FORMAT TEXT) SELECT share_link_id FROM chat_share_links WHERE token_digest = %(d)s",
        {"d": b"\x00" * 32},
    )
    text = " ".join(r["QUERY PLAN"] for r in plan)
    assert "chat_share_links_token_digest_key" in text, text


# ---- snapshot and scopes -----------------------------------------------------------------------


async def test_a_link_shares_the_session_up_to_its_newest_message_at_creation(api):
    user = await create_user(api)
    session = await create_session(api, user.id, title="recipes", metadata={"k": "secret-metadata"}, tags=["food"])
    await append(api, session, "one", "two", "three")
    created = await share(api, session, ALL)
    link = created.share_link
    assert (link.snapshot_sequence_number, link.leaf_sequence_number, link.scope) == (3, 0, ALL)
    await append(api, session, "four")
    assert await shared(api, created.token) == [1, 2, 3]

    reply = await api.chat.GetSharedSession(chat_pb2.GetSharedSessionRequest(token=created.token))
    assert (reply.session.title, reply.session.scope) == ("recipes", ALL)
    assert not reply.session.HasField("expire_time")
    pages = await api.chat.ListSharedMessages(chat_pb2.ListSharedMessagesRequest(token=created.token))
    for response in (reply, pages):
        encoded = response.SerializeToString()
        for secret in (user.id, session.id, link.id, "secret-metadata", "food"):
            assert secret.encode() not in encoded, f"{secret} in {type(response).__name__}"

    # The owner moves the snapshot: the message appended since is shared too, the token unchanged.
    moved = await api.chat.UpdateShareLink(
        chat_pb2.UpdateShareLinkRequest(
            request_id=rid(),
            share_link=chat_pb2.ShareLink(id=link.id, user_id=user.id),
            update_mask=field_mask_pb2.FieldMask(paths=["snapshot_sequence_number"]),
        )
    )
    assert moved.share_link.snapshot_sequence_number == 4
    assert await shared(api, created.token) == [1, 2, 3, 4]


async def test_both_scopes_on_a_branched_session(api):
    session, branches = await branched(api)
    on_branch = await share(api, session, BRANCH)
    everything = await share(api, session, ALL)
    assert on_branch.share_link.leaf_sequence_number == 5
    assert await shared(api, on_branch.token) == branches["current"]
    assert await shared(api, everything.token) == [1, 2, 3, 4, 5]

    # The user switches back to the first branch and goes on there: neither link changes.
    await api.chat.UpdateSession(
        chat_pb2.UpdateSessionRequest(
            request_id=rid(),
            session=chat_pb2.Session(id=session.id, user_id=session.user_id, current_leaf_sequence_number=3),
            update_mask=field_mask_pb2.FieldMask(paths=["current_leaf_sequence_number"]),
        )
    )
    await append(api, session, "six")
    assert await shared(api, on_branch.token) == branches["current"]
    assert await shared(api, everything.token) == [1, 2, 3, 4, 5]

    # Moving the branch link's snapshot follows the session's current leaf now.
    for created in (on_branch, everything):
        await api.chat.UpdateShareLink(
            chat_pb2.UpdateShareLinkRequest(
                request_id=rid(),
                share_link=chat_pb2.ShareLink(id=created.share_link.id, user_id=session.user_id),
                update_mask=field_mask_pb2.FieldMask(paths=["snapshot_sequence_number"]),
            )
        )
    assert await shared(api, on_branch.token) == [1, 2, 3, 6]
    assert await shared(api, everything.token) == [1, 2, 3, 4, 5, 6]


async def test_shared_messages_page_through_the_snapshot(api):
    user = await create_user(api)
    session = await create_session(api, user.id)
    await append(api, session, *[f"m{i}" for i in range(1, 8)])
    for scope in (ALL, BRANCH):
        created = await share(api, session, scope)
        assert await shared_pages(api, created.token, page_size=3) == [[1, 2, 3], [4, 5, 6], [7]]


# ---- deletion ----------------------------------------------------------------------------------


async def test_deleting_a_message_the_session_or_the_user_reaches_every_link_at_once(api):
    session, _ = await branched(api)
    links = [await share(api, session, BRANCH), await share(api, session, ALL), await share(api, session, ALL)]
    await api.chat.DeleteMessage(
        chat_pb2.DeleteMessageRequest(
            request_id=rid(), user_id=session.user_id, session_id=session.id, sequence_number=4
        )
    )
    assert await shared(api, links[0].token) == [1, 5]
    for created in links[1:]:
        assert await shared(api, created.token) == [1, 2, 3, 5]

    never = await refuse_token(api, "qds_" + "x" * 43)
    await api.chat.DeleteSession(
        chat_pb2.DeleteSessionRequest(request_id=rid(), user_id=session.user_id, session_id=session.id)
    )
    for created in links:
        assert await refuse_token(api, created.token) == never
    assert await sql(api, "SELECT share_link_id FROM chat_share_links") == []

    # Deleting the user: every link to every session of theirs answers as if it never existed.
    user = await create_user(api)
    sessions = [await create_session(api, user.id) for _ in range(2)]
    for s in sessions:
        await append(api, s, "hello")
    tokens = [(await share(api, s, scope)).token for s in sessions for scope in (ALL, BRANCH)]
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))
    for token in tokens:
        assert await refuse_token(api, token) == never


# ---- one answer for every token that opens nothing ---------------------------------------------


async def test_revoked_expired_and_unknown_tokens_get_the_same_answer_at_once(api):
    user = await create_user(api)
    session = await create_session(api, user.id)
    await append(api, session, "hello")
    revoked = await share(api, session)
    expiring = await share(api, session, expire_time=future(hours=1))
    assert await shared(api, revoked.token) == [1] and await shared(api, expiring.token) == [1]

    revoke = chat_pb2.RevokeShareLinkRequest(request_id=rid(), user_id=user.id, share_link_id=revoked.share_link.id)
    reply = await api.chat.RevokeShareLink(revoke)
    assert reply.share_link.HasField("revoke_time")
    # Revocation holds from the moment the call returns; the other link is untouched.
    await refuse_token(api, revoked.token)
    assert await shared(api, expiring.token) == [1]
    # An hour and a second later by the database's clock.
    await age_links(api, 3601)
    never = await refuse_token(api, "qds_" + base64.urlsafe_b64encode(uuid.uuid4().bytes * 2).decode().rstrip("="))
    assert await refuse_token(api, revoked.token) == never
    assert await refuse_token(api, expiring.token) == never
    assert await refuse_token(api, "not even the shape of a token") == never
    # The owner still sees both, with their times.
    listed = await api.chat.ListShareLinks(chat_pb2.ListShareLinksRequest(user_id=user.id))
    by_id = {link.id: link for link in listed.share_links}
    assert by_id[revoked.share_link.id].HasField("revoke_time")
    assert by_id[expiring.share_link.id].expire_time.ToDatetime(datetime.UTC) < datetime.datetime.now(datetime.UTC)
    # Revoking again changes nothing; a revoked link cannot be updated back to life.
    again = await api.chat.RevokeShareLink(
        chat_pb2.RevokeShareLinkRequest(request_id=rid(), user_id=user.id, share_link_id=revoked.share_link.id)
    )
    assert again.share_link == reply.share_link
    await expect_error(
        api.chat.UpdateShareLink(
            chat_pb2.UpdateShareLinkRequest(
                request_id=rid(),
                share_link=chat_pb2.ShareLink(id=revoked.share_link.id, user_id=user.id),
                update_mask=field_mask_pb2.FieldMask(paths=["expire_time"]),
            )
        ),
        NOT_FOUND,
        "SHARE_LINK_NOT_FOUND",
    )
    # An expired link the owner extends works again.
    await api.chat.UpdateShareLink(
        chat_pb2.UpdateShareLinkRequest(
            request_id=rid(),
            share_link=chat_pb2.ShareLink(id=expiring.share_link.id, user_id=user.id, expire_time=future(hours=2)),
            update_mask=field_mask_pb2.FieldMask(paths=["expire_time"]),
        )
    )
    assert await shared(api, expiring.token) == [1]
    # Clearing the expiry (the path named, the field unset) makes the link last until revoked.
    cleared = await api.chat.UpdateShareLink(
        chat_pb2.UpdateShareLinkRequest(
            request_id=rid(),
            share_link=chat_pb2.ShareLink(id=expiring.share_link.id, user_id=user.id),
            update_mask=field_mask_pb2.FieldMask(paths=["expire_time"]),
        )
    )
    assert not cleared.share_link.HasField("expire_time")
    await age_links(api, 10 * 365 * 86400)
    assert await shared(api, expiring.token) == [1]


# ---- private tool-call arguments ---------------------------------------------------------------


async def test_private_tool_call_arguments_are_not_shared(api):
    user = await create_user(api)
    session = await create_session(api, user.id)
    calls = [
        chat_pb2.ToolCall(id="call_1", name="lookup_account", arguments_json='{"iban": "DE89-private"}', private=True),
        chat_pb2.ToolCall(id="call_2", name="weather", arguments_json='{"city": "Paris"}'),
    ]
    await append(api, session, "what now?", message("", ASSISTANT, tool_calls=calls))
    owner = await api.chat.GetMessage(
        chat_pb2.GetMessageRequest(user_id=user.id, session_id=session.id, sequence_number=2)
    )
    assert list(owner.message.tool_calls) == calls

    created = await share(api, session)
    reply = await api.chat.ListSharedMessages(chat_pb2.ListSharedMessagesRequest(token=created.token))
    assert list(reply.messages[1].tool_calls) == [
        chat_pb2.ToolCall(id="call_1", name="lookup_account", arguments_json="", private=True),
        chat_pb2.ToolCall(id="call_2", name="weather", arguments_json='{"city": "Paris"}'),
    ]
    assert b"DE89-private" not in reply.SerializeToString()


# ---- idempotency -------------------------------------------------------------------------------


async def test_every_share_link_mutation_replays_and_refuses_a_reused_request_id(api):
    user = await create_user(api)
    session = await create_session(api, user.id)
    await append(api, session, "hello")
    request = create_request(session, BRANCH)
    first = await api.chat.CreateShareLink(request)
    assert first.token
    reused = chat_pb2.CreateShareLinkRequest()
    reused.CopyFrom(request)
    reused.scope = ALL
    await expect_error(api.chat.CreateShareLink(reused), EXISTS, "REQUEST_ID_REUSED")

    link_id = first.share_link.id
    update = chat_pb2.UpdateShareLinkRequest(
        request_id=rid(),
        share_link=chat_pb2.ShareLink(id=link_id, user_id=user.id, expire_time=future()),
        update_mask=field_mask_pb2.FieldMask(paths=["expire_time"]),
    )
    revoke = chat_pb2.RevokeShareLinkRequest(request_id=rid(), user_id=user.id, share_link_id=link_id)
    for call, req in ((api.chat.UpdateShareLink, update), (api.chat.RevokeShareLink, revoke)):
        once = await call(req)
        audits = await sql(api, "SELECT count(*) AS n FROM audit_events")
        assert await call(req) == once
        assert await sql(api, "SELECT count(*) AS n FROM audit_events") == audits
    await expect_error(
        api.chat.RevokeShareLink(
            chat_pb2.RevokeShareLinkRequest(
                request_id=revoke.request_id, user_id=user.id, share_link_id=str(uuid.uuid4())
            )
        ),
        EXISTS,
        "REQUEST_ID_REUSED",
    )
    actions = await sql(
        api, "SELECT action FROM audit_events WHERE target_type = 'chat_share_link' ORDER BY audit_event_id"
    )
    assert [a["action"] for a in actions] == ["chat.CreateShareLink", "chat.UpdateShareLink", "chat.RevokeShareLink"]


async def test_concurrent_replays_create_one_link_and_hand_its_token_out_once(api):
    user = await create_user(api)
    session = await create_session(api, user.id)
    await append(api, session, "hello")
    request = create_request(session, ALL)
    replies = await asyncio.gather(*(api.chat.CreateShareLink(request) for _ in range(8)))
    assert len({r.share_link.id for r in replies}) == 1
    tokens = [r.token for r in replies if r.token]
    assert len(tokens) == 1
    assert await shared(api, tokens[0]) == [1]
    assert len(await sql(api, "SELECT share_link_id FROM chat_share_links")) == 1


# ---- bad input ---------------------------------------------------------------------------------


async def test_bad_input_is_refused_with_field_violations_and_changes_nothing(api):
    user = await create_user(api)
    other = await create_user(api)
    session = await create_session(api, user.id)
    await append(api, session, "hello")
    first = await share(api, session)
    second = await share(api, session)
    page = await api.chat.ListSharedMessages(chat_pb2.ListSharedMessagesRequest(token=first.token, page_size=1))
    assert page.next_page_token == ""
    await append(api, session, "again")
    for created in (first, second):
        await api.chat.UpdateShareLink(
            chat_pb2.UpdateShareLinkRequest(
                request_id=rid(),
                share_link=chat_pb2.ShareLink(id=created.share_link.id, user_id=user.id),
                update_mask=field_mask_pb2.FieldMask(paths=["snapshot_sequence_number"]),
            )
        )
    page = await api.chat.ListSharedMessages(chat_pb2.ListSharedMessagesRequest(token=first.token, page_size=1))
    assert page.next_page_token
    before = await table_rows(api, *STATE_TABLES)

    past = timestamp_pb2.Timestamp()
    past.FromDatetime(datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1))
    cases: list[tuple[Any, Any, set[str]]] = [
        (api.chat.CreateShareLink, create_request(session, ALL, expire_time=past), {"expire_time"}),
        (api.chat.CreateShareLink, create_request(session, chat_pb2.SHARE_SCOPE_UNSPECIFIED), {"scope"}),
        (api.chat.CreateShareLink, create_request(session, 7), {"scope"}),
        (
            api.chat.CreateShareLink,
            chat_pb2.CreateShareLinkRequest(request_id=rid(), user_id="nope", session_id="", scope=ALL),
            {"user_id", "session_id"},
        ),
        (
            api.chat.ListSharedMessages,
            chat_pb2.ListSharedMessagesRequest(token=second.token, page_token=page.next_page_token),
            {"page_token"},
        ),
        (
            api.chat.ListSharedMessages,
            chat_pb2.ListSharedMessagesRequest(token="", page_size=-1),
            {"token", "page_size"},
        ),
        (api.chat.GetSharedSession, chat_pb2.GetSharedSessionRequest(token=""), {"token"}),
        (api.chat.ListShareLinks, chat_pb2.ListShareLinksRequest(user_id=user.id, page_size=-1), {"page_size"}),
        (
            api.chat.UpdateShareLink,
            chat_pb2.UpdateShareLinkRequest(
                request_id=rid(),
                share_link=chat_pb2.ShareLink(id=first.share_link.id, user_id=user.id),
                update_mask=field_mask_pb2.FieldMask(paths=["scope"]),
            ),
            {"update_mask"},
        ),
        (
            api.chat.UpdateShareLink,
            chat_pb2.UpdateShareLinkRequest(
                request_id=rid(),
                share_link=chat_pb2.ShareLink(id=first.share_link.id, user_id=user.id, expire_time=past),
                update_mask=field_mask_pb2.FieldMask(paths=["expire_time"]),
            ),
            {"share_link.expire_time"},
        ),
        (
            api.chat.RevokeShareLink,
            chat_pb2.RevokeShareLinkRequest(request_id=rid(), user_id=user.id, share_link_id="x"),
            {"share_link_id"},
        ),
    ]
    for call, request, fields in cases:
        error = await expect_error(call(request), INVALID, "INVALID_ARGUMENT")
        assert set(field_violations(error)) == fields, request
    # A page token of another link is refused even though both links are live and alike.
    assert (
        "issued for different filters"
        in field_violations(
            await expect_error(
                api.chat.ListSharedMessages(
                    chat_pb2.ListSharedMessagesRequest(token=second.token, page_token=page.next_page_token)
                ),
                INVALID,
            )
        )["page_token"]
    )

    # Unknown session, another user's session, another user's link.
    for request in (
        chat_pb2.CreateShareLinkRequest(request_id=rid(), user_id=user.id, session_id=str(uuid.uuid4()), scope=ALL),
        chat_pb2.CreateShareLinkRequest(request_id=rid(), user_id=other.id, session_id=session.id, scope=ALL),
    ):
        await expect_error(api.chat.CreateShareLink(request), NOT_FOUND, "SESSION_NOT_FOUND")
    for request in (
        chat_pb2.RevokeShareLinkRequest(request_id=rid(), user_id=other.id, share_link_id=first.share_link.id),
        chat_pb2.RevokeShareLinkRequest(request_id=rid(), user_id=user.id, share_link_id=str(uuid.uuid4())),
    ):
        await expect_error(api.chat.RevokeShareLink(request), NOT_FOUND, "SHARE_LINK_NOT_FOUND")
    await expect_error(
        api.chat.ListShareLinks(chat_pb2.ListShareLinksRequest(user_id=str(uuid.uuid4()))), NOT_FOUND, "USER_NOT_FOUND"
    )
    assert await table_rows(api, *STATE_TABLES) == before


# ---- listing -----------------------------------------------------------------------------------


async def test_list_share_links_pages_newest_first_per_user_and_session(api):
    user = await create_user(api)
    other = await create_user(api)
    sessions = [await create_session(api, user.id) for _ in range(2)]
    made = [(await share(api, sessions[i % 2])).share_link for i in range(5)]
    await share(api, await create_session(api, other.id))

    def listing(**fields: Any) -> chat_pb2.ListShareLinksRequest:
        return chat_pb2.ListShareLinksRequest(user_id=user.id, page_size=2, **fields)

    async def every(**fields: Any) -> list[str]:
        found, token = [], ""
        while True:
            reply = await api.chat.ListShareLinks(listing(page_token=token, **fields))
            found += [link.id for link in reply.share_links]
            token = reply.next_page_token
            if not token:
                return found

    assert await every() == [link.id for link in reversed(made)]
    assert await every(session_id=sessions[0].id) == [made[4].id, made[2].id, made[0].id]
    first = await api.chat.ListShareLinks(listing())
    await expect_error(
        api.chat.ListShareLinks(listing(session_id=sessions[0].id, page_token=first.next_page_token)), INVALID
    )


# ---- row security on the token path -------------------------------------------------------------


async def test_the_token_path_sees_only_its_links_session_up_to_the_snapshot(api):
    session, _ = await branched(api)
    other_session = await create_session(api, session.user_id)
    await append(api, other_session, "not shared")
    created = await share(api, session, BRANCH)
    await share(api, other_session)
    await append(api, session, "after the snapshot")
    revoked = await share(api, session)
    await api.chat.RevokeShareLink(
        chat_pb2.RevokeShareLinkRequest(request_id=rid(), user_id=session.user_id, share_link_id=revoked.share_link.id)
    )

    async def seen(token: str, table: str) -> list[dict[str, Any]]:
        """`SELECT * FROM table`, no WHERE, as the serving role on the token path for token."""
        async with await psycopg.AsyncConnection.connect(serving_url(api.database_url), row_factory=dict_row) as conn:
            async with conn.transaction():
                await transactions.name_acting(conn, transactions.Acting())  # as sharing.py: nobody
                digest = hashlib.sha256(token.encode()).hexdigest()
                await conn.execute("SELECT set_config('qdata.share_token_digest', %s, true)", [digest])
                cur = await conn.execute(pgsql.SQL("SELECT * FROM {}").format(pgsql.Identifier(table)))
                rows = await cur.fetchall()
                cur = await conn.execute("UPDATE chat_messages SET content = 'changed'")
                assert cur.rowcount == 0
                return rows

    links = await seen(created.token, "chat_share_links")
    assert [r["share_link_id"] for r in links] == [uuid.UUID(created.share_link.id)]
    assert [str(r["session_id"]) for r in await seen(created.token, "chat_sessions")] == [session.id]
    messages = await seen(created.token, "chat_messages")
    assert sorted(r["sequence_number"] for r in messages) == [1, 2, 3, 4, 5]
    assert {str(r["session_id"]) for r in messages} == {session.id}
    for table in ("users", "audit_events", "idempotency_keys", "ledger_accounts"):
        assert await seen(created.token, table) == [], table
    for token in (revoked.token, "qds_unknown"):
        for table in ("chat_share_links", "chat_sessions", "chat_messages"):
            assert await seen(token, table) == [], (token, table)


# ---- permissions (a server that requires caller tokens) ----------------------------------------

SHARE_PAGE_TOKEN = "qdt_share-page-" + uuid.uuid4().hex
CHAT_READER_TOKEN = "qdt_chat-reader-" + uuid.uuid4().hex
CHAT_FAMILY_TOKEN = "qdt_chat-family-" + uuid.uuid4().hex
ADMIN_TOKEN = "qdt_admin-" + uuid.uuid4().hex
AUTH_SETTINGS = dataclasses.replace(
    TEST_SETTINGS,
    allow_insecure=False,
    auth_tokens=auth.parse_tokens(
        "\n".join(
            [
                f"share-page {auth.hash_token(SHARE_PAGE_TOKEN)} chat.shared.read",
                f"chat-reader {auth.hash_token(CHAT_READER_TOKEN)} chat.read",
                f"chat-family {auth.hash_token(CHAT_FAMILY_TOKEN)} chat.*",
                f"admin {auth.hash_token(ADMIN_TOKEN)} *",
            ]
        ),
        "test",
    ),
)


async def call_with(
    channel: grpc.aio.Channel, service, method, token: str, request=None
) -> grpc.aio.AioRpcError | None:
    """Calls one RPC (any streaming shape) with an empty request or the one given; the error or None."""
    path = f"/{service.full_name}/{method.name}"
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    kwargs = {"request_serializer": request_type.SerializeToString, "response_deserializer": response_type.FromString}
    options = {"metadata": (("authorization", f"Bearer {token}"),), "timeout": 20}
    request = request if request is not None else request_type()
    try:
        if method.client_streaming and method.server_streaming:
            async for _ in channel.stream_stream(path, **kwargs)(iter([request]), **options):
                pass
        elif method.client_streaming:
            await channel.stream_unary(path, **kwargs)(iter([request]), **options)
        elif method.server_streaming:
            async for _ in channel.unary_stream(path, **kwargs)(request, **options):
                pass
        else:
            await channel.unary_unary(path, **kwargs)(request, **options)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


@pytest.mark.parametrize("token", [SHARE_PAGE_TOKEN], ids=["chat.shared.read only"])
async def test_a_share_page_token_can_call_the_shared_views_and_nothing_else(module_server, token):
    secured = await module_server.api(AUTH_SETTINGS)
    chat_service = chat_pb2.DESCRIPTOR.services_by_name["ChatService"]
    # The owner's side, with a token that may: a link to open.
    name = f"user{uuid.uuid4().hex[:10]}"
    user = user_pb2.CreateUserRequest(
        request_id=rid(), email=f"{name}@example.com", username=name, password="correct horse battery staple"
    )
    made = await secured.users.CreateUser(user, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))
    session = await secured.chat.CreateSession(
        chat_pb2.CreateSessionRequest(request_id=rid(), user_id=made.user.id),
        metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
    )
    owner = create_request(session.session, ALL)
    created = await secured.chat.CreateShareLink(owner, metadata=(("authorization", f"Bearer {CHAT_FAMILY_TOKEN}"),))

    allowed, denied = [], []
    for service in auth.SERVICE_DESCRIPTORS:
        for method in service.methods:
            error = await call_with(secured.channel, service, method, token)
            path = f"/{service.full_name}/{method.name}"
            if error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED:
                assert error_info(error).reason == "MISSING_PERMISSION"
                denied.append(path)
            else:
                allowed.append(path)
    shared_views = {f"/qdata.v1.ChatService/{name}" for name in ("GetSharedSession", "ListSharedMessages")}
    assert set(allowed) == shared_views
    assert len(denied) == len(auth.PERMISSIONS) - 2

    # With a real token the views answer; chat.read alone does not reach them, chat.* does.
    get = chat_service.methods_by_name["GetSharedSession"]
    request = chat_pb2.GetSharedSessionRequest(token=created.token)
    assert await call_with(secured.channel, chat_service, get, token, request) is None
    assert await call_with(secured.channel, chat_service, get, CHAT_FAMILY_TOKEN, request) is None
    error = await call_with(secured.channel, chat_service, get, CHAT_READER_TOKEN, request)
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
