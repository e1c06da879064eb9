"""qdata.v1.LedgerService: adapters from gRPC calls to the ledger functions."""

from __future__ import annotations

from qdata.v1 import ledger_pb2_grpc
from qdata_server.ledger import operations, reads


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    """Each method hands the request to the domain function that owns it."""

    def __init__(self, deps):
        self._deps = deps

    async def GetBalance(self, request, context):
        return await reads.get_balance(self._deps, request)

    async def Deposit(self, request, context):
        return await operations.deposit(self._deps, request)

    async def Charge(self, request, context):
        return await operations.charge(self._deps, request)

    async def Refund(self, request, context):
        return await operations.refund(self._deps, request)

    async def Transfer(self, request, context):
        return await operations.transfer(self._deps, request)

    async def CreateHold(self, request, context):
        return await operations.create_hold(self._deps, request)

    async def GetHold(self, request, context):
        return await reads.get_hold(self._deps, request)

    async def CaptureHold(self, request, context):
        return await operations.capture_hold(self._deps, request)

    async def ReleaseHold(self, request, context):
        return await operations.release_hold(self._deps, request)

    async def GetTransaction(self, request, context):
        return await reads.get_transaction(self._deps, request)

    async def ListTransactions(self, request, context):
        return await reads.list_transactions(self._deps, request)

    async def VerifyLedger(self, request, context):
        return await reads.verify_ledger(self._deps, request)
