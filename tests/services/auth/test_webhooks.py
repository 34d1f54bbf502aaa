"""Webhooks: an app's events POSTed to a receiver the test runs (uvicorn on 127.0.0.1), signed with the
webhook's secret, retried after a 500, listed with every attempt; non-global targets refused when
WEBHOOK_ALLOW_PRIVATE is off (at creation and at delivery time); other users see nothing of them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request, Response

from libs.outbound import non_global, release_outbound, shared_outbound
from libs.runtime import Runtime, ServiceParts, ServiceSpec, Stack
from libs.settings import Settings
from tests.conftest import eventually, register_app, serving, signup_login

pytestmark = pytest.mark.engines


@dataclass
class Receiver:
    """What the test's webhook receiver got; it answers `fail_first` 500s before answering 200."""

    url: str = ""
    fail_first: int = 0
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def receiver(fail_first: int = 0, host: str = "127.0.0.1") -> AsyncIterator[Receiver]:
    got = Receiver(fail_first=fail_first)
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        got.got.append((dict(request.headers), await request.body()))
        return Response(status_code=500 if len(got.got) <= got.fail_first else 200)

    async with serving(app) as base:
        got.url = base.replace("127.0.0.1", host) + "/hook"
        yield got


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks check a receiver makes: HMAC-SHA256 of `{id}.{timestamp}.{body}` with the
    secret's bytes, base64, among the `v1,` signatures of the header."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(f"v1,{expected}", s) for s in headers["webhook-signature"].split())


async def add_hook(client: httpx.AsyncClient, user: dict[str, Any], app_id: str, url: str, events: list[str]) -> dict[str, Any]:
    r = await client.post(f"/api/auth/apps/{app_id}/webhooks", json={"url": url, "events": events}, headers=user["headers"])
    assert r.status_code == 201, r.text
    return r.json()


async def deliveries(client: httpx.AsyncClient, user: dict[str, Any], app_id: str, hook_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/auth/apps/{app_id}/webhooks/{hook_id}/deliveries", headers=user["headers"])
    assert r.status_code == 200, r.text
    return r.json()


async def one_key_id(client: httpx.AsyncClient, user: dict[str, Any], app_id: str, kind: str) -> str:
    r = await client.get("/api/auth/api-key", params={"app_id": app_id}, headers=user["headers"])
    return next(k["key_id"] for k in r.json()["keys"] if k["kind"] == kind and not k["revoked"])


async def test_a_key_revocation_is_delivered_signed(client: httpx.AsyncClient) -> None:
    owner = await signup_login(client)
    app = await register_app(client, owner, "Signed")
    async with receiver() as got:
        hook = await add_hook(client, owner, app["app_id"], got.url, ["key.revoked"])
        assert hook["secret"].startswith("whsec_") and hook["events"] == ["key.revoked"]
        r = await client.get(f"/api/auth/apps/{app['app_id']}/webhooks", headers=owner["headers"])
        assert [h["id"] for h in r.json()] == [hook["id"]] and "secret" not in r.json()[0]  # shown once only

        r = await client.post("/api/auth/revoke", json={"app_id": app["app_id"]}, headers=owner["headers"])
        assert r.status_code == 200, r.text
        revoked = sorted(r.json()["revoked"])

        async def both() -> bool:
            return len(got.got) >= 2

        await eventually(both, 15, "the two key.revoked deliveries never came")
    assert len(got.got) == 2
    bodies = [orjson.loads(body) for _, body in got.got]
    assert {b["type"] for b in bodies} == {"key.revoked"}
    assert sorted(b["data"]["key_id"] for b in bodies) == revoked
    assert {b["data"]["app_id"] for b in bodies} == {app["app_id"]}
    for headers, body in got.got:
        assert headers["content-type"] == "application/json"
        assert verify(hook["secret"], headers, body)
        assert not verify("whsec_" + base64.b64encode(b"x" * 24).decode(), headers, body)  # the secret matters
    listed = await deliveries(client, owner, app["app_id"], hook["id"])
    assert [(d["event_type"], d["status"], [a["status_code"] for a in d["attempts"]]) for d in listed] == [
        ("key.revoked", "delivered", [200])] * 2


async def test_a_delivery_answered_500_is_retried_and_both_attempts_are_listed(client: httpx.AsyncClient) -> None:
    owner = await signup_login(client)
    app = await register_app(client, owner, "Retried")
    async with receiver(fail_first=1) as got:
        hook = await add_hook(client, owner, app["app_id"], got.url, ["key.revoked"])
        key_id = await one_key_id(client, owner, app["app_id"], "write")
        r = await client.post("/api/auth/revoke", json={"key_id": key_id}, headers=owner["headers"])
        assert r.json()["revoked"] == [key_id]

        async def delivered() -> bool:
            listed = await deliveries(client, owner, app["app_id"], hook["id"])
            return bool(listed) and listed[0]["status"] == "delivered"

        await eventually(delivered, 15, "the retried delivery never succeeded")
    [delivery] = await deliveries(client, owner, app["app_id"], hook["id"])
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]
    assert [a["attempt"] for a in delivery["attempts"]] == [1, 2]
    assert all(a["error"] is None and a["duration_ms"] >= 0 for a in delivery["attempts"])
    assert delivery["attempts"][1]["at"] > delivery["attempts"][0]["at"]
    assert len(got.got) == 2
    (first, body1), (second, body2) = got.got
    assert first["webhook-id"] == second["webhook-id"] and body1 == body2  # the same message, tried again
    assert verify(hook["secret"], second, body2)
    assert orjson.loads(body2)["data"]["key_id"] == key_id


async def test_only_the_events_asked_for_are_delivered(client: httpx.AsyncClient) -> None:
    owner = await signup_login(client)
    app = await register_app(client, owner, "Chosen")
    async with receiver() as got:
        hook = await add_hook(client, owner, app["app_id"], got.url, ["key.created", "key.regenerated"])
        r = await client.post("/api/auth/regenerate", json={"app_id": app["app_id"]}, headers=owner["headers"])
        assert r.status_code == 200, r.text

        async def four() -> bool:
            return len(got.got) >= 4

        await eventually(four, 15, "regenerating did not deliver key.regenerated and key.created")
    types = sorted(orjson.loads(body)["type"] for _, body in got.got)
    assert types == ["key.created", "key.created", "key.regenerated", "key.regenerated"]
    assert len(await deliveries(client, owner, app["app_id"], hook["id"])) == 4


NON_GLOBAL = [
    "http://127.0.0.1/hook", "http://localhost:8080/hook", "http://10.0.0.5/", "http://192.168.1.1/",
    "http://172.16.0.1/", "http://169.254.169.254/latest/meta-data", "http://[::1]/", "http://[fe80::1]/",
    "http://[fc00::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:169.254.169.254]/", "http://224.0.0.1/",
    "http://0.0.0.0/", "http://100.64.0.1/", "http://240.0.0.1/",
]


@pytest.mark.parametrize("url", NON_GLOBAL)
async def test_non_global_targets_are_refused_when_private_is_not_allowed(
    client: httpx.AsyncClient, stack: Stack, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    owner = await signup_login(client)
    app = await register_app(client, owner, "Guarded")
    monkeypatch.setattr(stack.settings, "webhook_allow_private", False)
    r = await client.post(f"/api/auth/apps/{app['app_id']}/webhooks", json={"url": url, "events": ["key.revoked"]},
                          headers=owner["headers"])
    assert r.status_code == 422, r.text
    assert "refused" in r.json()["detail"] and "WEBHOOK_ALLOW_PRIVATE" in r.json()["detail"]


async def test_bad_urls_are_refused_and_public_ones_taken(
    client: httpx.AsyncClient, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await signup_login(client)
    app = await register_app(client, owner, "Urls")
    monkeypatch.setattr(stack.settings, "webhook_allow_private", False)
    path = f"/api/auth/apps/{app['app_id']}/webhooks"
    for url in ("ftp://93.184.216.34/x", "http://user:pw@93.184.216.34/", "not a url at all"):
        r = await client.post(path, json={"url": url, "events": ["key.revoked"]}, headers=owner["headers"])
        assert r.status_code == 422, (url, r.text)
    r = await client.post(path, json={"url": "https://93.184.216.34/hook", "events": ["nope"]}, headers=owner["headers"])
    assert r.status_code == 422
    r = await client.post(path, json={"url": "https://93.184.216.34/hook", "events": ["alert.fired"]}, headers=owner["headers"])
    assert r.status_code == 201, r.text


def test_non_global_addresses() -> None:
    for address in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "fe80::1", "fd12::1", "::ffff:10.0.0.1",
                    "2002:7f00:1::", "ff02::1", "0.0.0.0", "100.64.0.1", "192.0.2.1"):
        assert non_global(ipaddress.ip_address(address)) is not None, address
    for address in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34"):
        assert non_global(ipaddress.ip_address(address)) is None, address


async def test_a_target_that_resolves_to_loopback_is_refused_at_delivery_time(
    client: httpx.AsyncClient, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check at creation is not enough (the name may resolve elsewhere later): the delivery resolves
    again and refuses, and the receiver is never called."""
    owner = await signup_login(client)
    app = await register_app(client, owner, "Rebound")
    async with receiver(host="localhost") as got:
        hook = await add_hook(client, owner, app["app_id"], got.url, ["key.revoked"])  # allowed when created
        monkeypatch.setattr(stack.settings, "webhook_allow_private", False)
        key_id = await one_key_id(client, owner, app["app_id"], "write")
        await client.post("/api/auth/revoke", json={"key_id": key_id}, headers=owner["headers"])

        async def attempted() -> bool:
            listed = await deliveries(client, owner, app["app_id"], hook["id"])
            return bool(listed) and bool(listed[0]["attempts"])

        await eventually(attempted, 15, "no delivery attempt recorded")
        [delivery] = await deliveries(client, owner, app["app_id"], hook["id"])
        attempt = delivery["attempts"][0]
        assert attempt["status_code"] is None and attempt["error"].startswith("refused: localhost resolves to")
        assert delivery["status"] == "pending"  # tried again later, within the bound
        assert got.got == []
        r = await client.delete(f"/api/auth/apps/{app['app_id']}/webhooks/{hook['id']}", headers=owner["headers"])
        assert r.status_code == 204


async def test_other_users_cannot_see_or_touch_an_apps_webhooks(client: httpx.AsyncClient) -> None:
    owner, other = await signup_login(client), await signup_login(client)
    app = await register_app(client, owner, "Mine")
    theirs = await register_app(client, other, "Theirs")
    hook = await add_hook(client, owner, app["app_id"], "https://93.184.216.34/hook", ["key.revoked"])
    base = f"/api/auth/apps/{app['app_id']}/webhooks"
    h = other["headers"]
    assert (await client.get(base, headers=h)).status_code == 403
    assert (await client.post(base, json={"url": "https://93.184.216.34/x", "events": ["key.revoked"]}, headers=h)).status_code == 403
    assert (await client.delete(f"{base}/{hook['id']}", headers=h)).status_code == 403
    assert (await client.get(f"{base}/{hook['id']}/deliveries", headers=h)).status_code == 403
    # Through their own app, the webhook is not there at all.
    own = f"/api/auth/apps/{theirs['app_id']}/webhooks/{hook['id']}"
    assert (await client.delete(own, headers=h)).status_code == 404
    assert (await client.get(f"{own}/deliveries", headers=h)).status_code == 404
    assert (await client.get(f"/api/auth/apps/{theirs['app_id']}/webhooks", headers=h)).json() == []
    assert (await client.get(base)).status_code == 401
    assert (await client.delete(f"{base}/not-a-uuid", headers=owner["headers"])).status_code == 404
    # Still there for its owner.
    assert [x["id"] for x in (await client.get(base, headers=owner["headers"])).json()] == [hook["id"]]


async def test_the_running_services_share_one_outbound_client(stack: Stack) -> None:
    outbound = stack.runtime.shared["outbound"]
    assert outbound.is_open and outbound.opened == 1


async def test_the_outbound_client_is_opened_at_start_once_and_closed_at_stop(engines: Settings) -> None:
    """Through a stack's start and stop hooks, as auth and query use it: two services of one process
    share one client, opened once; it is closed when the stack stops."""
    seen: list[Any] = []

    def spec(name: str) -> ServiceSpec:
        def build(runtime: Runtime) -> ServiceParts:
            async def start() -> None:
                seen.append(await shared_outbound(runtime))

            async def stop() -> None:
                await release_outbound(runtime)

            return ServiceParts(on_start=[start], on_stop=[stop])

        return ServiceSpec(name=name, port=0, needs=frozenset(), build=build, description=name)

    stack = Stack(engines, [spec("one"), spec("two")])
    async with stack:
        assert len(seen) == 2 and seen[0] is seen[1]
        assert seen[0].is_open and seen[0].opened == 1
        client = seen[0].client
    assert not seen[0].is_open and client.is_closed


async def test_a_named_target_is_called_at_its_checked_address_with_its_own_host_header(client: httpx.AsyncClient) -> None:
    """The delivery connects to the address the name resolved to when checked, and still names the host."""
    owner = await signup_login(client)
    app = await register_app(client, owner, "Named")
    async with receiver(host="localhost") as got:
        await add_hook(client, owner, app["app_id"], got.url, ["key.revoked"])
        key_id = await one_key_id(client, owner, app["app_id"], "secret")
        await client.post("/api/auth/revoke", json={"key_id": key_id}, headers=owner["headers"])

        async def came() -> bool:
            return len(got.got) == 1

        await eventually(came, 15, "no delivery to the named target")
    headers, body = got.got[0]
    assert headers["host"] == got.url.removeprefix("http://").split("/")[0]  # localhost:<port>
    assert headers["user-agent"] == "analytics-platform/1 (+webhooks)"
    assert orjson.loads(body)["data"]["key_id"] == key_id
