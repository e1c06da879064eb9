"""One qdata per port: a second server, or another program on the address, fails at start."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.support.processes import ServerProcess, free_port, server_env

pytestmark = pytest.mark.slow


def refused_line(server: ServerProcess) -> str:
    """The exit code must be 2 and the whole output one line, which is returned."""
    code = server.wait(timeout=30)
    output = server.output()
    assert code == 2, output
    lines = output.splitlines()
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.mark.parametrize("second_workers", ["1", "2"])
def test_a_second_server_on_a_served_port_fails_at_start(database_url, tmp_path, second_workers):
    first = ServerProcess(server_env(database_url, QDATA_WORKERS="2"), tmp_path / "first.log")
    try:
        first.wait_serving()
        second = ServerProcess(
            server_env(database_url, QDATA_WORKERS=second_workers), tmp_path / "second.log", address=first.address
        )
        line = refused_line(second)
        assert (
            line
            == f"qdata: cannot serve on {first.address}: another qdata process already serves port "
            + (first.address.rpartition(":")[2])
        )
        first.wait_serving(timeout=5)
    finally:
        assert first.stop() == 0, first.output()


def test_two_servers_starting_at_once_leave_exactly_one_serving(database_url, tmp_path):
    env = server_env(database_url, QDATA_WORKERS="2")
    a = ServerProcess(env, tmp_path / "a.log")
    b = ServerProcess(env, tmp_path / "b.log", address=a.address)
    try:
        deadline = time.monotonic() + 30
        while a.process.poll() is None and b.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        loser, winner = (a, b) if a.process.poll() is not None else (b, a)
        assert "another qdata process already serves" in refused_line(loser)
        winner.wait_serving()
    finally:
        for server in (a, b):
            if server.process.poll() is None:
                assert server.stop() == 0, server.output()


def test_a_port_freed_by_a_killed_server_serves_again(database_url, tmp_path):
    env = server_env(database_url, QDATA_WORKERS="2")
    first = ServerProcess(env, tmp_path / "first.log")
    first.wait_serving()
    first.kill_all()  # SIGKILL to the parent and its workers: nothing gets to clean up
    second = ServerProcess(env, tmp_path / "second.log", address=first.address)
    try:
        second.wait_serving()
    finally:
        assert second.stop() == 0, second.output()


@pytest.mark.parametrize("reuse_port", [False, True])
@pytest.mark.parametrize("which", ["listen", "health"])
def test_an_address_held_by_another_program_fails_in_one_line(database_url, tmp_path, reuse_port, which):
    holder = socket.socket()
    if reuse_port:
        # A program that also sets SO_REUSEPORT (as gRPC servers do by default) would share it.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = f"127.0.0.1:{holder.getsockname()[1]}"
    env = server_env(database_url, QDATA_WORKERS="2")
    address = None
    if which == "health":
        env["QDATA_HEALTH_LISTEN_ADDRESS"] = taken
    else:
        address = taken
    try:
        server = ServerProcess(env, tmp_path / "taken.log", address=address or f"127.0.0.1:{free_port()}")
        line = refused_line(server)
    finally:
        holder.close()
    assert line == f"qdata: cannot serve on {taken}: Address already in use (errno 98)"


def test_sigint_stops_a_server_cleanly(database_url, tmp_path):
    server = ServerProcess(server_env(database_url, QDATA_WORKERS="2"), tmp_path / "int.log")
    server.wait_serving()
    assert server.stop(signal.SIGINT) == 0, server.output()
