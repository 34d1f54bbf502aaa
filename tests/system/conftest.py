"""Fixtures of the browser tests: a headless chromium, and the whole platform on a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from libs.runtime import Stack
from tests.browser import chromium
from tests.conftest import serving


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """A headless chromium (a playwright Browser) for the module's tests."""
    async with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
async def live_url(stack: Stack) -> AsyncIterator[str]:
    """The whole platform on a real socket (gateway, auth, query, dashboard)."""
    async with serving(stack.app()) as url:
        yield url
