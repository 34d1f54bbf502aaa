"""Fixtures of the auth tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from libs.runtime import Stack
from tests.services.auth.helpers import client_for, random_ip


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A client with an IP of its own, so one test's failed logins never count against another's."""
    async with client_for(stack, random_ip()) as client:
        yield client
