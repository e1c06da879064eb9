"""qdata.v1.UsageService: adapters from gRPC calls to the usage functions."""

from __future__ import annotations

from qdata.v1 import usage_pb2_grpc
from qdata_server.usage import catalog, ratings, recording, stats


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    """Each method hands the request to the domain function that owns it."""

    def __init__(self, deps):
        self._deps = deps

    async def UpsertModel(self, request, context):
        return await catalog.upsert_model(self._deps, request)

    async def GetModel(self, request, context):
        return await catalog.get_model(self._deps, request)

    async def ListModels(self, request, context):
        return await catalog.list_models(self._deps, request)

    async def ListModelPrices(self, request, context):
        return await catalog.list_model_prices(self._deps, request)

    async def RecordUsage(self, request, context):
        return await recording.record_usage(self._deps, request)

    async def RecordUsageBatch(self, request, context):
        return await recording.record_usage_batch(self._deps, request)

    async def GetUserUsage(self, request, context):
        return await stats.get_user_usage(self._deps, request)

    async def GetModelStats(self, request, context):
        return await stats.get_model_stats(self._deps, request)

    async def ListTopModels(self, request, context):
        return await stats.list_top_models(self._deps, request)

    async def RateModel(self, request, context):
        return await ratings.rate_model(self._deps, request)

    async def ListModelRatings(self, request, context):
        return await ratings.list_model_ratings(self._deps, request)
