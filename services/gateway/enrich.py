"""Turning an accepted event into the enriched contract (`libs.events`): ids, time, device, referrer."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

from crawlerdetect import CrawlerDetect
from geoip2fast import GeoIP2Fast
from ua_parser import parse as parse_ua

from libs import ids

MAX_FUTURE = timedelta(days=1)
_MOBILE_OS = {"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS"}
_TABLET_HINTS = ("iPad", "Tablet", "Kindle", "Nexus 7", "Nexus 9", "SM-T")


@lru_cache(maxsize=4096)
def user_agent_facts(user_agent: str) -> tuple[str, str, str]:
    """(browser, os, device type) for a User-Agent string; cached because UAs repeat a lot."""
    if not user_agent:
        return "", "", ""
    result = parse_ua(user_agent)
    browser = result.user_agent.family if result.user_agent else "Other"
    os_name = result.os.family if result.os else "Other"
    device_family = result.device.family if result.device else "Other"
    if device_family == "Spider":
        kind = "bot"
    elif any(h in user_agent or h in device_family for h in _TABLET_HINTS):
        kind = "tablet"
    elif os_name in _MOBILE_OS or "Mobile" in user_agent:
        kind = "mobile"
    else:
        kind = "desktop"
    return browser, os_name, kind


_crawlers = CrawlerDetect()
_geo = GeoIP2Fast()  # ships its own country database: no download, ~4 µs a lookup


@lru_cache(maxsize=4096)
def is_bot(user_agent: str) -> bool:
    return bool(user_agent) and bool(_crawlers.isCrawler(user_agent))


new_event_id = ids.uuid4_shaped_ids()
"""A string shaped as a version 4 UUID, unique across events (libs/ids.py)."""


@lru_cache(maxsize=65536)
def country_of(ip: str) -> str:
    """ISO country code of a public IP ('' when unknown, private or malformed)."""
    if not ip:
        return ""
    try:
        code = _geo.lookup(ip).country_code
    except Exception:  # noqa: BLE001 - a lookup failure only means "unknown"
        return ""
    return code if code and len(code) == 2 and code.isalpha() else ""


def anonymize_ip(ip: str) -> str:
    """Keep the network, drop the host: IPv4 /24, IPv6 /48 (as Google Analytics' IP anonymization)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


@lru_cache(maxsize=8192)
def _url_facts(url: str) -> tuple[tuple[str, str], ...]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    facts = [("path", parts.path or "/")]
    if parts.query:
        query = parse_qs(parts.query)
        facts.extend((name, query[name][0][:200]) for name in _UTM if query.get(name))
    return tuple(facts)


_UTM = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


def url_facts(url: str | None) -> tuple[tuple[str, str], ...]:
    """(field, value) pairs of a page URL's path and UTM fields, for `dict.update` (cached: a site's
    pages repeat)."""
    return _url_facts(url) if url else ()


@lru_cache(maxsize=8192)
def referrer_host(referrer: str | None) -> str:
    if not referrer:
        return ""
    try:
        return (urlsplit(referrer).hostname or "").removeprefix("www.")
    except ValueError:
        return ""


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def event_time(
    client_ts: datetime | None, received_at: datetime, flags: list[str], sent_at: datetime | None = None
) -> datetime:
    """When the event happened, in UTC (naive = UTC).

    With `sent_at` (the client's clock when it sent the request), the client's clock skew is removed
    as Segment does: timestamp = received_at - (sent_at - timestamp). More than a day in the future
    is clamped to received_at and flagged.
    """
    if client_ts is None:
        return received_at
    ts = _utc(client_ts)
    if sent_at is not None:
        ts = received_at - (_utc(sent_at) - ts)
        flags.append("clock_skew_corrected")
    if ts - received_at > MAX_FUTURE:
        flags.append("timestamp_clamped")
        return received_at
    return ts


@lru_cache(maxsize=16384)
def request_template(app_id: str, user_agent: str, ip: str) -> dict[str, Any]:
    """The fields every event of a request gets from the request itself (see `libs.events.EnrichedEvent`),
    without the per-event ones (event_id, received_at, flags, properties). Cached: a site's visitors send
    request after request from the same browser and address. Callers copy it and never change it."""
    browser, os_name, device_type = user_agent_facts(user_agent)
    bot = is_bot(user_agent) or device_type == "bot"
    return {
        "schema_version": 1,
        "app_id": app_id,
        "browser": browser,
        "os": os_name,
        "device_type": "bot" if bot else device_type,
        "user_agent": user_agent[:1000],
        "ip": ip,
        "is_bot": bot,
    }


def finalize(event: dict[str, Any], anonymize: bool) -> dict[str, Any]:
    """Last step for every event: country from the full IP, then the IP anonymized if asked."""
    event["country"] = country_of(event["ip"])
    if anonymize and event["ip"]:
        event["ip"] = anonymize_ip(event["ip"])
    return event


def now_utc() -> datetime:
    return datetime.now(UTC)
