"""A site's ingest rules (issue #19), from its record in the app directory (libs/apps.py):

* `excluded_ips`: addresses and CIDR ranges (IPv4 and IPv6) whose events are dropped. The request is
  answered as if they were taken (202, the same body), as Plausible does, so that the exclusion is not
  revealed; `gateway_events_excluded_total` counts them. The address checked is the client's as the
  gateway computes it (libs/clientip.TrustedProxies), or the one an event states (`ipAddress`, sent by
  a server on a visitor's behalf).
* `allowed_origins`: when the list is not empty, a write key (wk_) takes browser requests (those with
  an `Origin` header) only from these origins: exact ones (`https://example.com`) or every subdomain of
  one (`*.example.com` for http and https, `https://*.example.com` for https only). Other origins get
  403. Requests without `Origin` (servers, SDKs) and secret keys are not affected.

Rules are parsed once per record version (`RuleBook`); a request for an app without rules costs one
dict lookup.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import Counter

from libs.http import ApiError
from libs.logs import get_logger

log = get_logger(__name__)

EVENTS_EXCLUDED = Counter("gateway_events_excluded_total", "Events dropped because their IP is excluded by the site")
ORIGIN_REFUSED = Counter("gateway_origin_refused_total", "Write-key requests refused (403) for their Origin")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_DEFAULT_PORTS = {"http": 80, "https": 443}


class SiteRecord(Protocol):
    """What the rules read of an app's record (libs.apps.AppRecord)."""

    @property
    def version(self) -> Any: ...
    @property
    def excluded_ips(self) -> tuple[str, ...]: ...
    @property
    def allowed_origins(self) -> tuple[str, ...]: ...


def _origin(scheme: str, host: str, port: int | None) -> str:
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{scheme}://{host}:{port}"


def normalize_origin(value: str) -> str | None:
    """`scheme://host[:port]` in lower case without a default port, or None when `value` is no
    http(s) origin (a browser's `Origin: null` included)."""
    try:
        parts = urlsplit(value.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return _origin(parts.scheme, parts.hostname, port)


@dataclass(frozen=True, slots=True)
class SiteRules:
    networks: tuple[Network, ...]
    origins: frozenset[str]  # exact, normalized
    wildcards: tuple[tuple[str | None, str], ...]  # (scheme or None for both, ".example.com[:port]")

    @property
    def checks_origin(self) -> bool:
        return bool(self.origins or self.wildcards)

    def excluded(self, ip: str) -> bool:
        if not self.networks or not ip:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def origin_allowed(self, origin: str) -> bool:
        normalized = normalize_origin(origin)
        if normalized is None:
            return False
        if normalized in self.origins:
            return True
        scheme, _, host = normalized.partition("://")  # host[:port], the port only when not the default
        return any((want is None or want == scheme) and host.endswith(suffix) for want, suffix in self.wildcards)


def compile_rules(excluded_ips: tuple[str, ...], allowed_origins: tuple[str, ...]) -> SiteRules:
    """The rules of one record; an entry that cannot be read is skipped and logged (auth validates
    them before they are published)."""
    networks: list[Network] = []
    for entry in excluded_ips:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            log.warning("excluded_ips entry is no address or CIDR; ignored", entry=entry)
    origins: set[str] = set()
    wildcards: list[tuple[str | None, str]] = []
    for entry in allowed_origins:
        text = entry.strip().lower()
        scheme, sep, rest = text.partition("://")
        if (rest if sep else text).startswith("*."):
            suffix = (rest if sep else text)[1:].rstrip("/")
            if sep and suffix.endswith(f":{_DEFAULT_PORTS.get(scheme)}"):
                suffix = suffix.rsplit(":", 1)[0]
            wildcards.append((scheme if sep else None, suffix))
            continue
        normalized = normalize_origin(text)
        if normalized is None:
            log.warning("allowed_origins entry is no origin; ignored", entry=entry)
        else:
            origins.add(normalized)
    return SiteRules(tuple(networks), frozenset(origins), tuple(wildcards))


class RuleBook:
    """The compiled rules of each app, kept per record version. `lookup(app_id)` reads the directory."""

    def __init__(self, lookup: Callable[[str], SiteRecord | None]) -> None:
        self.lookup = lookup
        self._compiled: dict[str, tuple[Any, SiteRules]] = {}

    def rules(self, app_id: str) -> SiteRules | None:
        record = self.lookup(app_id)
        if record is None or not (record.excluded_ips or record.allowed_origins):
            return None
        known = self._compiled.get(app_id)
        if known is not None and known[0] == record.version:
            return known[1]
        rules = compile_rules(record.excluded_ips, record.allowed_origins)
        self._compiled[app_id] = (record.version, rules)
        return rules


def check_origin(rules: SiteRules | None, key_kind: str, origin: str | None) -> None:
    """403 for a write key's browser request from an origin the site does not allow."""
    if rules is None or origin is None or key_kind != "write" or not rules.checks_origin:
        return
    if not rules.origin_allowed(origin):
        ORIGIN_REFUSED.inc()
        raise ApiError(403, f"this site's write key takes browser events only from its allowed origins, and "
                            f"{origin[:200]!r} is not one of them; add it to the site's allowed_origins")
