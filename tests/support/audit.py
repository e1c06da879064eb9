"""The audit sealer, run by a test when it needs every audit event chained (the test servers run
no background sealer: TEST_SETTINGS.audit_seal_seconds is 0)."""

from __future__ import annotations

import psycopg

from qdata_server import audit_sealer
from tests.support.database import Target, url_of


async def seal(target: Target, *, wait: bool = False) -> int:
    """Seals every audit event whose transaction has ended, as the owner; returns how many.

    With wait, first waits for a sealer at work to finish (it takes the seal lock itself, which
    audit_seal then holds again), so no such event is left unsealed even beside other sealers.
    """
    if not wait:
        return await audit_sealer.seal_all(url_of(target))
    async with await psycopg.AsyncConnection.connect(url_of(target), autocommit=True) as conn:
        total = 0
        while True:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('qdata.audit_seal', 0))")
                row = await (await conn.execute("SELECT audit_seal(%s)", (audit_sealer.BATCH,))).fetchone()
            assert row is not None
            total += row[0]
            if row[0] < audit_sealer.BATCH:
                return total
