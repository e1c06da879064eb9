"""Process lifecycle: prepare the database, fork workers that share the port, stop cleanly.

The parent first claims the listen (and health) port for itself, so a second qdata, or another
program on the address, fails at once with a one-line error and exit 2. It then prepares the
database (embedded start, migrations, sample data) and reserves the port, then forks; only then
does each worker build its gRPC server and pool, since neither survives a fork. Workers share the
port through SO_REUSEPORT. SIGTERM or SIGINT to the parent makes every worker refuse new calls
(UNAVAILABLE), report NOT_SERVING, drain in-flight RPCs within the grace period, cancel what is
left and close its pool; the parent then exits 0. Any other worker exit (a crash, a kill, a
SIGTERM sent to that worker alone) is an error: the parent stops the others and exits 1. With one
worker the server runs in the parent's process, and a crash there exits non-zero as well.
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
import time
from collections.abc import Callable, Iterable
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import IO, TYPE_CHECKING

from qdata_server import inputs, metrics, tracing
from qdata_server.config import ConfigError, Settings
from qdata_server.startup import StartupError

if TYPE_CHECKING:
    from qdata_server.importer import run as importer_run

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


async def run_worker(
    settings: Settings,
    conninfo: str,
    address: str,
    *,
    reuse_port: bool,
    on_ready: Callable[[], None] | None = None,
    runtime_inputs: inputs.RuntimeInputs | None = None,
    worker_index: int = 0,
) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully (StartupError if it cannot start)."""
    from qdata_server.app import QdataServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Each serving process makes its own tracer provider (its export thread does not survive a fork).
    tracing.start()
    try:
        server = QdataServer(settings, conninfo, runtime_inputs, worker_index=worker_index)
        await server.start(address, reuse_port=reuse_port)
    except BaseException:
        tracing.shutdown()
        raise
    log.info("serving", extra={"address": address, "port": server.port, "tls": settings.tls})
    if server.health_server is not None:
        log.info("serving health", extra={"address": settings.health_listen_address, "port": server.health_port})
    if on_ready is not None:
        on_ready()
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    try:
        await server.stop()
    finally:
        # The spans still queued are exported before the process ends.
        await asyncio.to_thread(tracing.shutdown)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _worker_main(
    settings: Settings,
    conninfo: str,
    address: str,
    ready: Event,
    runtime_inputs: inputs.RuntimeInputs,
    worker_index: int = 0,
) -> None:
    """A worker process's entry: serves with the parent's inputs; a refused start exits 1 with its message."""
    from qdata_server import logs

    # The parent forks with SIGTERM and SIGINT blocked and its own handlers installed: a worker
    # starts from the default action, then unblocks (a signal that arrived in between ends it
    # now, which the parent sees) until run_worker installs its graceful handlers.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    logs.configure(settings.log_level)
    try:
        asyncio.run(
            run_worker(
                settings,
                conninfo,
                address,
                reuse_port=True,
                on_ready=ready.set,
                runtime_inputs=runtime_inputs,
                worker_index=worker_index,
            )
        )
    except StartupError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(1)


class AddressTaken(Exception):
    """The listen (or health) address is already served; the message is the whole one-line error."""


def _split(address: str) -> tuple[int, str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    return (socket.AF_INET6 if ":" in host else socket.AF_INET), host, int(port)


def _claim_address(address: str) -> socket.socket | None:
    """Makes this process the only qdata serving address's port, and checks nothing else listens.

    The claim is an abstract unix socket named after the port (Linux): binding it is atomic, so of
    two qdata starting at once exactly one wins, and the kernel releases it when the last process
    holding it dies (the workers inherit it), so a SIGKILLed qdata never blocks its restart. It is
    per network namespace, like the port itself. A claim is needed because the workers share the
    port through SO_REUSEPORT, which would also let a second qdata bind it and split the calls.
    Then a plain bind (SO_REUSEADDR, no SO_REUSEPORT) fails if any other program listens on the
    address. Returns the claim, to keep open while serving (None for port 0: nothing to share).
    """
    family, host, port = _split(address)
    if port == 0:
        return None
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0qdata-serve-port-{port}")
    except OSError:
        claim.close()
        raise AddressTaken(f"cannot serve on {address}: another qdata process already serves port {port}") from None
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        claim.close()
        raise AddressTaken(f"cannot serve on {address}: {exc.strerror or exc} (errno {exc.errno})") from None
    finally:
        probe.close()
    return claim


def _reserve_port(address: str) -> socket.socket:
    """Binds the address with SO_REUSEPORT so workers can bind it too (after _claim_address)."""
    family, host, port = _split(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AddressTaken(f"cannot serve on {address}: {exc.strerror or exc} (errno {exc.errno})") from None
    return sock


def _banner(
    address: str,
    *,
    embedded: bool,
    dev_token: str | None = None,
    tls: bool = False,
    health_address: str = "",
    metrics_address: str = "",
) -> str:
    keep = "Ctrl-C stops it; data stays in the embedded PostgreSQL for the next start.\n" if embedded else ""
    # The development token is printed (to the terminal only, never logged); with configured
    # tokens the example leaves a placeholder.
    token = dev_token or "<token>"
    intro = f"Development token (all permissions, valid until this server stops): {dev_token}\n" if dev_token else ""
    health = f"Health (plaintext, grpc.health.v1.Health only) is on {health_address}.\n" if health_address else ""
    if metrics_address:
        health += f"Prometheus metrics: http://{metrics_address}/metrics\n"
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
    """Runs the service until told to stop; returns the process exit code.

    With metrics on, a fresh PROMETHEUS_MULTIPROC_DIR exists while it runs (metrics.py).
    """
    if not settings.metrics_listen_address:
        return _serve(settings)
    metrics_dir = metrics.prepare_dir()
    try:
        return _serve(settings)
    finally:
        metrics.remove_dir(metrics_dir)


def _serve(settings: Settings) -> int:
    """serve's body.

    A configuration problem found before anything starts is exit 2 (written here); one found
    later (an unusable TLS or key ring file, a key ring that lacks a stored key's version) raises
    StartupError, which the command line turns into exit 1 (see __main__.py).
    """
    from qdata_server import auth
    from qdata_server.db import migrate

    problem = database_problem(settings) or auth.startup_problem(settings) or tracing.env_problem()
    if problem:
        log.error("refusing to start: %s", problem)
        sys.stderr.write(f"configuration error: {problem}\n")
        return 2
    # First, before the database is touched: a second qdata on the same port, or another program
    # on it, is a one-line error (exit 2). The claims stay open while this process serves.
    claims: list[socket.socket | None] = []
    try:
        for claimed in filter(None, (settings.listen_address, settings.health_listen_address)):
            claims.append(_claim_address(claimed))
    except AddressTaken as exc:
        _release(claims)
        sys.stderr.write(f"qdata: {exc}\n")
        return 2
    # The embedded default without tokens gets a development token, made before the fork so
    # every worker accepts it.
    settings, dev_token = auth.with_dev_token(settings)
    databases = resolve_database(settings)
    conninfo = databases.serving
    # Before the fork, once: a bad key ring fails once, the embedded development ring is generated
    # by one process, and every worker serves with these bytes (see inputs.py). Missing key ring
    # versions are checked by each worker's start.
    try:
        runtime_inputs = inputs.load(settings)
    except ConfigError as exc:
        raise StartupError(f"configuration error: {exc}") from None
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
            metrics_address=settings.metrics_listen_address,
        )

    if workers == 1:
        try:
            http = metrics.serve_http(settings.metrics_listen_address) if settings.metrics_listen_address else None
        except OSError as exc:
            _release(claims)
            sys.stderr.write(f"qdata: cannot serve metrics on {settings.metrics_listen_address}: {exc.strerror}\n")
            return 2

        def on_ready() -> None:
            sys.stderr.write(banner())

        try:
            asyncio.run(
                run_worker(
                    settings, conninfo, address, reuse_port=False, on_ready=on_ready, runtime_inputs=runtime_inputs
                )
            )
        except StartupError:
            raise  # the command line's to report (exit 1)
        except Exception as exc:
            # In-process serving: a crash is this process's failure (type only: text may carry SQL).
            log.error("server failed", extra={"error_type": type(exc).__name__})
            return 1
        finally:
            if http is not None:
                http.shutdown()
            _release(claims)
        return 0

    try:
        reserved = [_reserve_port(address)]
        # The health-only port is shared by the workers the same way.
        if settings.health_listen_address:
            reserved.append(_reserve_port(settings.health_listen_address))
    except AddressTaken as exc:
        sys.stderr.write(f"qdata: {exc}\n")
        return 2
    try:
        return _supervise(settings, conninfo, address, workers, banner, runtime_inputs)
    finally:
        _release([*reserved, *claims])


def _release(sockets: Iterable[socket.socket | None]) -> None:
    for sock in sockets:
        if sock is not None:
            sock.close()


# Beyond the grace period, how long the parent waits for stopping workers before SIGKILL.
KILL_MARGIN_SECONDS = 20.0


def _supervise(
    settings: Settings,
    conninfo: str,
    address: str,
    workers: int,
    banner: Callable[[], str],
    runtime_inputs: inputs.RuntimeInputs,
) -> int:
    """Forks the workers and waits for them; returns the exit code.

    Every worker exit is noticed once, from the sentinels that `wait` reports (each exit code is
    read after that, so no death can fall between two looks). An exit the parent did not ask for
    (a crash, SIGKILL, a SIGTERM sent to that worker alone) is logged as an error naming the
    worker, the others are stopped and the parent exits 1, so the orchestrator restarts the whole
    pod instead of leaving it serving at reduced capacity. The parent exits 0 only when it was
    itself told to stop (SIGTERM or SIGINT) and every worker then stopped cleanly; workers still
    running KILL_MARGIN_SECONDS after the grace period are killed.
    """
    context = multiprocessing.get_context("fork")
    readies = [context.Event() for _ in range(workers)]
    processes = [
        context.Process(
            target=_worker_main,
            args=(settings, conninfo, address, ready, runtime_inputs, i),
            name=f"qdata-worker-{i}",
        )
        for i, ready in enumerate(readies)
    ]
    asked = False

    def on_stop_signal(_signum: int, _frame: object) -> None:
        # Only a flag: the wake-up fd below wakes the loop, which does the rest.
        nonlocal asked
        asked = True

    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    # Blocked while forking, so no worker ever runs the parent's handler (see _worker_main).
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, on_stop_signal)
    signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
    try:
        for process in processes:
            process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    running = {process.sentinel: process for process in processes}
    failed = False
    http = None
    if settings.metrics_listen_address:
        # After the fork: the workers must not inherit the serving thread's socket.
        try:
            http = metrics.serve_http(settings.metrics_listen_address)
        except OSError as exc:
            log.error(
                "cannot serve metrics; stopping",
                extra={"address": settings.metrics_listen_address, "error": exc.strerror},
            )
            failed = True
    unclean = False
    stop_sent_at: float | None = None
    killed = False
    announced = False
    kill_after = settings.shutdown_grace_seconds + KILL_MARGIN_SECONDS
    try:
        while running:
            now = time.monotonic()
            if (asked or failed) and stop_sent_at is None:
                _signal_all(running.values(), signal.SIGTERM)
                stop_sent_at = now
            if stop_sent_at is not None and not killed and now >= stop_sent_at + kill_after:
                log.error(
                    "workers still running after the grace period; killing them",
                    extra={"workers": sorted(p.name for p in running.values())},
                )
                _signal_all(running.values(), signal.SIGKILL)
                killed = True
            if not announced and all(ready.is_set() for ready in readies):
                sys.stderr.write(banner())
                sys.stderr.flush()
                announced = True
            timeout = None if announced else 0.2
            if stop_sent_at is not None and not killed:
                left = max(0.0, stop_sent_at + kill_after - now)
                timeout = left if timeout is None else min(timeout, left)
            for ready in multiprocessing.connection.wait([wake_read, *running], timeout=timeout):
                if ready is wake_read:
                    with contextlib.suppress(BlockingIOError):
                        while wake_read.recv(512):
                            pass
                    continue
                assert isinstance(ready, int)  # a sentinel: wake_read is the only socket waited on
                process = running.pop(ready)
                # The sentinel closes as the worker exits; join reaps it (at once, or within
                # microseconds while the kernel finishes the exit).
                process.join()
                code = process.exitcode
                if http is not None and process.pid is not None:
                    metrics.mark_dead(process.pid)
                if asked or failed:
                    if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                        unclean = True
                        log.error("worker failed while stopping", extra={"worker": process.name, "exit_code": code})
                    continue
                failed = True
                log.error(
                    "worker exited unexpectedly; stopping the others",
                    extra={"worker": process.name, "worker_pid": process.pid, "exit_code": code},
                )
    finally:
        if http is not None:
            http.shutdown()
        signal.set_wakeup_fd(-1)
        wake_read.close()
        wake_write.close()
    return 0 if asked and not (failed or unclean or killed) else 1


def _signal_all(processes: Iterable[BaseProcess], sig: int) -> None:
    for process in processes:
        # Not reaped yet (still in `running`), so the pid cannot belong to another process.
        if process.pid is not None:  # started: every process in `running` was
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)


async def import_database(
    settings: Settings, conninfo: str, stream: IO[str], *, dry_run: bool, jobs: int
) -> importer_run.Report:
    """Runs `import` through a short-lived pool, as the serving login (RLS and all)."""
    from qdata_server.db.pool import open_pool
    from qdata_server.deps import Deps
    from qdata_server.importer import run as importer_run
    from qdata_server.users import vault
    from qdata_server.users.passwords import PasswordHasher

    pool = await open_pool(settings, conninfo)
    try:
        deps = Deps(
            settings=settings,
            pool=pool,
            passwords=await PasswordHasher.create(settings),
            key_ring=vault.load_key_ring(settings),
        )
        return await importer_run.run_import(deps, stream, dry_run=dry_run, jobs=jobs)
    finally:
        await pool.close()


async def seed_database(settings: Settings, conninfo: str) -> None:
    """Loads the sample data through a short-lived pool (before any worker is forked)."""
    from qdata_server.db.pool import open_pool
    from qdata_server.deps import Deps
    from qdata_server.seed import seed
    from qdata_server.users.passwords import PasswordHasher

    pool = await open_pool(settings, conninfo)
    try:
        deps = Deps(settings=settings, pool=pool, passwords=await PasswordHasher.create(settings))
        await seed(deps)
    finally:
        await pool.close()
