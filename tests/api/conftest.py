"""Fixtures shared by the API tests beyond tests/conftest.py's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.support.server import Api


@pytest.fixture
async def unfolded_api(api_with: Callable[..., Awaitable[Api]]) -> Api:
    """A server whose background usage folder is off: the test decides what is folded, and the
    rollup queue keeps every record until then."""
    return await api_with(usage_fold_seconds=0)
