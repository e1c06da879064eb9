"""Real `python -m qdata_server serve` processes, for the integration and fault tests.

Each server serves the test's own database (as the serving login, like production) and writes its
log to a file; `lines()` parses the JSON log lines. Database checks connect as the owner.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.server import serving_url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Every test server's settings unless its env says otherwise: a low bcrypt cost, fast health
# probes, and no caller tokens (tests/api/test_auth.py and test_serve_auth.py test those).
PROCESS_DEFAULTS = {
    "QDATA_BCRYPT_COST": "4",
    "QDATA_HEALTH_PROBE_SECONDS": "0.2",
    "QDATA_ALLOW_INSECURE": "true",
}


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a served test database: serving login, owner for migrations, short grace."""
    return {
        "DATABASE_URL": serving_url(database_url),
        "QDATA_OWNER_DATABASE_URL": database_url,
        "QDATA_SHUTDOWN_GRACE_SECONDS": "1",
        **extra,
    }


class ServerProcess:
    """One qdata server process (the parent and, with QDATA_WORKERS > 1, its forked workers)."""

    def __init__(self, env: dict[str, str], log_path: Path, *, address: str | None = None):
        self.address = address or f"127.0.0.1:{free_port()}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("QDATA_", "DATABASE_URL"))}
        full_env.update({"QDATA_LISTEN_ADDRESS": self.address, **PROCESS_DEFAULTS, **env})
        # The serving processes to wait for: the workers, or the process itself with one (0 = a
        # worker per core, as config.Settings.worker_count reads it).
        self.serving_processes = int(full_env.get("QDATA_WORKERS", "1")) or (os.cpu_count() or 1)
        if full_env.get("QDATA_LOG_LEVEL", "INFO").upper() not in ("DEBUG", "INFO"):
            self.serving_processes = 0  # the "serving" line is not written
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qdata_server", "serve"], env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def workers(self) -> list[psutil.Process]:
        """The parent's live child processes (its workers)."""
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []

    def wait_workers(self, count: int, timeout: float = 30.0) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.workers()
            if len(found) >= count:
                return found
            assert self.process.poll() is None, self.output()
            time.sleep(0.005)
        raise AssertionError(f"{count} workers did not appear within {timeout}s:\n{self.output()}")

    def serving_pids(self) -> set[int]:
        """The processes that logged "serving" (each has bound the port and accepts calls)."""
        return {line["pid"] for line in self.lines() if line.get("message") == "serving"}

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Waits for health SERVING and for every serving process to listen.

        A health check reaches one worker; a worker still starting takes no connection yet, so a
        test that spreads calls over the workers waits for all of them.
        """
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.process.poll() is None, self.output()
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if (
                        reply.status == health_pb2.HealthCheckResponse.SERVING
                        and len(self.serving_pids()) >= self.serving_processes
                    ):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"not serving within {timeout}s:\n{self.output()}")

    def send(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code; fails (after killing what is left) if the process outlives timeout."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"server still running after {timeout}s:\n{self.output()}") from None
        finally:
            self._log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.send(sig)
        return self.wait(timeout)

    def kill_all(self) -> None:
        """SIGKILL to the parent and its workers (cleanup of a failed test)."""
        for proc in [*self.workers(), self.process]:
            try:
                proc.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        self.process.wait(timeout=10)
        self._log.close()

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]


def qdata_backends(owner_url: str) -> list[dict[str, Any]]:
    """Backends connected as the server's pool (application_name 'qdata') to the test's database."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(owner_url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT pid, state, wait_event_type, query FROM pg_stat_activity"
            " WHERE application_name = 'qdata' AND datname = current_database()"
        ).fetchall()


class SlowNetworkProxy:
    """A TCP proxy in front of the test's PostgreSQL that can turn into a slow network.

    While `delay` is set, a new connection's bytes reach PostgreSQL only after that many seconds,
    and not at all if the client has hung up meanwhile (as when a connection attempt over a slow
    link is abandoned). Established connections are not affected. The server under test connects
    through it (`url`), so the cancel request psycopg sends at shutdown can be made slow.
    """

    def __init__(self, database_url: str):
        import glob
        import threading

        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(database_url)
        host = str(params.get("host", "localhost"))
        if host.startswith("/"):
            [path] = [p for p in glob.glob(f"{host}/.s.PGSQL.{params.get('port', '*')}") if not p.endswith(".lock")]
            self._target: tuple[int, Any] = (socket.AF_UNIX, path)
        else:
            self._target = (socket.AF_INET, (host, int(params.get("port", 5432))))
        self.delay = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._threads = threading
        self.url = make_conninfo(database_url, host="127.0.0.1", port=str(self._listener.getsockname()[1]))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._threads.Thread(target=self._connect, args=(client, self.delay), daemon=True).start()

    def _connect(self, client: socket.socket, delay: float) -> None:
        early = b""
        if delay:
            time.sleep(delay)
            client.setblocking(False)
            try:
                while chunk := client.recv(65536):
                    early += chunk
                client.close()  # the client gave up before its bytes got through: they are lost
                return
            except BlockingIOError:
                pass  # still connected: what it sent goes through, late
            except OSError:
                client.close()
                return
            client.setblocking(True)
        upstream = socket.socket(self._target[0], socket.SOCK_STREAM)
        upstream.connect(self._target[1])
        if early:
            upstream.sendall(early)
        for src, dst in ((client, upstream), (upstream, client)):
            self._threads.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            # Each socket is the source of exactly one pump, which closes it.
            src.close()

    def close(self) -> None:
        self._listener.close()
