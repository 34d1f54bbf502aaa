"""Turning an accepted event into the enriched contract (`libs.events`): ids, time, device, referrer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ua_parser import parse as parse_ua

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


def url_facts(url: str | None) -> dict[str, str]:
    if not url:
        return {}
    try:
        parts = urlsplit(url)
    except ValueError:
        return {}
    facts = {"path": parts.path or "/"}
    query = parse_qs(parts.query)
    for name in ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"):
        if query.get(name):
            facts[name] = query[name][0][:200]
    return facts


def referrer_host(referrer: str | None) -> str:
    if not referrer:
        return ""
    try:
        return (urlsplit(referrer).hostname or "").removeprefix("www.")
    except ValueError:
        return ""


def event_time(client_ts: datetime | None, received_at: datetime, flags: list[str]) -> datetime:
    """The client's timestamp in UTC (naive = UTC); more than a day in the future is clamped."""
    if client_ts is None:
        return received_at
    ts = client_ts.replace(tzinfo=UTC) if client_ts.tzinfo is None else client_ts.astimezone(UTC)
    if ts - received_at > MAX_FUTURE:
        flags.append("timestamp_clamped")
        return received_at
    return ts


def base_event(
    app_id: str, event_id: str | None, received_at: datetime, user_agent: str, ip: str
) -> dict[str, Any]:
    browser, os_name, device_type = user_agent_facts(user_agent)
    return {
        "schema_version": 1,
        "event_id": event_id or str(uuid.uuid4()),
        "app_id": app_id,
        "browser": browser,
        "os": os_name,
        "device_type": device_type,
        "user_agent": user_agent[:1000],
        "ip": ip,
        "received_at": received_at,
        "flags": [],
        "properties": {},
    }


def now_utc() -> datetime:
    return datetime.now(UTC)
