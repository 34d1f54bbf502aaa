"""A real OpenID provider for the sign-in tests: the certified npm package oidc-provider, run with
Node.js (provider.mjs beside this file; `make test` installs it from package-lock.json)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx

from libs.embedded.procs import free_port

HERE = Path(__file__).parent
NODE = shutil.which("node")
NO_NODE = "no node on PATH (apt-get install nodejs npm): the OpenID provider of these tests runs on Node.js"
CLIENT_ID = "analytics-dashboard"
CLIENT_SECRET = "a-test-client-secret-of-some-length"
PASSWORD = "any password works at this provider"


@dataclass(frozen=True)
class Provider:
    url: str  # its issuer

    async def account(self, login: str, email: str, verified: bool) -> None:
        """What the claims of the account signed in as `login` say about its email."""
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{self.url}/test/accounts",
                                params={"id": login, "email": email, "email_verified": str(verified).lower()})
            assert r.status_code == 204, r.text

    async def set_clock(self, offset_s: int) -> None:
        """Run the provider's clock `offset_s` seconds off ours (0: back to true time)."""
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{self.url}/test/clock", params={"offset": offset_s})
            assert r.status_code == 204, r.text


@contextlib.asynccontextmanager
async def openid_provider(redirect_uri: str) -> AsyncIterator[Provider]:
    """The provider on a free port, with one client (CLIENT_ID) that may redirect to `redirect_uri`."""
    assert NODE is not None, NO_NODE
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        raise AssertionError("the test OpenID provider is not installed: run `make test` (or `npm ci` in tests/oidc)")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        NODE, "provider.mjs", str(port), redirect_uri, CLIENT_ID, CLIENT_SECRET,
        cwd=HERE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        async with httpx.AsyncClient() as http:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{url}/.well-known/openid-configuration")).status_code == 200:
                        break
                if proc.returncode is not None or time.monotonic() > deadline:
                    out = await proc.stdout.read() if proc.stdout and proc.returncode is not None else b""
                    raise AssertionError(f"the OpenID provider did not start: {out.decode(errors='replace')}")
                await asyncio.sleep(0.05)
        yield Provider(url)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def through_provider(
    http: httpx.AsyncClient, url: str, login: str, stop_at: str, asks_to_log_in: bool | None = None
) -> str:
    """Follow the browser's way from `url` (our /oidc/login, or an authorization URL) through the
    provider, signing in as `login` at its login page when it asks, to the first URL under `stop_at`
    (our callback, with the provider's answer in its query): that URL, not yet visited.
    `asks_to_log_in`: whether the provider must (True) or must not (False) show its login page."""
    asked = False
    for _ in range(20):
        if url.startswith(stop_at):
            assert asks_to_log_in in (None, asked), f"the provider {'did not ask' if asks_to_log_in else 'asked'} to log in"
            return url
        r = await http.get(url)
        if r.status_code in (302, 303):
            url = urljoin(url, r.headers["location"])
            continue
        assert r.status_code == 200, (url, r.status_code, r.text[:500])
        action = re.search(r'<form[^>]*action="([^"]+)"', r.text)
        assert action and 'name="login"' in r.text, r.text[:500]
        asked = True
        r = await http.post(urljoin(url, action.group(1)), data={"prompt": "login", "login": login, "password": PASSWORD})
        assert r.status_code in (302, 303), (r.status_code, r.text[:500])
        url = urljoin(url, r.headers["location"])
    raise AssertionError("too many redirects on the way through the provider")
