"""clients/python/examples/ run as a service author runs them: subprocesses against a real server.

One `python -m qdata_server serve` process for the module, over a database of its own seeded with
the sample data `make run` loads (users alice, bob and carol, models, usage, ratings), so every
example runs with its defaults. Each example calls with a token that holds only the permissions
its kind of caller needs (docs/migration.md lists them), so an example that strays outside its
caller's permissions fails here. The address comes from QDATA_ADDRESS and QDATA_TOKEN for some
examples and from --address/--token for the others: both routes are exercised.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from qdata.v1 import chat_pb2, chat_pb2_grpc, ledger_pb2, ledger_pb2_grpc, user_pb2, user_pb2_grpc
from qdata_server.auth import hash_token
from tests.support.processes import ServerProcess, server_env
from tests.support.server import create_database, drop_database

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "clients" / "python" / "examples"

# The permissions each kind of caller needs for its example (and docs/migration.md's table).
CALLERS = {
    "auth": "users.write,users.authenticate",
    "billing": "users.read,ledger.read,ledger.write",
    "chat": "users.read,chat.read,chat.write",
    "recommendations": "usage.read",
    "analytics": "users.read,usage.read",
    "checker": "*",
}


def token(name: str) -> str:
    return f"qdt_examples-{name}-0123456789abcdef0123456789abcdef"


@dataclass
class Served:
    address: str
    channel: grpc.Channel

    def call(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token('checker')}"),)


@pytest.fixture(scope="module")
def served(postgres_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    database_url = create_database(postgres_url, "qdata_examples")
    tokens = "\n".join(f"{name} {hash_token(token(name))} {grants}" for name, grants in CALLERS.items())
    env = server_env(
        database_url,
        QDATA_WORKERS="1",
        QDATA_ALLOW_INSECURE="",
        QDATA_AUTH_TOKENS=tokens,
        QDATA_SEED_ON_START="true",
    )
    server = ServerProcess(env, tmp_path_factory.mktemp("examples") / "serve.log")
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            yield Served(server.address, channel)
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.output()
        drop_database(postgres_url, database_url)


def run(served: Served, example: str, caller: str, *args: str, via_env: bool = True) -> str:
    """Runs an example to its end; returns its output after checking it exited 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QDATA_")}
    command = [sys.executable, str(EXAMPLES / example), *args]
    if via_env:
        env.update(QDATA_ADDRESS=served.address, QDATA_TOKEN=token(caller))
    else:
        command += ["--address", served.address, "--token", token(caller)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    return done.stdout


def alice(served: Served) -> str:
    users = user_pb2_grpc.UserServiceStub(served.channel)
    return users.GetUser(user_pb2.GetUserRequest(username="alice"), metadata=served.call(), timeout=10).user.id


def test_auth_login_flow(served):
    output = run(served, "auth_login.py", "auth", "--username", "example-dana")
    assert re.search(r"^created user example-dana id=[0-9a-f-]{36} request_id=\S+$", output, re.MULTILINE), output
    assert "login with the right password: AUTHENTICATE_OUTCOME_SUCCESS" in output
    assert "login with the wrong password: AUTHENTICATE_OUTCOME_INVALID_CREDENTIALS" in output
    users = user_pb2_grpc.UserServiceStub(served.channel)
    user = users.GetUser(user_pb2.GetUserRequest(username="example-dana"), metadata=served.call(), timeout=10).user
    assert user.email == "example-dana@example.com" and user.HasField("last_login_time")
    # Run again: the user exists, the example says so and still logs in.
    again = run(served, "auth_login.py", "auth", "--username", "example-dana", via_env=False)
    assert "user example-dana already exists (EMAIL_TAKEN); logging in" in again
    assert "AUTHENTICATE_OUTCOME_SUCCESS" in again


def test_billing_top_up_and_a_hold_around_a_model_call(served):
    ledger = ledger_pb2_grpc.LedgerServiceStub(served.channel)
    user_id = alice(served)

    def available() -> int:
        reply = ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=user_id), metadata=served.call(), timeout=10)
        return reply.balance.available_micros

    before = available()
    output = run(served, "billing_hold.py", "billing", "--top-up", "10.00", "--cost", "0.123456", via_env=False)
    after = available()
    assert after - before == 10_000_000 - 123_456
    assert f"alice available after: {after // 1_000_000}.{after % 1_000_000:06d} USD ({after} micros)" in output
    assert "captured 0.123456 USD" in output and "status=HOLD_STATUS_RELEASED" in output
    listed = ledger.ListTransactions(
        ledger_pb2.ListTransactionsRequest(user_id=user_id, page_size=2), metadata=served.call(), timeout=10
    ).transactions
    assert [(t.kind, t.amount_micros) for t in listed] == [
        (ledger_pb2.TRANSACTION_KIND_HOLD_CAPTURE, 123_456),
        (ledger_pb2.TRANSACTION_KIND_DEPOSIT, 10_000_000),
    ]


def test_chat_gateway_append_and_history(served):
    output = run(served, "chat_gateway.py", "chat", "--title", "Example session from the suite")
    assert "appended messages [1, 2]; session has 2" in output
    assert "appended messages [3, 4]; session has 4" in output
    history = [line.strip() for line in output.split("history:\n", 1)[1].splitlines()]
    assert [line.split(":")[0] for line in history] == ["1 user", "2 assistant", "3 user", "4 assistant"]
    chat = chat_pb2_grpc.ChatServiceStub(served.channel)
    sessions = chat.ListSessions(
        chat_pb2.ListSessionsRequest(user_id=alice(served), tags=["example"]), metadata=served.call(), timeout=10
    ).sessions
    assert [(s.title, s.message_count, s.total_output_tokens) for s in sessions] == [
        ("Example session from the suite", 4, 23)
    ]


def test_recommendations_read_top_models_and_ratings(served):
    output = run(served, "recommendations.py", "recommendations", "--days", "7")
    by_requests = output.split("top models by requests:\n", 1)[1].split("top models by rating:\n", 1)[0]
    # The sample usage: alice called gpt-4o-mini twice, every other model was called once or twice.
    assert re.match(r"  1\. \S+ requests=2 ", by_requests), output
    assert "  1. openai/gpt-4o-mini requests=2 rating=5.00 (1 ratings)" in output.split("top models by rating:")[1]
    assert "ratings of openai/gpt-4o-mini:" in output
    assert "5 stars by " in output and "Fast and cheap for everyday questions." in output


def test_analytics_reads_usage(served):
    output = run(served, "analytics.py", "analytics", "--user", "alice", "--days", "30", via_env=False)
    # The sample data: three calls of alice (two of gpt-4o-mini, one of claude-3-5-haiku).
    assert re.search(r"^alice over 30 days: requests=3 errors=0 tokens=8074 billed=0\.\d{6} USD$", output, re.M), output
    assert "  model openai/gpt-4o-mini: requests=2" in output
    assert "  model anthropic/claude-3-5-haiku: requests=1" in output
    assert "all users: requests=2 users=1 error_rate=0.00 p50=" in output


def test_an_example_outside_its_callers_permissions_fails_loudly(served):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QDATA_")}
    env.update(QDATA_ADDRESS=served.address, QDATA_TOKEN=token("recommendations"))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "analytics.py")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "PERMISSION_DENIED MISSING_PERMISSION" in done.stderr
