"""qdata.v1.LedgerService: adapters from gRPC calls to the ledger functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qdata.v1 import ledger_pb2, ledger_pb2_grpc
from qdata_server.callctx import ServicerContext
from qdata_server.ledger import operations, reads

if TYPE_CHECKING:
    from qdata_server.deps import Deps


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    """Each method hands the request to the domain function that owns it."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def GetBalance(
        self, request: ledger_pb2.GetBalanceRequest, context: ServicerContext
    ) -> ledger_pb2.GetBalanceResponse:
        return await reads.get_balance(self._deps, request)

    async def Deposit(self, request: ledger_pb2.DepositRequest, context: ServicerContext) -> ledger_pb2.DepositResponse:
        return await operations.deposit(self._deps, request)

    async def Charge(self, request: ledger_pb2.ChargeRequest, context: ServicerContext) -> ledger_pb2.ChargeResponse:
        return await operations.charge(self._deps, request)

    async def Refund(self, request: ledger_pb2.RefundRequest, context: ServicerContext) -> ledger_pb2.RefundResponse:
        return await operations.refund(self._deps, request)

    async def Transfer(
        self, request: ledger_pb2.TransferRequest, context: ServicerContext
    ) -> ledger_pb2.TransferResponse:
        return await operations.transfer(self._deps, request)

    async def CreateHold(
        self, request: ledger_pb2.CreateHoldRequest, context: ServicerContext
    ) -> ledger_pb2.CreateHoldResponse:
        return await operations.create_hold(self._deps, request)

    async def GetHold(self, request: ledger_pb2.GetHoldRequest, context: ServicerContext) -> ledger_pb2.GetHoldResponse:
        return await reads.get_hold(self._deps, request)

    async def CaptureHold(
        self, request: ledger_pb2.CaptureHoldRequest, context: ServicerContext
    ) -> ledger_pb2.CaptureHoldResponse:
        return await operations.capture_hold(self._deps, request)

    async def ReleaseHold(
        self, request: ledger_pb2.ReleaseHoldRequest, context: ServicerContext
    ) -> ledger_pb2.ReleaseHoldResponse:
        return await operations.release_hold(self._deps, request)

    async def GetTransaction(
        self, request: ledger_pb2.GetTransactionRequest, context: ServicerContext
    ) -> ledger_pb2.GetTransactionResponse:
        return await reads.get_transaction(self._deps, request)

    async def ListTransactions(
        self, request: ledger_pb2.ListTransactionsRequest, context: ServicerContext
    ) -> ledger_pb2.ListTransactionsResponse:
        return await reads.list_transactions(self._deps, request)

    async def VerifyLedger(
        self, request: ledger_pb2.VerifyLedgerRequest, context: ServicerContext
    ) -> ledger_pb2.VerifyLedgerResponse:
        return await reads.verify_ledger(self._deps, request)
