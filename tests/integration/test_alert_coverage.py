"""Every metric an alert rule or a dashboard panel names is exported by a real server.

A two-worker server with metrics on (and scheduled verification every second) serves a mixed
workload: users, the ledger with a hold and a replayed deposit, usage, chat and one error. Its /metrics scrape is then
compared with the metric names in deploy/monitoring/prometheusrule.yaml and
deploy/grafana/qdata.json, parsed with Prometheus's own PromQL grammar
(tests/integration/promql_names.mjs). Names compare by family: a histogram's _bucket, _sum and
_count series are its family's.
"""

from __future__ import annotations

import signal
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qdata.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
)
from tests.support.calls import PASSWORD, rid
from tests.support.deploy import alerts, dashboard_expressions, node
from tests.support.ledger import deposit_request, hold_request
from tests.support.processes import ServerProcess, free_port, server_env
from tests.support.usage import price, usage

pytestmark = pytest.mark.slow

# Series Prometheus makes itself for every scrape target, not the server.
PROMETHEUS_OWN = {"up"}
SUFFIXES = ("_bucket", "_sum", "_count")
# How long the scrape may take to show the families the periodic jobs set (verification every
# second, the database-derived gauges); the loop ends as soon as nothing is missing.
SETTLE_SECONDS = 20.0


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def exported(address: str) -> set[str]:
    """The metric families of one scrape (sample names reduced to their family)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {family(sample.name) for fam in text_string_to_metric_families(text) for sample in fam.samples}


def named() -> dict[str, set[str]]:
    """Each metric family the rules and the dashboard name -> where ("alert X", "dashboard")."""
    sources = [f"alert {alert['alert']}" for alert in alerts()]
    expressions = [alert["expr"] for alert in alerts()]
    panels = dashboard_expressions()
    sources += ["dashboard"] * len(panels)
    parsed = node("promql_names.mjs", expressions + panels)
    errors = [result["error"] for result in parsed if isinstance(result, dict)]
    assert errors == []
    found: dict[str, set[str]] = {}
    for source, names in zip(sources, parsed, strict=True):
        assert names, f"{source}: an expression that names no metric"
        for name in names:
            found.setdefault(family(name), set()).add(source)
    return found


def workload(address: str) -> None:
    """Users, the ledger (a deposit and its replay, a hold, a charge), usage, chat, and one NOT_FOUND."""
    with grpc.insecure_channel(address) as channel:
        users = user_pb2_grpc.UserServiceStub(channel)
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        usages = usage_pb2_grpc.UsageServiceStub(channel)
        user = users.CreateUser(
            user_pb2.CreateUserRequest(
                request_id=rid(), email="coverage@example.com", username="coverage", password=PASSWORD
            ),
            timeout=10,
        ).user
        deposit = deposit_request(user.id, 10_000_000, currency_code="USD")
        first = ledger.Deposit(deposit, timeout=10).transaction
        # A caller's retry: answered from the stored response (an idempotent replay).
        assert ledger.Deposit(deposit, timeout=10).transaction.id == first.id
        ledger.CreateHold(hold_request(user.id, 1_000_000, currency_code="USD"), timeout=10)
        ledger.Charge(ledger_pb2.ChargeRequest(request_id=rid(), user_id=user.id, amount_micros=500_000), timeout=10)
        usages.UpsertModel(create_model_request(), timeout=10)
        usages.RecordUsage(usage(user.id), timeout=10)
        session = chat.CreateSession(
            chat_pb2.CreateSessionRequest(request_id=rid(), user_id=user.id), timeout=10
        ).session
        chat.AppendMessages(
            chat_pb2.AppendMessagesRequest(
                request_id=rid(),
                user_id=user.id,
                session_id=session.id,
                messages=[chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_USER, content="hello")],
            ),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as missing:
            users.GetUser(user_pb2.GetUserRequest(username="nobody"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def create_model_request() -> usage_pb2.UpsertModelRequest:
    """The catalog model usage() records against, with a price in force from now."""
    return usage_pb2.UpsertModelRequest(
        request_id=rid(),
        model=usage_pb2.Model(id="openai/gpt-4o-mini", provider="openai", display_name="GPT-4o mini"),
        price=price(),
    )


def test_every_metric_the_rules_and_dashboard_name_is_exported(database_url, tmp_path):
    wanted = named()
    metrics_address = f"127.0.0.1:{free_port()}"
    env = server_env(
        database_url,
        QDATA_WORKERS="2",
        QDATA_METRICS_LISTEN_ADDRESS=metrics_address,
        QDATA_VERIFY_INTERVAL_SECONDS="1",
    )
    server = ServerProcess(env, tmp_path / "serve.log")
    try:
        server.wait_serving()
        workload(server.address)
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            missing = set(wanted) - exported(metrics_address) - PROMETHEUS_OWN
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.output()
    if missing:
        lines = [f"  {name}: {', '.join(sorted(wanted[name]))}" for name in sorted(missing)]
        pytest.fail("named in rules or panels but not exported after the workload:\n" + "\n".join(lines))


def test_the_names_found_are_the_ones_the_rules_use():
    """The extraction is not vacuous: families from rules and panels, suffixes folded."""
    wanted = named()
    assert "grpc_server_handling_seconds" in wanted  # from ..._bucket and ..._count
    assert "grpc_server_handling_seconds_bucket" not in wanted
    assert {"alert QdataHighErrorRatio", "dashboard"} <= wanted["grpc_server_handled_total"]
    # Label names, functions and Grafana's variables are not metric names.
    assert not {"namespace", "rate", "histogram_quantile", "le", "$__rate_interval", "by"} & set(wanted)
