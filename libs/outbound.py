"""Outbound HTTP: one managed, pooled client per process for calls to the outside world (webhook
deliveries, external metric sources), and the guard that keeps those calls off internal networks.

`shared_outbound(runtime)` opens the process's one `httpx.AsyncClient` (connect/read/write/pool
timeouts, a connection limit, no redirects followed, no proxy variables read) on the first service
start that asks for it; `release_outbound(runtime)` closes it when the last of them stops.

SSRF guard (`public_target`): a target URL is resolved and refused when any address it resolves to
is not globally routable: private (10/8, 172.16/12, 192.168/16, fc00::/7), loopback, link-local
(169.254/16 with the cloud metadata address, fe80::/10), multicast, reserved, unspecified, shared
(100.64/10), documentation ranges, and IPv4-mapped or 6to4 IPv6 forms of those. `send` then connects
to the very address it checked (the URL's host replaced by it, the name kept in `Host` and in TLS's
SNI and certificate check), so a name that resolves to a public address when checked and to an
internal one a moment later (DNS rebinding) cannot redirect the request. `allow_private` (the
`WEBHOOK_ALLOW_PRIVATE` setting) lifts the guard, for a receiver on one's own network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any

import httpx

from libs.logs import get_logger
from libs.settings import Settings

log = get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(ValueError):
    """A URL that may not be called: not http(s), no host, unresolvable, or resolving to a non-global address."""


def non_global(ip: IPAddress) -> str | None:
    """Why `ip` is no address of the public internet (None when it is one)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            reason = non_global(embedded)
            return f"{reason} (IPv4 inside IPv6)" if reason else None
    for reason, flag in (
        ("loopback", ip.is_loopback), ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified), ("reserved", ip.is_reserved), ("private", ip.is_private),
    ):
        if flag:
            return reason
    return None if ip.is_global else "not globally routable"


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (`urls`, the URL with its host replaced by each address that
    passed, in the resolver's order) and the original name."""

    urls: tuple[httpx.URL, ...]
    host: str  # the name the URL had: the Host header and the TLS server name
    scheme: str
    port: int | None


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise TargetRefused(f"not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise TargetRefused("only http:// and https:// URLs are allowed")
    if not parsed.host:
        raise TargetRefused("the URL has no host")
    if parsed.userinfo:
        raise TargetRefused("the URL may not carry a user name or password")
    return parsed


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an address literal: itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetRefused(f"{host} does not resolve") from exc
    found: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    if not found:
        raise TargetRefused(f"{host} does not resolve")
    return found


async def public_target(url: str, allow_private: bool) -> Target:
    """`url` checked for the guard (see the module's docstring); TargetRefused says why not."""
    parsed = _parse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await resolve(parsed.host, port)
    if not allow_private:
        for ip in addresses:
            reason = non_global(ip)
            if reason:
                raise TargetRefused(
                    f"{parsed.host} resolves to {ip}, a {reason} address; such targets are refused "
                    "(WEBHOOK_ALLOW_PRIVATE=true allows them)")
    return Target(urls=tuple(parsed.copy_with(host=str(ip)) for ip in addresses), host=parsed.host,
                  scheme=parsed.scheme, port=parsed.port)


@dataclass(frozen=True)
class Sent:
    """What a guarded request came to: a status code, or an error; and how long it took."""

    status_code: int | None
    error: str | None
    duration_ms: int
    body: bytes = b""


class Outbound:
    """The process's pooled HTTP client for outside calls; `start` before use, `close` at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: httpx.AsyncClient | None = None
        self.opened = 0  # how many clients this object opened (one per process life)

    async def start(self) -> None:
        if self.client is not None:
            return
        s = self.settings
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=s.outbound_connect_timeout_s, read=s.outbound_read_timeout_s,
                                  write=s.outbound_read_timeout_s, pool=s.outbound_connect_timeout_s),
            limits=httpx.Limits(max_connections=s.outbound_max_connections,
                                max_keepalive_connections=s.outbound_max_connections),
            follow_redirects=False,  # a redirect could point anywhere, past the guard
            trust_env=False,
            headers={"user-agent": "analytics-platform/1 (+webhooks)"},
        )
        self.opened += 1

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()

    @property
    def is_open(self) -> bool:
        return self.client is not None and not self.client.is_closed

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            raise RuntimeError("the outbound HTTP client is not started")
        return self.client

    async def get_json(self, url: str, params: dict[str, str]) -> Any:
        """GET a JSON answer from a configured (trusted) API; httpx errors and 4xx/5xx are raised."""
        response = await self._client().get(url, params=params)
        response.raise_for_status()
        return response.json()

    async def send(self, url: str, body: bytes, headers: dict[str, str], allow_private: bool) -> Sent:
        """POST `body` to `url` through the guard (resolved, checked, connected to the checked address).
        Never raises for the target's faults: they come back as `Sent.error`."""
        began = time.monotonic()

        def took() -> int:
            return round((time.monotonic() - began) * 1000)

        try:
            target = await public_target(url, allow_private)
        except TargetRefused as exc:
            return Sent(None, f"refused: {exc}", took())
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        host_header = target.host if target.port is None else f"{target.host}:{target.port}"
        error = ""
        for address_url in target.urls:  # the checked addresses in turn, while one cannot be connected to
            try:
                response = await self._client().post(
                    address_url, content=body, headers={**headers, "host": host_header}, extensions=extensions,
                )
            except httpx.ConnectError as exc:
                error = f"ConnectError: {exc}"[:500]
                continue
            except httpx.TimeoutException as exc:
                return Sent(None, f"timed out: {type(exc).__name__}", took())
            except httpx.HTTPError as exc:
                return Sent(None, f"{type(exc).__name__}: {exc}"[:500], took())
            return Sent(response.status_code, None, took(), response.content[:2048])
        return Sent(None, error, took())


async def shared_outbound(runtime: Any) -> Outbound:
    """The process's one Outbound, opened by the first service start that needs it; each caller
    releases it with `release_outbound` at its stop, the last one closes it."""
    async with runtime.shared.setdefault("outbound_lock", asyncio.Lock()):
        outbound: Outbound | None = runtime.shared.get("outbound")
        if outbound is None:
            outbound = runtime.shared["outbound"] = Outbound(runtime.settings)
        await outbound.start()
        runtime.shared["outbound_users"] = runtime.shared.get("outbound_users", 0) + 1
        return outbound


async def release_outbound(runtime: Any) -> None:
    async with runtime.shared.setdefault("outbound_lock", asyncio.Lock()):
        users = runtime.shared.get("outbound_users", 0) - 1
        runtime.shared["outbound_users"] = max(users, 0)
        outbound: Outbound | None = runtime.shared.get("outbound")
        if users <= 0 and outbound is not None:
            await outbound.close()
            log.info("outbound HTTP client closed")
