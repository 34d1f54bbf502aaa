"""A site's ingest rules (issue #19), set with PATCH /api/auth/apps/{app_id} and in force at the gateway
within the app directory's catch-up, with no restart: `excluded_ips` drops events from those addresses
unseen (the answer is the same as for a stored event), `allowed_origins` refuses a write key's browser
events from any other origin with 403."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import pytest

from libs.runtime import Stack
from services.gateway.siterules import compile_rules
from tests.conftest import eventually, register_app, signup_login
from tests.services.auth.helpers import client_for

pytestmark = pytest.mark.engines

FRESH = {"cache-control": "no-cache"}
EVIL = "https://evil.example"


async def new_site(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    owner = await signup_login(client)
    return {**await register_app(client, owner, name), "owner": owner}


async def patch(client: httpx.AsyncClient, site: dict[str, Any], **body: Any) -> dict[str, Any]:
    r = await client.patch(f"/api/auth/apps/{site['app_id']}", headers=site["owner"]["headers"], json=body)
    assert r.status_code == 200, r.text
    return r.json()


def write(site: dict[str, Any], **headers: str) -> dict[str, str]:
    return {"x-api-key": site["write_key"], **headers}


def segment_auth(site: dict[str, Any]) -> str:
    return "Basic " + base64.b64encode(f"{site['write_key']}:".encode()).decode()


async def refused_from(client: httpx.AsyncClient, site: dict[str, Any], origin: str) -> bool:
    """Whether the origin is refused; the probe is no valid event, so an allowed one stores nothing (422)."""
    r = await client.post("/api/analytics/collect", json={"probe": True}, headers=write(site, origin=origin))
    assert r.status_code in (403, 422), r.text
    return r.status_code == 403


async def excluded_total(client: httpx.AsyncClient) -> float:
    r = await client.get("/metrics")
    found = re.search(r"^gateway_events_excluded_total (\S+)$", r.text, re.M)
    return float(found.group(1)) if found else 0.0


def test_rules_read_mapped_ipv6_ports_and_wildcards() -> None:
    rules = compile_rules(("10.0.0.0/8", "2001:db8::/32"),
                          ("https://a.example:8443", "https://*.b.example", "https://*.c.example:443"))
    assert rules.excluded("::ffff:10.1.2.3") and rules.excluded("2001:db8::1")  # an IPv4 client seen over IPv6
    assert not rules.excluded("11.0.0.1") and not rules.excluded("not an address") and not rules.excluded("")
    assert rules.origin_allowed("https://a.example:8443") and not rules.origin_allowed("https://a.example")
    assert rules.origin_allowed("https://x.c.example") and rules.origin_allowed("https://x.c.example:443")
    assert not rules.origin_allowed("https://x.b.example:8443") and not rules.origin_allowed("https://x.b.example/path")


async def test_excluded_addresses_and_ranges_are_dropped_unseen(client: httpx.AsyncClient, stack: Stack) -> None:
    site = await new_site(client, "excluded ips")
    await patch(client, site, excluded_ips=["198.51.100.0/24", "2001:db8:abcd::/48", "192.0.2.10"],
                allowed_origins=["https://excluded.example"])
    # Both rules come in one record version: once the origin rule is in force, so are the addresses.
    await eventually(lambda: refused_from(client, site, EVIL), 10, "the site's rules never reached the gateway")
    before = await excluded_total(client)
    answers: list[httpx.Response] = []
    # Behind a trusted proxy (127.0.0.1), the client is the address it forwards.
    async with client_for(stack, "127.0.0.1") as proxied:
        for forwarded in ("198.51.100.23", "2001:db8:abcd:7::5"):
            answers.append(await proxied.post("/api/analytics/collect", json={"event": "from excluded"},
                                              headers=write(site, **{"x-forwarded-for": forwarded})))
        answers.append(await proxied.post("/api/analytics/events", json={"event_name": "named"},
                                          headers=write(site, **{"x-forwarded-for": "198.51.100.1"})))
        answers.append(await proxied.post("/v1/track", json={"event": "segment", "userId": "u1"},
                                          headers={"authorization": segment_auth(site), "x-forwarded-for": "198.51.100.2"}))
        answers.append(await proxied.post("/api/analytics/metrics", json={"metric_name": "load_ms", "value": 5},
                                          headers=write(site, **{"x-forwarded-for": "198.51.100.3"})))
    async with client_for(stack, "192.0.2.10") as direct:  # one excluded address, no proxy
        answers.append(await direct.post("/api/analytics/collect", json={"event": "from excluded"}, headers=write(site)))
    # An event a server sends on a visitor's behalf is judged by the address it states.
    stated = await client.post("/api/analytics/collect", headers=write(site), json={"events": [
        {"event": "stated excluded", "ipAddress": "198.51.100.9"}, {"event": "stated kept", "ipAddress": "203.0.113.50"}]})
    # X-Forwarded-For from a peer that is no trusted proxy is not believed: this one is kept.
    spoofed = await client.post("/api/analytics/collect", json={"event": "spoofed"},
                                headers=write(site, **{"x-forwarded-for": "198.51.100.23"}))

    for r in answers:  # the same answer as for a stored event: nothing tells the client
        assert r.status_code in (200, 202), r.text
        assert r.json().get("accepted") == 1 and r.json().get("errors") == [], r.text
    assert stated.status_code == 202 and stated.json()["accepted"] == 2 and len(stated.json()["event_ids"]) == 2
    assert spoofed.status_code == 202
    assert await excluded_total(client) - before == 7

    kept_id, spoofed_id = stated.json()["event_ids"][1], spoofed.json()["event_ids"][0]
    key = {"x-api-key": site["api_key"]}

    async def both_stored() -> bool:
        found = [await client.get(f"/api/analytics/events/{i}", headers=key) for i in (kept_id, spoofed_id)]
        return all(r.status_code == 200 for r in found)

    await eventually(both_stored, 15, "the events from addresses that are not excluded were not stored")
    r = await client.get("/api/analytics/events", params={"start_date": "2026-01-01"}, headers={**key, **FRESH})
    assert sorted(e["event_name"] for e in r.json()["events"]) == ["spoofed", "stated kept"]
    assert (await client.get(f"/api/analytics/events/{stated.json()['event_ids'][0]}", headers=key)).status_code == 404
    r = await client.get("/api/analytics/metrics", params={"metric_name": "load_ms"}, headers={**key, **FRESH})
    assert r.json()["metrics"] == []

    # Rules lifted: the same address is taken again, without a restart.
    await patch(client, site, excluded_ips=[], allowed_origins=[])
    await eventually(lambda: _not(refused_from(client, site, EVIL)), 10, "the lifted rules never reached the gateway")
    async with client_for(stack, "192.0.2.10") as direct:
        r = await direct.post("/api/analytics/collect", json={"event": "welcome back"}, headers=write(site))
    back = r.json()["event_ids"][0]

    async def stored() -> bool:
        return (await client.get(f"/api/analytics/events/{back}", headers=key)).status_code == 200

    await eventually(stored, 15, "an event from a no longer excluded address was not stored")


async def _not(check: Any) -> bool:
    return not await check


async def test_a_write_key_takes_browser_events_only_from_allowed_origins(client: httpx.AsyncClient) -> None:
    site = await new_site(client, "allowed origins")
    ok = await client.post("/api/analytics/collect", json={"event": "before"}, headers=write(site, origin=EVIL))
    assert ok.status_code == 202, ok.text  # no rule yet: any origin
    await patch(client, site, allowed_origins=["https://shop.example", "https://*.blog.example", "http://localhost:3000"])
    await eventually(lambda: refused_from(client, site, EVIL), 10, "the origin rule never reached the gateway")

    async def status(path: str, body: Any, origin: str | None, key: str = "write_key") -> int:
        headers = {"x-api-key": site[key]} if not path.startswith("/v1/") else {"authorization": segment_auth(site)}
        if origin is not None:
            headers["origin"] = origin
        r = await client.post(path, json=body, headers=headers)
        if r.status_code == 403:  # says why, and what to change
            assert f"{origin!r} is not one of them" in r.json()["detail"], r.text
            assert "allowed_origins" in r.json()["detail"], r.text
        return r.status_code

    routes = [
        ("/api/analytics/collect", {"event": "single"}),
        ("/api/analytics/collect", {"events": [{"event": "a"}, {"event": "b"}]}),
        ("/api/analytics/events", {"event_name": "named"}),
        ("/api/analytics/metrics", {"metric_name": "load_ms", "value": 1}),
        ("/v1/track", {"event": "segment", "userId": "u1"}),
        ("/v1/batch", {"batch": [{"type": "track", "event": "segment", "userId": "u1"}]}),
    ]
    for path, body in routes:
        assert await status(path, body, EVIL) == 403, path
        assert await status(path, body, "https://shop.example") in (200, 202), path
        assert await status(path, body, None) in (200, 202), path  # a server: no Origin
    for origin, expected in [
        ("https://www.blog.example", 202), ("https://a.b.blog.example", 202), ("http://localhost:3000", 202),
        ("https://SHOP.example", 202),  # origins are case-insensitive
        ("http://www.blog.example", 403),  # the wildcard is for https only
        ("https://blog.example", 403),  # subdomains only
        ("https://blog.example.evil.test", 403), ("https://shop.example:8443", 403), ("http://shop.example", 403),
        ("null", 403),  # a sandboxed frame or a file
    ]:
        assert await status("/api/analytics/collect", {"event": "o"}, origin) == expected, origin
    # Secret keys send from servers: the rule is the write key's.
    assert await status("/api/analytics/collect", {"event": "server"}, EVIL, key="api_key") == 202

    await patch(client, site, allowed_origins=[])
    await eventually(lambda: _not(refused_from(client, site, EVIL)), 10, "the lifted origin rule never reached the gateway")
