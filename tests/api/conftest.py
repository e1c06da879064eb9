"""Fixtures shared by the API tests beyond tests/conftest.py's."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from tests.conftest import TEST_SETTINGS, Api, start_api, stop_api


@pytest.fixture
async def unfolded_api(database_url: str) -> AsyncIterator[Api]:
    """A server whose background usage folder is off: the test decides what is folded, and the
    rollup queue keeps every record until then."""
    api = await start_api(database_url, dataclasses.replace(TEST_SETTINGS, usage_fold_seconds=0))
    try:
        yield api
    finally:
        await stop_api(api)
