"""qdata.v1.UsageService: adapters from gRPC calls to the usage functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qdata.v1 import usage_pb2, usage_pb2_grpc
from qdata_server.callctx import ServicerContext
from qdata_server.usage import catalog, ratings, recording, stats

if TYPE_CHECKING:
    from qdata_server.deps import Deps


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    """Each method hands the request to the domain function that owns it."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def UpsertModel(
        self, request: usage_pb2.UpsertModelRequest, context: ServicerContext
    ) -> usage_pb2.UpsertModelResponse:
        return await catalog.upsert_model(self._deps, request)

    async def GetModel(
        self, request: usage_pb2.GetModelRequest, context: ServicerContext
    ) -> usage_pb2.GetModelResponse:
        return await catalog.get_model(self._deps, request)

    async def ListModels(
        self, request: usage_pb2.ListModelsRequest, context: ServicerContext
    ) -> usage_pb2.ListModelsResponse:
        return await catalog.list_models(self._deps, request)

    async def ListModelPrices(
        self, request: usage_pb2.ListModelPricesRequest, context: ServicerContext
    ) -> usage_pb2.ListModelPricesResponse:
        return await catalog.list_model_prices(self._deps, request)

    async def RecordUsage(
        self, request: usage_pb2.RecordUsageRequest, context: ServicerContext
    ) -> usage_pb2.RecordUsageResponse:
        return await recording.record_usage(self._deps, request)

    async def RecordUsageBatch(
        self, request: usage_pb2.RecordUsageBatchRequest, context: ServicerContext
    ) -> usage_pb2.RecordUsageBatchResponse:
        return await recording.record_usage_batch(self._deps, request)

    async def GetUserUsage(
        self, request: usage_pb2.GetUserUsageRequest, context: ServicerContext
    ) -> usage_pb2.GetUserUsageResponse:
        return await stats.get_user_usage(self._deps, request)

    async def GetModelStats(
        self, request: usage_pb2.GetModelStatsRequest, context: ServicerContext
    ) -> usage_pb2.GetModelStatsResponse:
        return await stats.get_model_stats(self._deps, request)

    async def ListTopModels(
        self, request: usage_pb2.ListTopModelsRequest, context: ServicerContext
    ) -> usage_pb2.ListTopModelsResponse:
        return await stats.list_top_models(self._deps, request)

    async def RateModel(
        self, request: usage_pb2.RateModelRequest, context: ServicerContext
    ) -> usage_pb2.RateModelResponse:
        return await ratings.rate_model(self._deps, request)

    async def ListModelRatings(
        self, request: usage_pb2.ListModelRatingsRequest, context: ServicerContext
    ) -> usage_pb2.ListModelRatingsResponse:
        return await ratings.list_model_ratings(self._deps, request)
