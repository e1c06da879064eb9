"""Process lifecycle: prepare the database, fork workers that share the port, stop cleanly.

The parent prepares the database (embedded start, migrations, sample data) and reserves the
port, then forks; only then does each worker build its gRPC server and pool, since neither
survives a fork. Workers share the port through SO_REUSEPORT. SIGTERM or SIGINT makes every
worker report NOT_SERVING, stop accepting, drain in-flight RPCs within the grace period and close
its pool; the parent exits 0 once all workers have.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys

from qdata_server.config import ConfigError, Settings

log = logging.getLogger("qdata.serve")


@dataclasses.dataclass(frozen=True)
class Databases:
    """Where the server serves (a confined login role) and where the schema's owner connects."""

    serving: str
    owner: str


# The embedded default's serving login (no password: the embedded server trusts its socket).
EMBEDDED_SERVICE_LOGIN = "qdata_app"


def database_problem(settings: Settings) -> str | None:
    """Why the server cannot serve with these database settings, or None.

    QDATA_OWNER_DATABASE_URL alone names a database but no login to serve it as: serving the
    embedded PostgreSQL instead would quietly leave the named database alone.
    """
    if settings.owner_database_url and not settings.database_url:
        return (
            "QDATA_OWNER_DATABASE_URL is set but DATABASE_URL is not: serving needs DATABASE_URL (a login "
            "role in qdata_service); set it, or unset QDATA_OWNER_DATABASE_URL to use the embedded PostgreSQL"
        )
    return None


def resolve_database(settings: Settings) -> Databases:
    """DATABASE_URL (and QDATA_OWNER_DATABASE_URL), or the embedded PostgreSQL (started on demand).

    The embedded default connects as its superuser for migrations and serves as qdata_app, a
    member of qdata_service, so row-level security holds there too. Raises ConfigError when only
    QDATA_OWNER_DATABASE_URL is set (see database_problem).
    """
    problem = database_problem(settings)
    if problem:
        raise ConfigError(problem)
    if settings.database_url:
        return Databases(serving=settings.database_url, owner=settings.owner_database_url or settings.database_url)
    from qdata_server import embedded
    from qdata_server.db import roles

    owner = embedded.start(settings.embedded_data_dir)
    return Databases(serving=roles.ensure_service_login(owner, EMBEDDED_SERVICE_LOGIN), owner=owner)


def resolve_owner_database(settings: Settings) -> str:
    """Where operator commands (migrate, status, verify, ...) act: the schema owner's URL.

    QDATA_OWNER_DATABASE_URL, else DATABASE_URL, else the embedded PostgreSQL (started on demand)
    when neither is set. A database given in either variable is the one acted on, never the
    embedded one.
    """
    if settings.owner_database_url or settings.database_url:
        return settings.owner_database_url or settings.database_url
    return resolve_database(settings).owner


async def run_worker(settings: Settings, conninfo: str, address: str, *, reuse_port: bool, on_ready=None) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully."""
    from qdata_server.app import QdataServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = QdataServer(settings, conninfo)
    await server.start(address, reuse_port=reuse_port)
    log.info("serving", extra={"address": address, "port": server.port, "tls": settings.tls})
    if server.health_server is not None:
        log.info("serving health", extra={"address": settings.health_listen_address, "port": server.health_port})
    if on_ready is not None:
        on_ready()
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await server.stop()


def _worker_main(settings: Settings, conninfo: str, address: str, ready) -> None:
    from qdata_server import logs

    logs.configure(settings.log_level)
    asyncio.run(run_worker(settings, conninfo, address, reuse_port=True, on_ready=ready.set))


def _reserve_port(address: str) -> socket.socket:
    """Binds the address with SO_REUSEPORT so workers can bind it too; fails early if taken."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, int(port)))
    return sock


def _banner(
    address: str, *, embedded: bool, dev_token: str | None = None, tls: bool = False, health_address: str = ""
) -> str:
    keep = "Ctrl-C stops it; data stays in the embedded PostgreSQL for the next start.\n" if embedded else ""
    # The development token is printed (to the terminal only, never logged); with configured
    # tokens the example leaves a placeholder.
    token = dev_token or "<token>"
    intro = f"Development token (all permissions, valid until this server stops): {dev_token}\n" if dev_token else ""
    health = f"Health (plaintext, grpc.health.v1.Health only) is on {health_address}.\n" if health_address else ""
    # grpcurl ships in the project's virtualenv (make install); `npx buf` outside the repository
    # would run an unrelated npm package, so the banner names the binaries by path.
    grpcurl = ".venv/bin/grpcurl"
    if tls:
        # With TLS, grpcurl needs the CA (-cacert) and, for mutual TLS, -cert/-key.
        return (
            f"qdata is serving with TLS on {address}. {intro}Try:\n"
            f"  {grpcurl} -cacert <ca.pem> {address} list\n"
            f"{health}{keep}"
        )
    return (
        f"qdata is serving on {address}. {intro}Try:\n"
        f"  {grpcurl} -plaintext {address} list\n"
        f'  {grpcurl} -plaintext -H "authorization: Bearer {token}" '
        f'-d \'{{"login": "alice", "password": "marketplace-demo"}}\' '
        f"{address} qdata.v1.UserService/Authenticate\n"
        f"{health}{keep}"
    )


def serve(settings: Settings) -> int:
    """Runs the service until told to stop; returns the process exit code."""
    from qdata_server import auth
    from qdata_server.db import migrate

    problem = database_problem(settings) or auth.startup_problem(settings)
    if problem:
        log.error("refusing to start: %s", problem)
        sys.stderr.write(f"configuration error: {problem}\n")
        return 2
    # The embedded default without tokens gets a development token, made before the fork so
    # every worker accepts it.
    settings, dev_token = auth.with_dev_token(settings)
    databases = resolve_database(settings)
    conninfo = databases.serving
    # Before the fork: a bad key ring fails once, and the embedded development ring is generated
    # by one process (workers then read it). Missing versions are checked by each worker's start.
    from qdata_server.config import check_tls
    from qdata_server.users import vault

    try:
        check_tls(settings)
        vault.load_key_ring(settings)
    except ConfigError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    if settings.migrate_on_start:
        applied = migrate.migrate(databases.owner)
        log.info("migrations applied", extra={"applied": applied})
    if settings.seed_on_start:
        asyncio.run(seed_database(settings, conninfo))
    address = settings.listen_address
    workers = settings.effective_workers

    def banner() -> str:
        return _banner(
            address,
            embedded=settings.embedded,
            dev_token=dev_token,
            tls=settings.tls,
            health_address=settings.health_listen_address,
        )

    if workers == 1:

        def on_ready() -> None:
            sys.stderr.write(banner())

        asyncio.run(run_worker(settings, conninfo, address, reuse_port=False, on_ready=on_ready))
        return 0

    reserved = _reserve_port(address)
    # The health-only port is shared by the workers the same way.
    reserved_health = _reserve_port(settings.health_listen_address) if settings.health_listen_address else None
    context = multiprocessing.get_context("fork")
    readies = [context.Event() for _ in range(workers)]
    processes = [
        context.Process(target=_worker_main, args=(settings, conninfo, address, ready), name=f"qdata-worker-{i}")
        for i, ready in enumerate(readies)
    ]
    for process in processes:
        process.start()
    stopping = False

    def stop_workers(signum=None, _frame=None) -> None:
        nonlocal stopping
        stopping = stopping or signum is not None
        for process in processes:
            if process.is_alive() and process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    announced = False
    running = list(processes)
    while running:
        if not announced and all(ready.is_set() for ready in readies):
            sys.stderr.write(banner())
            sys.stderr.flush()
            announced = True
        # Wake when a worker exits (or every 0.2 s until all are ready).
        multiprocessing.connection.wait([p.sentinel for p in running], timeout=None if announced else 0.2)
        exited = [p for p in running if not p.is_alive()]
        running = [p for p in running if p.is_alive()]
        if exited and not stopping:
            # A worker died on its own (e.g. the database was unreachable at start): stop the
            # others so the orchestrator sees the failure at once and restarts the whole pod.
            log.error("worker exited unexpectedly; stopping", extra={"exit_codes": [p.exitcode for p in exited]})
            stopping = True
            stop_workers()
    reserved.close()
    if reserved_health is not None:
        reserved_health.close()
    failed = [p.exitcode for p in processes if p.exitcode not in (0, -signal.SIGTERM)]
    return 1 if failed else 0


async def seed_database(settings: Settings, conninfo: str) -> None:
    """Loads the sample data through a short-lived pool (before any worker is forked)."""
    from qdata_server.app import Deps
    from qdata_server.db.pool import open_pool
    from qdata_server.seed import seed
    from qdata_server.users.passwords import PasswordHasher

    pool = await open_pool(settings, conninfo)
    try:
        deps = Deps(settings=settings, pool=pool, passwords=await PasswordHasher.create(settings))
        await seed(deps)
    finally:
        await pool.close()
