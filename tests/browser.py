"""Debian's chromium driven by Playwright (no browser download): what the browser tests share."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from typing import Any

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_PLAYWRIGHT = "playwright is not installed (pip install playwright; no browser download needed)"
NO_CHROMIUM = "no chromium on PATH (apt-get install chromium)"


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless chromium (a playwright Browser), closed on leaving."""
    pw = await async_playwright().start()
    launched = await pw.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
    )
    try:
        yield launched
    finally:
        await launched.close()
        await pw.stop()
