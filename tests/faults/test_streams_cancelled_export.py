"""A cancelled ExportSession ends cleanly: its log line, its connection back, no stray task error."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from qdata.v1 import chat_pb2
from tests.support.calls import create_user
from tests.support.chat import append, create_session

pytestmark = pytest.mark.slow

ROUNDS = 3
EXPORTS = 36
EXPORT = "/qdata.v1.ChatService/ExportSession"


async def test_cancelled_exports_log_their_line_and_return_their_connections(api, caplog):
    caplog.set_level(logging.INFO)
    user = await create_user(api)
    session = await create_session(api, user.id)
    # Small chunks: most cancels find the server-side stream between two messages (gRPC then
    # abandons the generator, which is finalized in another task) rather than in the database.
    for batch in range(5):
        await append(api, session, *[f"batch {batch} line {i}" for i in range(100)])
    caplog.clear()
    for _ in range(ROUNDS):
        streams = [
            api.chat.ExportSession(chat_pb2.ExportSessionRequest(user_id=session.user_id, session_id=session.id))
            for _ in range(EXPORTS // ROUNDS)
        ]
        for stream in streams:
            assert len((await stream.read()).messages) == 100
        for stream in streams:
            stream.cancel()

    def export_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "qdata.rpc" and getattr(r, "method", "") == EXPORT]

    pool = api.server.pool
    returned = False
    for _ in range(100):
        # Abandoned generators are finalized when collected; make that happen now.
        gc.collect()
        stats = pool.get_stats()
        # Every connection back (the health probe borrows one now and then, so this is polled).
        returned = stats.get("pool_available", 0) == stats.get("pool_size", -1) and not stats.get("requests_waiting")
        if len(export_lines()) == EXPORTS and returned:
            break
        await asyncio.sleep(0.05)
    gc.collect()
    await asyncio.sleep(0.1)
    # One line per call: CANCELLED, or OK for an export the server had finished sending already.
    codes = [r.code for r in export_lines()]
    assert len(codes) == EXPORTS and set(codes) <= {"OK", "CANCELLED"} and "CANCELLED" in codes, codes
    assert returned, pool.get_stats()
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert problems == [], problems
