"""First end-to-end check: create, read and authenticate a user over gRPC."""

from qdata.v1 import user_pb2
from tests.support.calls import PASSWORD, create_user


async def test_create_get_authenticate(api):
    user = await create_user(api, "alice")
    got = await api.users.GetUser(user_pb2.GetUserRequest(email="ALICE@example.com"))
    assert got.user.id == user.id
    reply = await api.users.Authenticate(user_pb2.AuthenticateRequest(login="alice", password=PASSWORD))
    assert reply.outcome == user_pb2.AUTHENTICATE_OUTCOME_SUCCESS
