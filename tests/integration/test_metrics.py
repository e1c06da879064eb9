"""Prometheus metrics of a real two-worker server: one scrape adds up both workers exactly."""

from __future__ import annotations

import os
import signal
import urllib.request

import grpc
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qdata.v1 import user_pb2, user_pb2_grpc
from qdata_server.metrics import HANDLING_BUCKETS
from tests.support.calls import PASSWORD, rid
from tests.support.processes import ServerProcess, free_port, server_env

pytestmark = pytest.mark.slow

SERVICE = "qdata.v1.UserService"
CHANNELS = 12


def scrape(address: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def listening_ports(server: ServerProcess) -> dict[int, set[int]]:
    """Each process's (parent and workers) listening TCP ports."""
    found = {}
    for proc in [psutil.Process(server.pid), *server.workers()]:
        found[proc.pid] = {c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    return found


def workload(address: str) -> None:
    """On each of CHANNELS new connections: a new CreateUser, its replay, a GetUser of nobody."""
    for i in range(CHANNELS):
        with grpc.insecure_channel(address) as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            request = user_pb2.CreateUserRequest(
                request_id=rid(), email=f"m{i}@example.com", username=f"metrics{i}", password=PASSWORD
            )
            first = stub.CreateUser(request, timeout=10)
            assert stub.CreateUser(request, timeout=10).user.id == first.user.id
            with pytest.raises(grpc.RpcError) as missing:
                stub.GetUser(user_pb2.GetUserRequest(username=f"nobody{i}"), timeout=10)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_one_scrape_adds_up_both_workers_exactly(database_url, tmp_path):
    metrics_address = f"127.0.0.1:{free_port()}"
    env = server_env(database_url, QDATA_WORKERS="2", QDATA_METRICS_LISTEN_ADDRESS=metrics_address)
    server = ServerProcess(env, tmp_path / "serve.log")
    try:
        server.wait_serving()
        workers = server.wait_workers(2)
        assert len(workers) == 2
        [metrics_dir] = [line["multiproc_dir"] for line in server.lines() if line.get("message") == "serving metrics"]
        assert os.path.isdir(metrics_dir)
        # Served by the parent only.
        ports = listening_ports(server)
        metrics_port = int(metrics_address.rpartition(":")[2])
        assert [pid for pid, held in ports.items() if metrics_port in held] == [server.pid]
        workload(server.address)
        samples = scrape(metrics_address)
        # Each worker wrote its own values (the scrape summed them).
        written = {name.rpartition("_")[2].removesuffix(".db") for name in os.listdir(metrics_dir)}
        assert {str(w.pid) for w in workers} <= written, written
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0, server.output()
    assert not os.path.exists(metrics_dir), "the multiprocess directory outlived the server"

    calls = [
        line for line in server.lines() if line.get("message") == "rpc" and line["method"].startswith(f"/{SERVICE}/")
    ]
    # The workload reached both workers (new connections spread over SO_REUSEPORT).
    assert len({line["pid"] for line in calls}) == 2, calls
    [caller] = {line["actor"] for line in calls}

    n = CHANNELS
    expected = {"CreateUser": (2 * n, "OK", 2 * n), "GetUser": (n, "NOT_FOUND", 0)}
    for method, (count, code_name, sent) in expected.items():
        grpc_labels = {"grpc_type": "UNARY", "grpc_service": SERVICE, "grpc_method": method}
        assert value(samples, "grpc_server_started_total", **grpc_labels) == count, method
        assert value(samples, "grpc_server_msg_received_total", **grpc_labels) == count, method
        assert value(samples, "grpc_server_msg_sent_total", **grpc_labels) == sent, method
        assert value(samples, "grpc_server_handled_total", **grpc_labels, grpc_code=code_name) == count, method
        assert value(samples, "grpc_server_handling_seconds_count", **grpc_labels) == count, method
        assert value(samples, "grpc_server_handling_seconds_bucket", **grpc_labels, le="+Inf") == count, method
    reasons = {"CreateUser": "", "GetUser": "USER_NOT_FOUND"}
    for method, reason in reasons.items():
        assert (
            value(samples, "qdata_calls_total", caller=caller, grpc_method=method, reason=reason) == expected[method][0]
        )
    assert value(samples, "qdata_idempotent_replays_total", grpc_method="CreateUser") == n
    assert value(samples, "qdata_idempotent_replays_total", grpc_method="GetUser") == 0

    # Nothing else was counted for the service (no other code, method or caller).
    handled = sum(
        v
        for (name, labels), v in samples.items()
        if name == "grpc_server_handled_total" and ("grpc_service", SERVICE) in labels
    )
    assert handled == 3 * n
    # go-grpc-prometheus's default buckets.
    buckets = {
        dict(labels)["le"]
        for (name, labels), _ in samples.items()
        if name == "grpc_server_handling_seconds_bucket" and ("grpc_method", "CreateUser") in labels
    }
    assert buckets == {*(str(b) for b in HANDLING_BUCKETS), "+Inf"}
    assert {str(b) for b in HANDLING_BUCKETS} >= {"0.005", "0.1", "1.0", "10.0"}


def test_metrics_are_off_by_default(database_url, tmp_path):
    server = ServerProcess(server_env(database_url, QDATA_WORKERS="2"), tmp_path / "serve.log")
    try:
        server.wait_serving()
        workers = server.wait_workers(2)
        grpc_port = int(server.address.rpartition(":")[2])
        assert len(workers) == 2
        # Every process listens on the gRPC port only.
        assert set().union(*listening_ports(server).values()) == {grpc_port}
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.output()
    assert not [line for line in server.lines() if line.get("message") == "serving metrics"]
