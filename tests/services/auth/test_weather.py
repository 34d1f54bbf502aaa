"""The OpenWeather source: an app's cities' current weather pulled into its custom metrics, from a local
server standing in for OpenWeather (there is no internet here; OPENWEATHER_BASE_URL points at it)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from libs.runtime import Stack
from tests.conftest import eventually, register_app, serving, signup_login

pytestmark = pytest.mark.engines

WEATHER = {"Berlin": {"main": {"temp": 21.5, "humidity": 40}, "wind": {"speed": 3.25}, "name": "Berlin"},
           "Oslo": {"main": {"temp": -4.0, "humidity": 85}, "wind": {"speed": 7.5}, "name": "Oslo"}}


async def test_the_weather_of_an_apps_cities_becomes_its_custom_metrics(
    client: httpx.AsyncClient, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await signup_login(client)
    app = await register_app(client, owner, "Weather")
    calls: list[tuple[dict[str, str], str]] = []
    stand_in = FastAPI()

    @stand_in.get("/data/2.5/weather")
    async def current(request: Request) -> Any:
        calls.append((dict(request.query_params), request.headers.get("user-agent", "")))
        return WEATHER[request.query_params["q"]]

    path = f"/api/auth/apps/{app['app_id']}/weather"
    r = await client.put(path, json={"cities": ["Berlin", "Oslo", "Berlin"]}, headers=owner["headers"])
    assert r.status_code == 200, r.text
    assert r.json()["cities"] == ["Berlin", "Oslo"] and r.json()["enabled"] is False  # no key set
    assert (await client.get(path, headers=owner["headers"])).json()["cities"] == ["Berlin", "Oslo"]
    async with serving(stand_in) as base:
        monkeypatch.setattr(stack.settings, "openweather_base_url", f"{base}/data/2.5/weather")
        await asyncio.sleep(3 * stack.settings.openweather_interval_s)
        assert calls == []  # off without a key

        monkeypatch.setattr(stack.settings, "openweather_api_key", "test-key")

        async def both_stored() -> bool:
            r = await client.get("/api/analytics/metrics", headers={"x-api-key": app["api_key"]})
            return {m["metric_name"] for m in r.json()["metrics"]} == {
                "weather.temperature", "weather.humidity", "weather.wind_speed"} and all(
                m["count"] >= 2 for m in r.json()["metrics"])

        await eventually(both_stored, 20, "the weather never reached the app's metrics")
        r = await client.put(path, json={"cities": []}, headers=owner["headers"])  # stop pulling
        assert r.json() == {"app_id": app["app_id"], "cities": [], "enabled": True,
                            "metrics": ["weather.temperature", "weather.humidity", "weather.wind_speed"]}
    assert {(q["q"], q["appid"], q["units"]) for q, _ in calls} == {("Berlin", "test-key", "metric"),
                                                                      ("Oslo", "test-key", "metric")}
    assert {agent for _, agent in calls} == {"analytics-platform/1 (+webhooks)"}  # the pooled outbound client
    async def temperatures() -> dict[str, Any]:
        r = await client.get("/api/analytics/metrics", params={"metric_name": "weather.temperature"},
                             headers={"x-api-key": app["api_key"], "cache-control": "no-cache"})
        [summary] = r.json()["metrics"]
        return summary

    seen = [await temperatures()]

    async def settled() -> bool:  # the last round's readings stored: the count no longer moves
        await asyncio.sleep(1)
        seen.append(await temperatures())
        return seen[-1]["count"] == seen[-2]["count"]

    await eventually(settled, 20)
    temperature = seen[-1]
    # Berlin 21.5 and Oslo -4.0, as many readings of each (pulled together): min, max and their mean.
    assert (temperature["min"], temperature["max"], temperature["unit"]) == (-4.0, 21.5, "°C")
    assert temperature["count"] % 2 == 0 and temperature["avg"] == pytest.approx(8.75)


async def test_other_users_cannot_set_an_apps_cities(client: httpx.AsyncClient) -> None:
    owner, other = await signup_login(client), await signup_login(client)
    app = await register_app(client, owner, "Mine")
    path = f"/api/auth/apps/{app['app_id']}/weather"
    assert (await client.put(path, json={"cities": ["Paris"]}, headers=other["headers"])).status_code == 403
    assert (await client.get(path, headers=other["headers"])).status_code == 403
    r = await client.put(path, json={"cities": ["x"] * 11}, headers=owner["headers"])
    assert r.status_code == 422
    assert (await client.get(path, headers=owner["headers"])).json()["cities"] == []
