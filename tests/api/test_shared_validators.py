"""The validators several services share (qdata_server/validation.py) answer the same way everywhere.

An identifier the database's CHECK would refuse is INVALID_ARGUMENT with a field violation before
any database work, never INTERNAL: a trailing newline used to pass the Python pattern ("$"
matches before it) and then fail the CHECK (PostgreSQL's "$" does not).
"""

from __future__ import annotations

import grpc

from qdata.v1 import usage_pb2, user_pb2
from tests.support.calls import create_user, expect_error, field_violations, rid

RING = "1:" + "A" * 43 + "="


async def test_identifiers_with_a_trailing_newline_are_invalid_arguments(api_with):
    api = await api_with(key_ring=RING)
    user = await create_user(api, "alice")
    key = user_pb2.CreateApiKeyRequest(
        request_id=rid(), user_id=user.id, provider="openai\n", secret="sk-a-long-enough-secret"
    )
    error = await expect_error(api.users.CreateApiKey(key), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(field_violations(error)) == {"provider"}
    for model, field in (
        ({"id": "openai/gpt\n", "provider": "openai"}, "model.id"),
        ({"id": "openai/gpt", "provider": "openai\n"}, "model.provider"),
    ):
        request = usage_pb2.UpsertModelRequest(request_id=rid(), model=usage_pb2.Model(**model))
        error = await expect_error(api.usage.UpsertModel(request), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert set(field_violations(error)) == {field}, model
