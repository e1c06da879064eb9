"""qdata.v1.BudgetService: adapters from gRPC calls to the budget writes and reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qdata.v1 import budget_pb2, budget_pb2_grpc
from qdata_server.budgets import operations, reads
from qdata_server.callctx import ServicerContext

if TYPE_CHECKING:
    from qdata_server.deps import Deps


class BudgetServicer(budget_pb2_grpc.BudgetServiceServicer):
    """Each method hands the request to the domain function that owns it."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def CreateBudget(
        self, request: budget_pb2.CreateBudgetRequest, context: ServicerContext
    ) -> budget_pb2.CreateBudgetResponse:
        return await operations.create_budget(self._deps, request)

    async def GetBudget(
        self, request: budget_pb2.GetBudgetRequest, context: ServicerContext
    ) -> budget_pb2.GetBudgetResponse:
        return await reads.get_budget(self._deps, request)

    async def ListBudgets(
        self, request: budget_pb2.ListBudgetsRequest, context: ServicerContext
    ) -> budget_pb2.ListBudgetsResponse:
        return await reads.list_budgets(self._deps, request)

    async def UpdateBudget(
        self, request: budget_pb2.UpdateBudgetRequest, context: ServicerContext
    ) -> budget_pb2.UpdateBudgetResponse:
        return await operations.update_budget(self._deps, request)

    async def DeleteBudget(
        self, request: budget_pb2.DeleteBudgetRequest, context: ServicerContext
    ) -> budget_pb2.DeleteBudgetResponse:
        return await operations.delete_budget(self._deps, request)

    async def ListBudgetAlerts(
        self, request: budget_pb2.ListBudgetAlertsRequest, context: ServicerContext
    ) -> budget_pb2.ListBudgetAlertsResponse:
        return await reads.list_budget_alerts(self._deps, request)
