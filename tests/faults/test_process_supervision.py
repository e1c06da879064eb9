"""The parent notices every worker death, stops the others and exits non-zero."""

from __future__ import annotations

import random
import signal
import time

import grpc
import psycopg
import pytest

from qdata.v1 import user_pb2, user_pb2_grpc
from tests.support.calls import PASSWORD, rid
from tests.support.processes import ServerProcess, server_env

pytestmark = pytest.mark.slow

KILL_LOOP_ITERATIONS = 50
# How a worker dies: killed, crashed (SIGSEGV), or stopped on its own by a SIGTERM to it alone.
DEATHS = (signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM)


def test_every_worker_death_stops_the_server_with_an_error(database_url, tmp_path):
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    acknowledged: list[str] = []
    for iteration in range(KILL_LOOP_ITERATIONS):
        server = ServerProcess(server_env(database_url, QDATA_WORKERS="2"), tmp_path / f"kill-{iteration}.log")
        try:
            workers = server.wait_workers(2)
            after_ready = iteration % 3 == 2
            if after_ready:
                server.wait_serving()
                # A write acknowledged before the death must survive it.
                name = f"kill{iteration}"
                with grpc.insecure_channel(server.address) as channel:
                    user_pb2_grpc.UserServiceStub(channel).CreateUser(
                        user_pb2.CreateUserRequest(
                            request_id=rid(), email=f"{name}@example.com", username=name, password=PASSWORD
                        ),
                        timeout=10,
                    )
                acknowledged.append(name)
            victim = rng.choice(workers)
            death = rng.choice(DEATHS)
            time.sleep(rng.uniform(0, 0.3))
            victim.send_signal(death)
            code = server.wait(timeout=30)
        except BaseException:
            server.kill_all()
            raise
        context = f"iteration {iteration} (seed {seed}), {death.name} to {victim.pid}, after_ready={after_ready}"
        output = server.output()
        assert code == 1, f"{context}: exit code {code}\n{output}"
        errors = [
            line
            for line in server.lines()
            if line["level"] == "ERROR" and line["message"] == "worker exited unexpectedly; stopping the others"
        ]
        assert len(errors) == 1 and errors[0]["worker_pid"] == victim.pid, f"{context}\n{output}"
        assert errors[0]["worker"].startswith("qdata-worker-")
        # Killed: -signal; a lone SIGTERM stops the worker (0) or, before its handler exists, kills it.
        allowed = {0, -signal.SIGTERM} if death == signal.SIGTERM else {-death}
        assert errors[0]["exit_code"] in allowed, f"{context}\n{output}"
        assert not server.workers(), f"{context}: workers left behind"
        assert "Traceback" not in output, f"{context}\n{output}"
    with psycopg.connect(database_url) as conn:
        names = [row[0] for row in conn.execute("SELECT username FROM users ORDER BY username")]
    assert sorted(names) == sorted(acknowledged)


def test_a_server_told_to_stop_exits_zero_after_its_workers(database_url, tmp_path):
    server = ServerProcess(server_env(database_url, QDATA_WORKERS="2"), tmp_path / "stop.log")
    try:
        server.wait_serving()
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0, server.output()
    assert not [line for line in server.lines() if line["level"] == "ERROR"], server.output()
