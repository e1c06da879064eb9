"""qdata.v1.ChatService: adapters from gRPC calls to the session, message and search functions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from qdata.v1 import chat_pb2, chat_pb2_grpc
from qdata_server.callctx import ServicerContext
from qdata_server.chat import messages, search, sessions, sharing
from qdata_server.chat.importing import run as importing

if TYPE_CHECKING:
    from qdata_server.deps import Deps


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """Each method hands the request to the domain function that owns it."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def CreateSession(
        self, request: chat_pb2.CreateSessionRequest, context: ServicerContext
    ) -> chat_pb2.CreateSessionResponse:
        return await sessions.create_session(self._deps, request)

    async def GetSession(
        self, request: chat_pb2.GetSessionRequest, context: ServicerContext
    ) -> chat_pb2.GetSessionResponse:
        return await sessions.get_session(self._deps, request)

    async def ListSessions(
        self, request: chat_pb2.ListSessionsRequest, context: ServicerContext
    ) -> chat_pb2.ListSessionsResponse:
        return await sessions.list_sessions(self._deps, request)

    async def UpdateSession(
        self, request: chat_pb2.UpdateSessionRequest, context: ServicerContext
    ) -> chat_pb2.UpdateSessionResponse:
        return await sessions.update_session(self._deps, request)

    async def DeleteSession(
        self, request: chat_pb2.DeleteSessionRequest, context: ServicerContext
    ) -> chat_pb2.DeleteSessionResponse:
        return await sessions.delete_session(self._deps, request)

    async def AppendMessages(
        self, request: chat_pb2.AppendMessagesRequest, context: ServicerContext
    ) -> chat_pb2.AppendMessagesResponse:
        return await messages.append_messages(self._deps, request)

    async def ListMessages(
        self, request: chat_pb2.ListMessagesRequest, context: ServicerContext
    ) -> chat_pb2.ListMessagesResponse:
        return await messages.list_messages(self._deps, request)

    async def GetMessage(
        self, request: chat_pb2.GetMessageRequest, context: ServicerContext
    ) -> chat_pb2.GetMessageResponse:
        return await messages.get_message(self._deps, request)

    async def DeleteMessage(
        self, request: chat_pb2.DeleteMessageRequest, context: ServicerContext
    ) -> chat_pb2.DeleteMessageResponse:
        return await messages.delete_message(self._deps, request)

    async def ExportSession(
        self, request: chat_pb2.ExportSessionRequest, context: ServicerContext
    ) -> AsyncIterator[chat_pb2.ExportSessionResponse]:
        async for response in messages.export_session(self._deps, request):
            yield response

    async def SearchMessages(
        self, request: chat_pb2.SearchMessagesRequest, context: ServicerContext
    ) -> chat_pb2.SearchMessagesResponse:
        return await search.search_messages(self._deps, request)

    async def ImportSession(
        self, request: chat_pb2.ImportSessionRequest, context: ServicerContext
    ) -> chat_pb2.ImportSessionResponse:
        return await importing.import_session(self._deps, request)

    async def CreateShareLink(
        self, request: chat_pb2.CreateShareLinkRequest, context: ServicerContext
    ) -> chat_pb2.CreateShareLinkResponse:
        return await sharing.create_share_link(self._deps, request)

    async def ListShareLinks(
        self, request: chat_pb2.ListShareLinksRequest, context: ServicerContext
    ) -> chat_pb2.ListShareLinksResponse:
        return await sharing.list_share_links(self._deps, request)

    async def UpdateShareLink(
        self, request: chat_pb2.UpdateShareLinkRequest, context: ServicerContext
    ) -> chat_pb2.UpdateShareLinkResponse:
        return await sharing.update_share_link(self._deps, request)

    async def RevokeShareLink(
        self, request: chat_pb2.RevokeShareLinkRequest, context: ServicerContext
    ) -> chat_pb2.RevokeShareLinkResponse:
        return await sharing.revoke_share_link(self._deps, request)

    async def GetSharedSession(
        self, request: chat_pb2.GetSharedSessionRequest, context: ServicerContext
    ) -> chat_pb2.GetSharedSessionResponse:
        return await sharing.get_shared_session(self._deps, request)

    async def ListSharedMessages(
        self, request: chat_pb2.ListSharedMessagesRequest, context: ServicerContext
    ) -> chat_pb2.ListSharedMessagesResponse:
        return await sharing.list_shared_messages(self._deps, request)
