"""SIGTERM while a call waits on a row lock: no backend, lock or half-applied write outlives qdata."""

from __future__ import annotations

import concurrent.futures
import signal
import time
import uuid

import grpc
import psycopg
import pytest

from qdata.v1 import ledger_pb2, ledger_pb2_grpc, user_pb2, user_pb2_grpc
from tests.support.calls import PASSWORD, rid
from tests.support.processes import ServerProcess, SlowNetworkProxy, qdata_backends, server_env
from tests.support.server import serving_url

pytestmark = pytest.mark.slow

USD = 1_000_000


def deposit_request(user_id: str, amount: int) -> ledger_pb2.DepositRequest:
    return ledger_pb2.DepositRequest(
        request_id=rid(), user_id=user_id, amount_micros=amount, external_reference=f"ch_{uuid.uuid4().hex}"
    )


def wait_for_lock_wait(database_url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(b["wait_event_type"] == "Lock" for b in qdata_backends(database_url)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no qdata backend waits on a lock: {qdata_backends(database_url)}")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_cancels_a_call_blocked_on_a_lock_and_leaves_no_backend(database_url, tmp_path, workers):
    env = server_env(database_url, QDATA_WORKERS=workers)
    server = ServerProcess(env, tmp_path / "serve.log")
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            users = user_pb2_grpc.UserServiceStub(channel)
            ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
            user = users.CreateUser(
                user_pb2.CreateUserRequest(
                    request_id=rid(), email="locked@example.com", username="locked", password=PASSWORD
                ),
                timeout=10,
            ).user
            acknowledged = ledger.Deposit(deposit_request(user.id, 5 * USD), timeout=10).transaction
            blocked = deposit_request(user.id, 3 * USD)
            with psycopg.connect(database_url) as holder:
                holder.execute("SELECT 1 FROM ledger_accounts WHERE user_id = %s FOR UPDATE", (user.id,))
                call = pool.submit(ledger.Deposit, blocked, timeout=60)
                wait_for_lock_wait(database_url)
                server.send(signal.SIGTERM)
                code = server.wait(timeout=30)
                # Gone with the process: no backend of the server's pool, so no lock either.
                assert qdata_backends(database_url) == [], server.output()
                holder.commit()  # the lock holder was never stuck behind a leftover backend
            with pytest.raises(grpc.RpcError) as failed:
                call.result(timeout=30)
    finally:
        pool.shutdown(wait=False)
        if server.process.poll() is None:
            server.kill_all()
    assert code == 0, server.output()
    # Retryable, and the retry is safe: the blocked deposit was not applied, not even in part.
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
    with psycopg.connect(database_url) as conn:
        posted = conn.execute("SELECT posted_micros FROM ledger_accounts WHERE user_id = %s", (user.id,)).fetchone()[0]
        deposits = conn.execute(
            "SELECT transaction_id FROM ledger_transactions WHERE user_id = %s AND kind = 'deposit'", (user.id,)
        ).fetchall()
    assert posted == 5 * USD
    assert [str(row[0]) for row in deposits] == [acknowledged.id]

    # The caller retries with the same request_id on the next server: applied exactly once.
    again = ServerProcess(env, tmp_path / "again.log", address=server.address)
    try:
        again.wait_serving()
        with grpc.insecure_channel(again.address) as channel:
            ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
            ledger.Deposit(blocked, timeout=10)
            ledger.Deposit(blocked, timeout=10)
            balance = ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=user.id), timeout=10).balance
    finally:
        assert again.stop() == 0, again.output()
    assert balance.posted_micros == 8 * USD


def test_a_slow_statement_cancel_still_completes_before_the_process_exits(database_url, tmp_path):
    """The cancel request psycopg sends for the blocked statement crawls (a slow link to the
    database): the server must wait for it, not drop the socket and leave the backend waiting on
    its lock (PostgreSQL does not notice a closed client while it waits on a lock)."""
    proxy = SlowNetworkProxy(database_url)
    env = server_env(database_url, QDATA_WORKERS="1", QDATA_POOL_MIN_SIZE="2")
    env["DATABASE_URL"] = serving_url(proxy.url)
    server = ServerProcess(env, tmp_path / "serve.log")
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            users = user_pb2_grpc.UserServiceStub(channel)
            ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
            user = users.CreateUser(
                user_pb2.CreateUserRequest(
                    request_id=rid(), email="slow@example.com", username="slow", password=PASSWORD
                ),
                timeout=10,
            ).user
            ledger.Deposit(deposit_request(user.id, 5 * USD), timeout=10)
            with psycopg.connect(database_url) as holder:
                holder.execute("SELECT 1 FROM ledger_accounts WHERE user_id = %s FOR UPDATE", (user.id,))
                call = pool.submit(ledger.Deposit, deposit_request(user.id, 3 * USD), timeout=60)
                wait_for_lock_wait(database_url)
                proxy.delay = 1.0
                server.send(signal.SIGTERM)
                code = server.wait(timeout=30)
                left = qdata_backends(database_url)
                holder.rollback()
            with pytest.raises(grpc.RpcError):
                call.result(timeout=30)
    finally:
        pool.shutdown(wait=False)
        proxy.close()
        if server.process.poll() is None:
            server.kill_all()
    assert left == [], (left, server.output())
    assert code == 0, server.output()
    # Nothing is left to apply the cancelled deposit once the lock is free.
    time.sleep(0.5)
    with psycopg.connect(database_url) as conn:
        posted = conn.execute("SELECT posted_micros FROM ledger_accounts WHERE user_id = %s", (user.id,)).fetchone()[0]
    assert posted == 5 * USD
