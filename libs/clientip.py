"""Who a request comes from: the socket peer, or what a trusted proxy says in X-Forwarded-For.

One rule for every service (the gateway's events, the auth service's per-IP login limit), set by
`TRUSTED_PROXIES`. uvicorn's own X-Forwarded-For rewriting is switched off (`services/runner.py`) so
that this is the only place the header is believed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache

# Parsing an address is most of the cost of a request that comes through a proxy (about a fifth of the
# gateway's CPU per event with X-Forwarded-For, in bench pipeline's profile); a site's visitors send
# request after request from the same addresses, so the answers are cached (bounded: any header a
# client makes up only pushes older answers out).
CACHED_ADDRESSES = 65_536


class TrustedProxies:
    """Client IP from the socket, or from X-Forwarded-For when the socket peer is a trusted proxy."""

    def __init__(self, cidrs: str) -> None:
        self.networks = [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs.split(",") if c.strip()]
        # Whether an address is one of the trusted proxies, cached per instance (see CACHED_ADDRESSES).
        self.trusted: Callable[[str], bool] = lru_cache(maxsize=CACHED_ADDRESSES)(self._trusted)

    def _trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        if not forwarded_for or not self.trusted(peer):
            return peer
        # Walk from the nearest hop outwards; the first address not of our proxies is the client.
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusted(hop):
                return hop if _is_ip(hop) else peer
        return hops[0] if hops and _is_ip(hops[0]) else peer


@lru_cache(maxsize=CACHED_ADDRESSES)
def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
