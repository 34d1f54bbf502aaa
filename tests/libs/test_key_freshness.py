"""Read-your-writes for API keys: once auth answered a key, every gateway and query process accepts it
on the very next request, without waiting for the key topic to arrive on its own.

Nothing here waits for a key (`register_app` in conftest does; these tests must not). A key table in
another process is a second Stack in this one: its own Runtime, key table and Kafka consumer, which
learns about keys only from the topic, exactly as a gateway or query process elsewhere would.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from libs.embedded.engines import start_kafka
from libs.mirror import CATCH_UP_MIN_INTERVAL_S, CATCH_UP_TIMEOUT_S, SharedRounds
from libs.runtime import Stack
from libs.settings import Settings
from services import gateway, query
from tests.conftest import signup_login

pytestmark = pytest.mark.engines

ROUNDS = 20


@pytest.fixture(scope="module")
async def user(client: httpx.AsyncClient) -> dict[str, Any]:
    return await signup_login(client)


@pytest.fixture(scope="module")
async def elsewhere(engines: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway and a query service with their own key table (as in another process)."""
    async with Stack(engines, [gateway.SERVICE, query.SERVICE]) as other:
        transport = httpx.ASGITransport(app=other.app(), client=("198.51.100.9", 999))
        async with httpx.AsyncClient(transport=transport, base_url="http://elsewhere.test", timeout=30) as http:
            yield http


async def register(client: httpx.AsyncClient, user: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/api/auth/register", json={"name": "fresh"}, headers=user["headers"])
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def collect(http: httpx.AsyncClient, key: str) -> Any:
    return http.post("/api/analytics/collect", json={"event": "fresh"}, headers={"x-api-key": key})


def segment(http: httpx.AsyncClient, write_key: str, basic: bool) -> Any:
    body: dict[str, Any] = {"userId": "u1", "event": "fresh"}
    headers = {}
    if basic:
        headers["authorization"] = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    else:
        body["writeKey"] = write_key
    return http.post("/v1/track", json=body, headers=headers)


def summary(http: httpx.AsyncClient, key: str) -> Any:
    return http.get("/api/analytics/event-summary", params={"event": "fresh"}, headers={"x-api-key": key})


async def every_use(http: httpx.AsyncClient, keys: dict[str, Any]) -> list[int]:
    """The statuses of each way to use a brand-new key, all sent at once."""
    answers = await asyncio.gather(
        collect(http, keys["api_key"]), collect(http, keys["write_key"]),
        segment(http, keys["write_key"], basic=True), segment(http, keys["write_key"], basic=False),
        summary(http, keys["api_key"]),
    )
    return [r.status_code for r in answers]


ALL_ACCEPTED = [202, 202, 200, 200, 200]


def catchups() -> float:
    return sum(REGISTRY.get_sample_value("api_key_catchups_total", {"outcome": o}) or 0 for o in ("done", "failed"))


async def test_a_registered_key_works_on_the_very_next_request(client: httpx.AsyncClient, user: dict) -> None:
    seen = [await every_use(client, await register(client, user)) for _ in range(ROUNDS)]
    assert seen == [ALL_ACCEPTED] * ROUNDS


async def test_a_regenerated_key_works_on_the_very_next_request(client: httpx.AsyncClient, user: dict) -> None:
    seen = []
    for _ in range(ROUNDS // 2):
        app = await register(client, user)
        r = await client.post("/api/auth/regenerate", json={"app_id": app["app_id"]}, headers=user["headers"])
        assert r.status_code == 200, r.text
        seen.append(await every_use(client, r.json()))
    assert seen == [ALL_ACCEPTED] * (ROUNDS // 2)


async def test_a_new_app_is_readable_with_a_bearer_token_at_once(client: httpx.AsyncClient, user: dict) -> None:
    for _ in range(ROUNDS // 2):
        app = await register(client, user)
        r = await client.get("/api/analytics/event-summary", params={"event": "fresh", "app_id": app["app_id"]},
                             headers=user["headers"])
        assert r.status_code == 200, r.text


async def test_a_key_table_in_another_process_knows_a_new_key_at_once(
    client: httpx.AsyncClient, elsewhere: httpx.AsyncClient, user: dict
) -> None:
    seen = [await every_use(elsewhere, await register(client, user)) for _ in range(ROUNDS // 2)]
    assert seen == [ALL_ACCEPTED] * (ROUNDS // 2)
    app = await register(client, user)
    r = await client.post("/api/auth/regenerate", json={"app_id": app["app_id"]}, headers=user["headers"])
    assert await every_use(elsewhere, r.json()) == ALL_ACCEPTED


async def test_a_flood_of_unknown_keys_costs_few_catchups(client: httpx.AsyncClient) -> None:
    """2,000 requests with random well-formed keys from 100 senders, each sending its next at once."""
    answers: list[httpx.Response] = []
    waited: list[float] = []

    async def sender() -> None:
        for _ in range(20):
            sent = time.monotonic()
            answers.append(await collect(client, "wk_" + secrets.token_urlsafe(32)))
            waited.append(time.monotonic() - sent)

    before = catchups()
    started = time.monotonic()
    await asyncio.gather(*[sender() for _ in range(100)])
    elapsed = time.monotonic() - started
    rounds = catchups() - before
    waited.sort()
    print(f"\nflood: {len(answers)} unknown well-formed keys in {elapsed:.2f}s, {rounds:.0f} catch-ups "
          f"({rounds / elapsed:.1f}/s); 401 after p50 {waited[len(waited) // 2] * 1000:.0f} ms, "
          f"max {waited[-1] * 1000:.0f} ms")
    assert len(answers) == 2000
    assert {r.status_code for r in answers} == {401}
    assert {r.json()["detail"] for r in answers} == {"invalid, revoked or expired API key"}
    # A catch-up starts at most every CATCH_UP_MIN_INTERVAL_S; one may be in flight when the flood begins.
    assert 1 <= rounds <= elapsed / CATCH_UP_MIN_INTERVAL_S + 2
    assert waited[-1] < 1.0  # an invalid key is still refused quickly


@pytest.mark.parametrize("key", ["nonsense", "sk_short", "wk_" + "!" * 43, "pk_" + "a" * 43, "sk_" + "a" * 44])
async def test_a_key_that_cannot_be_ours_is_refused_without_a_catchup(client: httpx.AsyncClient, key: str) -> None:
    before = catchups()
    answers = await asyncio.gather(*[collect(client, key) for _ in range(200)], summary(client, key),
                                   segment(client, key, basic=True))
    assert {r.status_code for r in answers} == {401}
    assert catchups() == before


async def test_with_kafka_down_an_unknown_key_is_503_and_a_malformed_one_401(engines: Settings, tmp_path: Any) -> None:
    """Kafka cannot say whether the key exists: retry later (503), do not tell a valid key it is invalid."""
    broker, bootstrap = start_kafka(tmp_path)  # from this thread: the broker dies with the thread that forked it
    try:
        settings = engines.model_copy(update={"kafka_bootstrap_servers": bootstrap})
        async with Stack(settings, [gateway.SERVICE]) as alone:
            transport = httpx.ASGITransport(app=alone.app())
            async with httpx.AsyncClient(transport=transport, base_url="http://gw.test", timeout=30) as gw:
                broker.stop()
                started = time.monotonic()
                unknown = await collect(gw, "wk_" + secrets.token_urlsafe(32))
                waited = time.monotonic() - started
                malformed = await collect(gw, "wk_not-a-key")
    finally:
        broker.stop()
    assert unknown.status_code == 503, unknown.text
    assert "Kafka" in unknown.json()["detail"] and int(unknown.headers["retry-after"]) >= 1
    assert waited < CATCH_UP_TIMEOUT_S + 0.5
    assert malformed.status_code == 401


async def test_a_caller_never_shares_a_catchup_that_started_before_it_asked() -> None:
    """A round in flight read its end offsets before a later caller's key existed: the later caller
    joins the next round (one queued, shared by all who ask meanwhile), started after the first."""
    starts: list[float] = []

    async def work() -> None:
        starts.append(time.monotonic())
        await asyncio.sleep(0.1)

    rounds = SharedRounds(work, min_interval=0.05)
    first = rounds.request()
    await asyncio.sleep(0.02)  # the first round is in flight
    asked = time.monotonic()
    second, third = rounds.request(), rounds.request()
    assert second is third and second is not first
    await asyncio.gather(first, second)
    assert len(starts) == 2 and starts[1] >= asked and starts[1] - starts[0] >= 0.1
    late = rounds.request()  # nothing queued any more: a new round
    assert late is not second
    await late
    assert len(starts) == 3
    await rounds.close()
