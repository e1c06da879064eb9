"""The real process: `python -m qdata_server serve` with workers, signals and the embedded default."""

from __future__ import annotations

import json
import signal

import grpc
import pytest

from qdata.v1 import user_pb2, user_pb2_grpc
from qdata_server.seed import SAMPLE_PASSWORD
from tests.support.calls import PASSWORD, rid
from tests.support.processes import ServerProcess
from tests.support.server import serving_url

pytestmark = pytest.mark.slow


def users_stub(address: str):
    channel = grpc.insecure_channel(address)
    return channel, user_pb2_grpc.UserServiceStub(channel)


def test_workers_share_the_port_and_stop_cleanly_on_sigterm(database_url, tmp_path):
    env = {"DATABASE_URL": serving_url(database_url), "QDATA_OWNER_DATABASE_URL": database_url, "QDATA_WORKERS": "2"}
    server = ServerProcess(env, tmp_path / "serve.log")
    try:
        server.wait_serving()
        channel, users = users_stub(server.address)
        with channel:
            # Many short connections land on both workers; every one of them answers.
            for i in range(6):
                with grpc.insecure_channel(server.address) as c:
                    stub = user_pb2_grpc.UserServiceStub(c)
                    stub.CreateUser(
                        user_pb2.CreateUserRequest(
                            request_id=rid(), email=f"w{i}@example.com", username=f"worker{i}", password=PASSWORD
                        ),
                        timeout=10,
                    )
            listed = users.ListUsers(user_pb2.ListUsersRequest(page_size=100), timeout=10)
            assert len(listed.users) == 6
    finally:
        code = server.stop(signal.SIGTERM)
    output = server.output()
    assert code == 0, output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    serving_pids = {line["pid"] for line in lines if line.get("message") == "serving"}
    stopped_pids = {line["pid"] for line in lines if line.get("message") == "stopped"}
    assert len(serving_pids) == 2 and stopped_pids == serving_pids, output
    assert PASSWORD not in output
    assert "Traceback" not in output


def test_embedded_default_migrates_seeds_and_keeps_data_across_restarts(tmp_path):
    env = {"QDATA_EMBEDDED_DATA_DIR": str(tmp_path / "pgdata"), "QDATA_WORKERS": "1"}
    first = ServerProcess(env, tmp_path / "first.log")
    try:
        first.wait_serving(timeout=120)
        channel, users = users_stub(first.address)
        with channel:
            login = users.Authenticate(
                user_pb2.AuthenticateRequest(login="alice", password=SAMPLE_PASSWORD), timeout=10
            )
            assert login.outcome == user_pb2.AUTHENTICATE_OUTCOME_SUCCESS
            users.CreateUser(
                user_pb2.CreateUserRequest(
                    request_id=rid(), email="kept@example.com", username="kept", password=PASSWORD
                ),
                timeout=10,
            )
    finally:
        assert first.stop(signal.SIGINT) == 0, first.output()
    assert ".venv/bin/grpcurl -plaintext" in first.output()

    second = ServerProcess(env, tmp_path / "second.log")
    try:
        second.wait_serving(timeout=120)
        channel, users = users_stub(second.address)
        with channel:
            kept = users.GetUser(user_pb2.GetUserRequest(username="kept"), timeout=10)
            assert kept.user.email == "kept@example.com"
            listed = users.ListUsers(user_pb2.ListUsersRequest(), timeout=10)
            # Seeding ran once: the three sample users plus the one created above.
            assert len(listed.users) == 4
    finally:
        assert second.stop(signal.SIGTERM) == 0, second.output()
