"""Hostile values in every scalar field of valid UsageService requests never cause INTERNAL.

test_hostile_input.py sends hostile values into otherwise empty requests, which stop at the
first check; here each RPC starts from a request that would succeed (a priced model and a
funded user exist), so a hostile field travels as deep as it can, into SQL included.
"""

from __future__ import annotations

import datetime

import grpc

from qdata.v1 import usage_pb2
from tests.api.test_hostile_input import BAD_CODES, variants
from tests.support.usage import create_model, funded_user, ms, now, price, ts, usage

MODEL = "openai/gpt-4o-mini"


async def test_hostile_fields_of_valid_usage_requests_never_cause_internal_errors(api):
    await create_model(api, MODEL)
    user = await funded_user(api)
    record = usage(user.id, time_to_first_token=ms(100), call_time=ts(now()))
    later = now() + datetime.timedelta(days=3)
    bases = {
        "UpsertModel": usage_pb2.UpsertModelRequest(
            model=usage_pb2.Model(id=MODEL, provider="openai", display_name="x", context_window_tokens=1000),
            update_mask={"paths": ["display_name"]},
            price=price(effective=later),
        ),
        "GetModel": usage_pb2.GetModelRequest(model_id=MODEL),
        "ListModels": usage_pb2.ListModelsRequest(provider="openai", page_size=5),
        "ListModelPrices": usage_pb2.ListModelPricesRequest(model_id=MODEL, page_size=5),
        "RecordUsage": record,
        "GetUserUsage": usage_pb2.GetUserUsageRequest(
            user_id=user.id, start_time=ts(now() - datetime.timedelta(days=2)), currency_code="USD"
        ),
        "GetModelStats": usage_pb2.GetModelStatsRequest(model_id=MODEL, window={"seconds": 3600}),
        "ListTopModels": usage_pb2.ListTopModelsRequest(
            metric=usage_pb2.MODEL_METRIC_SPEND, window={"seconds": 86400}, provider="openai", limit=5
        ),
        "RateModel": usage_pb2.RateModelRequest(user_id=user.id, model_id=MODEL, stars=4, review="fine"),
        "ListModelRatings": usage_pb2.ListModelRatingsRequest(model_id=MODEL, stars=4, user_id=user.id),
    }
    service = usage_pb2.DESCRIPTOR.services_by_name["UsageService"]
    for name, base in bases.items():
        method = getattr(api.usage, name)
        request_class = getattr(usage_pb2, service.methods_by_name[name].input_type.name)
        for request in variants(request_class, base):
            try:
                await method(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                assert error.code() not in BAD_CODES, f"{name}({request!r:.300}) -> {error.code()}: {error.details()}"
    # The batch carries the same hostile records, each answered with its own result.
    items = variants(usage_pb2.RecordUsageRequest, record)[:1000]
    response = await api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=items), timeout=30)
    assert len(response.results) == len(items)
    assert not [r for r in response.results if r.error_code in ("INTERNAL", "UNKNOWN")]
