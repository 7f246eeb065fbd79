"""Every conformance scenario runs on both brokers: in memory, and on a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ..conftest import StartHub
from ..redis_fixtures import BROKERS, hubs_on


@pytest.fixture(params=BROKERS)
async def start_hub(request: pytest.FixtureRequest) -> AsyncIterator[StartHub]:
    async for start in hubs_on(request.param):
        yield start
