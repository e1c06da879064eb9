"""Calls that arrive after SIGTERM are refused with UNAVAILABLE, retryable, while others drain."""

from __future__ import annotations

import concurrent.futures
import signal
import time

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from qdata.v1 import ledger_pb2_grpc, user_pb2, user_pb2_grpc
from tests.faults.test_shutdown_blocked_call import USD, deposit_request, wait_for_lock_wait
from tests.support.calls import PASSWORD, rid
from tests.support.processes import ServerProcess, qdata_backends, server_env

pytestmark = pytest.mark.slow


def reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def test_calls_after_sigterm_get_unavailable_while_a_call_drains(database_url, tmp_path):
    # One worker, so every new call lands on the server the blocked call keeps draining.
    server = ServerProcess(
        server_env(database_url, QDATA_WORKERS="1", QDATA_SHUTDOWN_GRACE_SECONDS="4"), tmp_path / "serve.log"
    )
    pool = concurrent.futures.ThreadPoolExecutor(2)
    outcomes: list[tuple[str, str]] = []
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            users = user_pb2_grpc.UserServiceStub(channel)
            ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            user = users.CreateUser(
                user_pb2.CreateUserRequest(
                    request_id=rid(), email="drain@example.com", username="drain", password=PASSWORD
                ),
                timeout=10,
            ).user
            ledger.Deposit(deposit_request(user.id, USD), timeout=10)
            with psycopg.connect(database_url) as holder:
                holder.execute("SELECT 1 FROM ledger_accounts WHERE user_id = %s FOR UPDATE", (user.id,))
                blocked = pool.submit(ledger.Deposit, deposit_request(user.id, USD), timeout=60)
                wait_for_lock_wait(database_url)
                server.send(signal.SIGTERM)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    time.sleep(0.02)
                else:
                    raise AssertionError("health never turned NOT_SERVING")
                # Draining now: every new call, on this connection or a new one, is refused.
                with grpc.insecure_channel(server.address) as fresh:
                    for stub in (users, user_pb2_grpc.UserServiceStub(fresh)) * 5:
                        try:
                            stub.GetUser(user_pb2.GetUserRequest(username="drain"), timeout=5)
                            outcomes.append(("OK", ""))
                        except grpc.RpcError as error:
                            outcomes.append((error.code().name, reason(error)))
                code = server.wait(timeout=30)
                assert qdata_backends(database_url) == []
                holder.rollback()
            with pytest.raises(grpc.RpcError) as failed:
                blocked.result(timeout=30)
    finally:
        pool.shutdown(wait=False)
        if server.process.poll() is None:
            server.kill_all()
    assert code == 0, server.output()
    assert outcomes == [("UNAVAILABLE", "SHUTTING_DOWN")] * 10, outcomes
    # The call still running at the end of the grace period: gRPC ends it with UNAVAILABLE.
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    refused = [
        line for line in server.lines() if line.get("message") == "rpc" and line.get("reason") == "SHUTTING_DOWN"
    ]
    assert len(refused) == 10, server.output()
