"""The audit sealer, run by a test when it needs every audit event chained (the test servers run
no background sealer: TEST_SETTINGS.audit_seal_seconds is 0)."""

from __future__ import annotations

from qdata_server import audit_sealer
from tests.support.database import Target, url_of


async def seal(target: Target) -> int:
    """Seals every audit event whose transaction has ended, as the owner; returns how many."""
    return await audit_sealer.seal_all(url_of(target))
