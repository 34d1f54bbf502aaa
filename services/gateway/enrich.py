"""Turning an accepted event into the enriched contract (`libs.events`): ids, time, device, referrer."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

from crawlerdetect import CrawlerDetect
from ua_parser import parse as parse_ua

from libs import ids
from services.gateway.countries import CountryTable
from services.gateway.countries import load as load_countries

MAX_FUTURE = timedelta(days=1)
_MOBILE_OS = {"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS"}
_TABLET_HINTS = ("iPad", "Tablet", "Kindle", "Nexus 7", "Nexus 9", "SM-T")


@lru_cache(maxsize=4096)
def user_agent_facts(user_agent: str) -> tuple[str, str, str]:
    """(browser, os, device type) for a User-Agent string, as ua-parser reads it; cached because UAs
    repeat a lot. See `ua_profile` for what an event records."""
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

# What kind of client sent an event (`libs.events.EnrichedEvent.source_kind`), from its User-Agent:
# mobile apps' HTTP stacks (Android's okhttp and Dalvik, iOS's CFNetwork, the SDKs' own agents), then
# server-side HTTP libraries and SDKs, which name themselves first; everything else (browsers, and the
# crawlers that pose as browsers or announce themselves) is a browser.
_MOBILE_UA = re.compile(
    r"^(?:okhttp|dalvik/|alamofire|dart/|analytics-(?:ios|android|swift|kotlin|react-native|flutter)|rudder-?"
    r"(?:ios|android|react-native|flutter))|\bcfnetwork/", re.IGNORECASE)
_SERVER_UA = re.compile(
    r"^(?:curl/|wget/|python-|python/|aiohttp/|httpx/|httpie/|go-http-client/|go-resty|axios/|node-fetch/|node/|"
    r"undici|got \(|java/|apache-httpclient/|jakarta|jersey/|okhttp3?-?java|libwww-perl/|lwp-|ruby|faraday|"
    r"guzzlehttp/|php/|restsharp/|postmanruntime/|insomnia/|reqwest/|hackney/|mint/|finch|elixir|"
    r"winhttp|powershell|rest-client/|analytics-|rudder|segment)", re.IGNORECASE)


@lru_cache(maxsize=4096)
def client_kind(user_agent: str) -> str:
    """`browser`, `server` or `mobile` for the User-Agent of the client that sent a request. No
    User-Agent at all is a server (every browser and mobile HTTP stack sends one)."""
    if not user_agent:
        return "server"
    if _MOBILE_UA.search(user_agent):
        return "mobile"
    if _SERVER_UA.match(user_agent):
        return "server"
    return "browser"


@lru_cache(maxsize=4096)
def ua_profile(user_agent: str) -> tuple[str, str, str, str, bool]:
    """(browser, os, device type, source kind, is_bot) of a User-Agent; cached because UAs repeat a lot.

    Bots are crawlers among browser-kind agents (crawlerdetect's list and ua-parser's spiders: known
    bots, and headless browsers posing as visitors). Server-side HTTP libraries and SDKs (curl,
    requests, Go-http-client, analytics-python, ...) and mobile HTTP stacks are not bots: they are
    events a site or app sends on purpose. Their device is `other` (a server) or `mobile`."""
    browser, os_name, device = user_agent_facts(user_agent)
    kind = client_kind(user_agent)
    bot = kind == "browser" and (device == "bot" or bool(_crawlers.isCrawler(user_agent)))
    if bot:
        device = "bot"
    elif kind == "mobile" and device not in ("mobile", "tablet"):
        device = "mobile"
    elif kind == "server" and device in ("desktop", "bot"):
        device = "other"
    return browser, os_name, device, kind, bot


new_event_id = ids.uuid4_shaped_ids()
"""A string shaped as a version 4 UUID, unique across events (libs/ids.py)."""


@cache
def geoip() -> CountryTable:
    """The offline country database, loaded on first use (the gateway loads it as it starts, so a
    process that never enriches events does not hold it). geoip2fast's wheel ships it: no download.
    Its IPv6 file holds both families; it is held in flat arrays (services/gateway/countries.py:
    about 9 MB, where geoip2fast's own lists of ints take 46 MB). Figures in docs/scaling.md;
    `country_of` caches the answers."""
    return load_countries()


@lru_cache(maxsize=65536)
def country_of(ip: str) -> str:
    """ISO country code of a public IPv4 or IPv6 address ('' when unknown, private or malformed)."""
    if not ip:
        return ""
    code = geoip().country(ip)
    return code if len(code) == 2 and code.isalpha() else ""


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
    browser, os_name, device_type, kind, bot = ua_profile(user_agent)
    return {
        "schema_version": 1,
        "app_id": app_id,
        "browser": browser,
        "os": os_name,
        "device_type": device_type,
        "source_kind": kind,
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
