"""qdata.v1.UserService: adapters from gRPC calls to the account functions.

API key vault and audit listing RPCs are not implemented yet; the generated base class answers
them and the interceptor turns that into UNIMPLEMENTED with the method's name.
"""

from __future__ import annotations

from qdata.v1 import user_pb2, user_pb2_grpc
from qdata_server.users import accounts, login, preferences


class UserServicer(user_pb2_grpc.UserServiceServicer):
    """Each method hands the request to the domain function that owns it."""

    def __init__(self, deps):
        self._deps = deps

    async def CreateUser(self, request: user_pb2.CreateUserRequest, context) -> user_pb2.CreateUserResponse:
        return await accounts.create_user(self._deps, request)

    async def GetUser(self, request: user_pb2.GetUserRequest, context) -> user_pb2.GetUserResponse:
        return await accounts.get_user(self._deps, request)

    async def ListUsers(self, request: user_pb2.ListUsersRequest, context) -> user_pb2.ListUsersResponse:
        return await accounts.list_users(self._deps, request)

    async def UpdateUser(self, request: user_pb2.UpdateUserRequest, context) -> user_pb2.UpdateUserResponse:
        return await accounts.update_user(self._deps, request)

    async def DeleteUser(self, request: user_pb2.DeleteUserRequest, context) -> user_pb2.DeleteUserResponse:
        return await accounts.delete_user(self._deps, request)

    async def ImportUsers(self, request: user_pb2.ImportUsersRequest, context) -> user_pb2.ImportUsersResponse:
        return await accounts.import_users(self._deps, request)

    async def Authenticate(self, request: user_pb2.AuthenticateRequest, context) -> user_pb2.AuthenticateResponse:
        return await login.authenticate(self._deps, request)

    async def ChangePassword(self, request: user_pb2.ChangePasswordRequest, context) -> user_pb2.ChangePasswordResponse:
        return await login.change_password(self._deps, request)

    async def GetPreferences(self, request: user_pb2.GetPreferencesRequest, context) -> user_pb2.GetPreferencesResponse:
        return await preferences.get_preferences(self._deps, request)

    async def UpdatePreferences(
        self, request: user_pb2.UpdatePreferencesRequest, context
    ) -> user_pb2.UpdatePreferencesResponse:
        return await preferences.update_preferences(self._deps, request)
