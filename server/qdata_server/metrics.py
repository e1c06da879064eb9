"""Prometheus metrics (QDATA_METRICS_LISTEN_ADDRESS; off when empty, and then never imported).

The SO_REUSEPORT workers are separate processes, so prometheus-client runs in its multiprocess
mode: the serving parent makes a fresh PROMETHEUS_MULTIPROC_DIR before the fork (prometheus-client
reads it when first imported, which is after that), each worker writes its values to its own
files there, and the parent serves /metrics from all of them, so one scrape shows the whole
server. The parent marks an exited worker dead and removes the directory when it exits.

The gRPC metrics carry go-grpc-prometheus / py-grpc-prometheus names and labels, so existing
dashboards work; the interceptor records them (interceptor.py). Label children are bound once
per method (and per status code, caller and reason) and cached: the hot path is a dict lookup
and an increment. docs/operations.md "Metrics" lists what is exported.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# go-grpc-prometheus's default histogram buckets (Prometheus's DefBuckets), in seconds.
HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def prepare_dir() -> str:
    """A fresh multiprocess directory, exported to this process and the workers it forks."""
    path = tempfile.mkdtemp(prefix="qdata-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_dir(path: str) -> None:
    if os.environ.get(MULTIPROC_ENV) == path:
        del os.environ[MULTIPROC_ENV]
    shutil.rmtree(path, ignore_errors=True)


def mark_dead(pid: int) -> None:
    """Drops an exited worker's live-gauge files (its counters stay: they are the server's)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def serve_http(address: str) -> WSGIServer:
    """Serves /metrics (every process's values, aggregated) on address from a daemon thread."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    host, port = split_address(address)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    logging.getLogger("qdata.metrics").info(
        "serving metrics", extra={"address": address, "multiproc_dir": os.environ.get(MULTIPROC_ENV, "")}
    )
    return server


class MethodMetrics:
    """One method's label children, bound on first use."""

    __slots__ = ("_calls", "_handled", "_method", "_owner", "_service", "_type", "received", "sent", "started")

    def __init__(self, owner: ServerMetrics, full_method: str, grpc_type: str) -> None:
        service, _, method = full_method.lstrip("/").partition("/")
        self._owner = owner
        self._service = service
        self._method = method
        self._type = grpc_type
        labels = (grpc_type, service, method)
        self.started: Any = owner.started.labels(*labels)
        self.received: Any = owner.received.labels(*labels)
        self.sent: Any = owner.sent.labels(*labels)
        # code name -> (handled counter child, histogram child)
        self._handled: dict[str, tuple[Any, Any]] = {}
        # (caller, reason) -> counter child
        self._calls: dict[tuple[str, str], Any] = {}

    def handled(self, code: str, seconds: float, caller: str, reason: str, *, replay: bool) -> None:
        children = self._handled.get(code)
        if children is None:
            labels = (self._type, self._service, self._method)
            children = self._handled[code] = (
                self._owner.handled.labels(*labels, code),
                self._owner.seconds.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)
        call = self._calls.get((caller, reason))
        if call is None:
            call = self._calls[(caller, reason)] = self._owner.calls.labels(caller, self._method, reason)
        call.inc()
        if replay:
            self._owner.replays.labels(self._method).inc()


class ServerMetrics:
    """The server's metrics in one worker (made after the fork, with PROMETHEUS_MULTIPROC_DIR set)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started_total", "Total number of RPCs started on the server.", grpc_labels, registry=None
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*grpc_labels, "grpc_code"),
            registry=None,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            grpc_labels,
            buckets=HANDLING_BUCKETS,
            registry=None,
        )
        self.received = Counter(
            "grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.",
            grpc_labels, registry=None,
        )  # fmt: skip
        self.sent = Counter(
            "grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.",
            grpc_labels, registry=None,
        )  # fmt: skip
        self.calls = Counter(
            "qdata_calls_total",
            "RPCs handled, by caller (the token's service name), method and error reason ('' when OK).",
            ("caller", "grpc_method", "reason"),
            registry=None,
        )
        self.replays = Counter(
            "qdata_idempotent_replays_total",
            "Calls answered with the stored response of an earlier call with the same request_id.",
            ("grpc_method",),
            registry=None,
        )
        self._methods: dict[str, MethodMetrics] = {}

    def method(self, full_method: str, grpc_type: str) -> MethodMetrics:
        found = self._methods.get(full_method)
        if found is None:
            found = self._methods[full_method] = MethodMetrics(self, full_method, grpc_type)
        return found
