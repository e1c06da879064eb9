"""qdata.v1.UserService: adapters from gRPC calls to the account, preference, API key vault
and audit functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qdata.v1 import user_pb2, user_pb2_grpc
from qdata_server.callctx import ServicerContext
from qdata_server.users import accounts, api_keys, audit_events, login, preferences

if TYPE_CHECKING:
    from qdata_server.deps import Deps


class UserServicer(user_pb2_grpc.UserServiceServicer):
    """Each method hands the request to the domain function that owns it."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def CreateUser(
        self, request: user_pb2.CreateUserRequest, context: ServicerContext
    ) -> user_pb2.CreateUserResponse:
        return await accounts.create_user(self._deps, request)

    async def GetUser(self, request: user_pb2.GetUserRequest, context: ServicerContext) -> user_pb2.GetUserResponse:
        return await accounts.get_user(self._deps, request)

    async def ListUsers(
        self, request: user_pb2.ListUsersRequest, context: ServicerContext
    ) -> user_pb2.ListUsersResponse:
        return await accounts.list_users(self._deps, request)

    async def UpdateUser(
        self, request: user_pb2.UpdateUserRequest, context: ServicerContext
    ) -> user_pb2.UpdateUserResponse:
        return await accounts.update_user(self._deps, request)

    async def DeleteUser(
        self, request: user_pb2.DeleteUserRequest, context: ServicerContext
    ) -> user_pb2.DeleteUserResponse:
        return await accounts.delete_user(self._deps, request)

    async def ImportUsers(
        self, request: user_pb2.ImportUsersRequest, context: ServicerContext
    ) -> user_pb2.ImportUsersResponse:
        return await accounts.import_users(self._deps, request)

    async def Authenticate(
        self, request: user_pb2.AuthenticateRequest, context: ServicerContext
    ) -> user_pb2.AuthenticateResponse:
        return await login.authenticate(self._deps, request)

    async def ChangePassword(
        self, request: user_pb2.ChangePasswordRequest, context: ServicerContext
    ) -> user_pb2.ChangePasswordResponse:
        return await login.change_password(self._deps, request)

    async def GetPreferences(
        self, request: user_pb2.GetPreferencesRequest, context: ServicerContext
    ) -> user_pb2.GetPreferencesResponse:
        return await preferences.get_preferences(self._deps, request)

    async def UpdatePreferences(
        self, request: user_pb2.UpdatePreferencesRequest, context: ServicerContext
    ) -> user_pb2.UpdatePreferencesResponse:
        return await preferences.update_preferences(self._deps, request)

    async def ListAuditEvents(
        self, request: user_pb2.ListAuditEventsRequest, context: ServicerContext
    ) -> user_pb2.ListAuditEventsResponse:
        return await audit_events.list_audit_events(self._deps, request)

    async def CreateApiKey(
        self, request: user_pb2.CreateApiKeyRequest, context: ServicerContext
    ) -> user_pb2.CreateApiKeyResponse:
        return await api_keys.create_api_key(self._deps, request)

    async def ListApiKeys(
        self, request: user_pb2.ListApiKeysRequest, context: ServicerContext
    ) -> user_pb2.ListApiKeysResponse:
        return await api_keys.list_api_keys(self._deps, request)

    async def RevealApiKey(
        self, request: user_pb2.RevealApiKeyRequest, context: ServicerContext
    ) -> user_pb2.RevealApiKeyResponse:
        return await api_keys.reveal_api_key(self._deps, request)

    async def UpdateApiKey(
        self, request: user_pb2.UpdateApiKeyRequest, context: ServicerContext
    ) -> user_pb2.UpdateApiKeyResponse:
        return await api_keys.update_api_key(self._deps, request)

    async def DeleteApiKey(
        self, request: user_pb2.DeleteApiKeyRequest, context: ServicerContext
    ) -> user_pb2.DeleteApiKeyResponse:
        return await api_keys.delete_api_key(self._deps, request)
