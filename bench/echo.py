"""The reference: a bare grpc.aio server with one unary method that returns its request bytes.

No codegen, no interceptor, no database: a generic handler without (de)serializers, so the
handler receives and returns raw bytes. It follows qdata's process model so the ratio compares
like with like: one worker serves in the process itself; with more workers the parent reserves
the port on a plain SO_REUSEPORT socket and forks, and each child builds its own server with
`grpc.so_reuseport` (grpc's examples/python/multiprocessing, as qdata_server.serve does).

    python -m bench.echo --address 127.0.0.1:PORT [--workers W]

Prints "ready" on stdout once every worker serves; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import sys

SERVICE = "bench.Echo"
METHOD = "Echo"
PATH = f"/{SERVICE}/{METHOD}"


async def _echo(request: bytes, context) -> bytes:
    return request


async def _serve(address: str, *, reuse_port: bool, on_ready) -> None:
    import grpc
    from grpc import aio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    handler = grpc.method_handlers_generic_handler(SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(_echo)})
    server = aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(address)
    await server.start()
    on_ready()
    await stop.wait()
    await server.stop(1.0)


def _worker(address: str, ready) -> None:
    asyncio.run(_serve(address, reuse_port=True, on_ready=ready.set))


def _say_ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="host:port to listen on")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the port")
    args = parser.parse_args(argv)

    if args.workers == 1:
        asyncio.run(_serve(args.address, reuse_port=False, on_ready=_say_ready))
        return 0

    # Forked before any gRPC object exists in this process (grpc is imported in the children).
    host, _, port = args.address.rpartition(":")
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((host, int(port)))
    context = multiprocessing.get_context("fork")
    readies = [context.Event() for _ in range(args.workers)]
    processes = [context.Process(target=_worker, args=(args.address, ready)) for ready in readies]
    for process in processes:
        process.start()

    def forward(signum, _frame):
        for process in processes:
            if process.is_alive() and process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if all(ready.wait(timeout=60) for ready in readies):
        _say_ready()
    for process in processes:
        process.join()
    reserved.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
