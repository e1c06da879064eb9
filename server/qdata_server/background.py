"""Periodic background work in a worker: one loop shape for every job, and how to stop it.

The health monitor, the expired-hold sweeper, the idempotency purge and the usage upkeep all run
through `every`: wait, run the job if the server is serving, log a failure by type (never the
text: it may carry SQL or values) and go on. They end only by cancellation (`cancel`), which
QdataServer.stop does before it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from qdata_server import callctx


def _always() -> bool:
    return True


async def every(
    interval: Callable[[], float],
    job: Callable[[], Awaitable[object]],
    *,
    log: logging.Logger,
    failure: str,
    when: Callable[[], bool] = _always,
    wait_first: bool = True,
) -> None:
    """Runs job every interval() seconds until cancelled, skipping rounds in which when() is false.

    wait_first=False runs the first round at once. A job that raises is logged as `failure` with
    the exception's type and tried again next round.
    """
    while True:
        if wait_first:
            await asyncio.sleep(interval())
        if when():
            try:
                await job()
            except Exception as exc:
                log.warning(failure, extra={"error_type": type(exc).__name__})
        if not wait_first:
            await asyncio.sleep(interval())


@contextlib.contextmanager
def deadline(seconds: float, name: str) -> Iterator[None]:
    """Bounds the database work of a job run inside by seconds, as a caller's deadline bounds an RPC.

    db/transactions.py sets each statement's statement_timeout from the time left (and refuses to
    start one with none left, DEADLINE_EXCEEDED), so a job on a slow database gives up instead of
    running on. name stands for the method in what reads the call context (logs, metrics).
    """
    token = callctx.bind(callctx.CallContext(method=name, actor="qdata", deadline=time.monotonic() + seconds))
    try:
        yield
    finally:
        callctx.unbind(token)


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancels a background task and waits for it to end.

    The cancellation is repeated: a CancelledError that lands inside a library's own wait (the
    pool's connection checkout) can be absorbed there, and a single cancel would then leave stop()
    waiting forever on a task that keeps running.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled():
        task.exception()  # retrieved: a background task's failure was already logged by the task
