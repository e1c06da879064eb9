"""Caller tokens in the real process: configured from the environment, refused without, never logged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import pytest

from qdata.v1 import user_pb2, user_pb2_grpc
from qdata_server.auth import hash_token
from tests.support.processes import ServerProcess, free_port
from tests.support.server import serving_url

pytestmark = pytest.mark.slow

TOKEN = "qdt_process-test-token-9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def test_configured_tokens_are_enforced_and_never_logged(database_url, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# mounted as a Secret would be\nsignup {hash_token(TOKEN)} users.*\n")
    env = {
        "DATABASE_URL": serving_url(database_url),
        "QDATA_OWNER_DATABASE_URL": database_url,
        "QDATA_WORKERS": "2",
        "QDATA_ALLOW_INSECURE": "",
        "QDATA_AUTH_TOKENS_FILE": str(tokens),
        "QDATA_LOG_LEVEL": "DEBUG",
    }
    server = ServerProcess(env, tmp_path / "serve.log")
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            users = user_pb2_grpc.UserServiceStub(channel)
            listed = users.ListUsers(
                user_pb2.ListUsersRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10
            )
            assert list(listed.users) == []
            with pytest.raises(grpc.RpcError) as caught:
                users.ListUsers(user_pb2.ListUsersRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.output()
    output = server.output()
    assert TOKEN not in output and hash_token(TOKEN) not in output
    assert '"actor": "signup"' in output


def test_a_production_configuration_without_tokens_refuses_to_start(database_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QDATA_", "DATABASE_URL"))}
    env.update({"DATABASE_URL": database_url, "QDATA_LISTEN_ADDRESS": f"127.0.0.1:{free_port()}"})
    done = subprocess.run(
        [sys.executable, "-m", "qdata_server", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "QDATA_ALLOW_INSECURE" in done.stderr
