"""Every ChatService RPC answers another user's session or message with the same NOT_FOUND as a
missing one, and changes nothing."""

from __future__ import annotations

from google.protobuf import field_mask_pb2

from qdata.v1 import chat_pb2
from tests.support.calls import create_user, error_info, expect_error, rid
from tests.support.chat import NOT_FOUND, append, chat_state, create_session, message
from tests.support.database import sql

LIBRECHAT_EXPORT = b'{"conversationId": "c1", "messages": [{"messageId": "m1", "isCreatedByUser": true, "text": "hi"}]}'


def calls(stub, user_id: str, session_id: str, link_id: str = "", token: str = "") -> dict[str, object]:
    """One call per RPC in which user_id names session_id (and its message 1, and share link_id)."""
    scope = {"user_id": user_id, "session_id": session_id}
    link = chat_pb2.ShareLink(id=link_id or rid(), user_id=user_id)
    return {
        "CreateSession": lambda: stub.CreateSession(chat_pb2.CreateSessionRequest(request_id=rid(), user_id=user_id)),
        "GetSession": lambda: stub.GetSession(chat_pb2.GetSessionRequest(**scope)),
        "ListSessions": lambda: stub.ListSessions(chat_pb2.ListSessionsRequest(user_id=user_id)),
        "UpdateSession": lambda: stub.UpdateSession(
            chat_pb2.UpdateSessionRequest(
                request_id=rid(),
                session=chat_pb2.Session(id=session_id, user_id=user_id, title="taken over"),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            )
        ),
        "DeleteSession": lambda: stub.DeleteSession(chat_pb2.DeleteSessionRequest(request_id=rid(), **scope)),
        "AppendMessages": lambda: stub.AppendMessages(
            chat_pb2.AppendMessagesRequest(request_id=rid(), messages=[message("injected")], **scope)
        ),
        "ListMessages": lambda: stub.ListMessages(chat_pb2.ListMessagesRequest(**scope)),
        "GetMessage": lambda: stub.GetMessage(chat_pb2.GetMessageRequest(sequence_number=1, **scope)),
        "DeleteMessage": lambda: stub.DeleteMessage(
            chat_pb2.DeleteMessageRequest(request_id=rid(), sequence_number=1, **scope)
        ),
        "ExportSession": lambda: _drain(stub.ExportSession(chat_pb2.ExportSessionRequest(**scope))),
        "SearchMessages": lambda: stub.SearchMessages(
            chat_pb2.SearchMessagesRequest(user_id=user_id, query="secret", session_id=session_id)
        ),
        # Names only a user, like CreateSession: the imported session is the user's own.
        "ImportSession": lambda: stub.ImportSession(
            chat_pb2.ImportSessionRequest(
                request_id=rid(), user_id=user_id, format=chat_pb2.IMPORT_FORMAT_LIBRECHAT, data=LIBRECHAT_EXPORT
            )
        ),
        "CreateShareLink": lambda: stub.CreateShareLink(
            chat_pb2.CreateShareLinkRequest(request_id=rid(), scope=chat_pb2.SHARE_SCOPE_ALL_BRANCHES, **scope)
        ),
        "ListShareLinks": lambda: stub.ListShareLinks(chat_pb2.ListShareLinksRequest(**scope)),
        "UpdateShareLink": lambda: stub.UpdateShareLink(
            chat_pb2.UpdateShareLinkRequest(
                request_id=rid(), share_link=link, update_mask=field_mask_pb2.FieldMask(paths=["expire_time"])
            )
        ),
        "RevokeShareLink": lambda: stub.RevokeShareLink(
            chat_pb2.RevokeShareLinkRequest(request_id=rid(), user_id=user_id, share_link_id=link.id)
        ),
        # The token's side names no user: a token opens its own link only (test_chat_share_links.py).
        "GetSharedSession": lambda: stub.GetSharedSession(chat_pb2.GetSharedSessionRequest(token=token or rid())),
        "ListSharedMessages": lambda: stub.ListSharedMessages(chat_pb2.ListSharedMessagesRequest(token=token or rid())),
    }


# The RPCs that name a share link, not a session: another user's link is their NOT_FOUND.
_LINK_RPCS = {"UpdateShareLink", "RevokeShareLink", "GetSharedSession", "ListSharedMessages"}


async def _drain(stream) -> list:
    return [item async for item in stream]


async def test_another_users_session_is_not_found_for_every_rpc(api):
    alice = await create_user(api)
    mallory = await create_user(api)
    session = await create_session(api, alice.id, title="alice's")
    await append(api, session, "a secret only alice knows")
    await create_session(api, mallory.id)
    shared = await api.chat.CreateShareLink(
        chat_pb2.CreateShareLinkRequest(
            request_id=rid(), user_id=alice.id, session_id=session.id, scope=chat_pb2.SHARE_SCOPE_ALL_BRANCHES
        )
    )
    before = await chat_state(api)
    methods = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].methods_by_name

    by_mallory = calls(api.chat, mallory.id, session.id, shared.share_link.id)
    missing = calls(api.chat, alice.id, rid())
    assert set(by_mallory) == set(methods)  # every RPC is covered
    for name in methods:
        if name in ("CreateSession", "ListSessions", "ImportSession"):
            continue  # these name only a user; see below
        reason = "SHARE_LINK_NOT_FOUND" if name in _LINK_RPCS else "SESSION_NOT_FOUND"
        foreign = await expect_error(by_mallory[name](), NOT_FOUND, reason)
        absent = await expect_error(missing[name](), NOT_FOUND, reason)
        # Indistinguishable: same code, reason and message.
        assert (foreign.details(), error_info(foreign)) == (absent.details(), error_info(absent)), name

    # Listing and searching as mallory shows none of alice's sessions or messages.
    listed = await api.chat.ListSessions(
        chat_pb2.ListSessionsRequest(user_id=mallory.id, archive_filter=chat_pb2.ARCHIVE_FILTER_INCLUDE)
    )
    assert session.id not in [s.id for s in listed.sessions]
    searched = await api.chat.SearchMessages(chat_pb2.SearchMessagesRequest(user_id=mallory.id, query="secret"))
    assert searched.hits == []
    # Nothing of alice's changed (mallory's failed writes left no trace either).
    after = await chat_state(api)
    assert after == before
    # A user that does not exist gets USER_NOT_FOUND where a call names only a user.
    nobody = calls(api.chat, rid(), session.id)
    for name in ("CreateSession", "ListSessions", "SearchMessages", "ImportSession"):
        await expect_error(nobody[name](), NOT_FOUND, "USER_NOT_FOUND")
    assert len(await sql(api, "SELECT 1 FROM chat_messages")) == 1
