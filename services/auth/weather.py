"""An external metric source: OpenWeather's current weather for the cities an app names
(`PUT /api/auth/apps/{app_id}/weather`), pulled every OPENWEATHER_INTERVAL_S into the app's custom
metrics `weather.temperature` (°C), `weather.humidity` (%) and `weather.wind_speed` (m/s), each tagged
with its `city`, readable from `/api/analytics/metrics` like any metric the app sends.

On only when OPENWEATHER_API_KEY is set (without it nothing is called); OPENWEATHER_BASE_URL names the
API (an operator's setting, trusted: no private-address guard). Calls go through the process's one
pooled HTTP client (libs/outbound.py). Auth pulls because it holds the cities (Postgres, next to the
apps) and the client; the readings go onto `analytics.events.v1` as `metric` events, as the gateway's
`POST /api/analytics/metrics` would put them, and the aggregator stores them. Each reading's event id
is the app, city, metric and pull time slot, so a reading published twice is stored once.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import httpx
from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.events import EnrichedEvent
from libs.kafka import EVENTS_TOPIC, publish
from libs.logs import get_logger
from libs.openapi import errors
from libs.outbound import Outbound
from services.auth.context import AuthCtx, User
from services.auth.schemas import Line

if TYPE_CHECKING:
    from services.auth.keys import AppKeys

log = get_logger(__name__)

MAX_CITIES = 10
# What each reading stores: metric name, where it is in OpenWeather's answer, unit.
READINGS = (("weather.temperature", ("main", "temp"), "°C"), ("weather.humidity", ("main", "humidity"), "%"),
            ("weather.wind_speed", ("wind", "speed"), "m/s"))


class WeatherIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"cities": ["Berlin", "London,GB"]}]})
    cities: list[Annotated[Line, Field(min_length=1, max_length=100)]] = Field(
        max_length=MAX_CITIES, description="OpenWeather city queries (`Berlin`, `London,GB`); empty: none")

    @field_validator("cities")
    @classmethod
    def _unique(cls, cities: list[str]) -> list[str]:
        return list(dict.fromkeys(c.strip() for c in cities if c.strip()))


class WeatherOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "app_id": "0b6e1f3a-2c4d-4e5f-8a9b-1c2d3e4f5a6b", "cities": ["Berlin"], "enabled": True,
        "metrics": ["weather.temperature", "weather.humidity", "weather.wind_speed"]}]})
    app_id: str
    cities: list[str]
    enabled: bool = Field(description="whether this installation pulls weather (OPENWEATHER_API_KEY is set)")
    metrics: list[str] = Field(description="the custom metrics each city's readings are stored as (tag `city`)")


def _out(svc: AppKeys, app_id: str, cities: list[str]) -> WeatherOut:
    return WeatherOut(app_id=app_id, cities=cities, enabled=bool(svc.settings.openweather_api_key),
                      metrics=[name for name, _, _ in READINGS])


async def set_cities(svc: AppKeys, user_id: str, app_id: str, cities: list[str]) -> WeatherOut:
    app = await svc.app_with_role(user_id, app_id, "admin")
    async with svc.db() as conn:
        if cities:
            await conn.execute(
                """INSERT INTO app_weather_cities (app_id, cities) VALUES ($1, $2)
                   ON CONFLICT (app_id) DO UPDATE SET cities = EXCLUDED.cities, updated_at = now()""", app["id"], cities)
        else:
            await conn.execute("DELETE FROM app_weather_cities WHERE app_id = $1", app["id"])
    return _out(svc, app_id, cities)


async def get_cities(svc: AppKeys, user_id: str, app_id: str) -> WeatherOut:
    app = await svc.app_with_role(user_id, app_id, "admin")
    async with svc.db() as conn:
        cities = await conn.fetchval("SELECT cities FROM app_weather_cities WHERE app_id = $1", app["id"])
    return _out(svc, app_id, list(cities or []))


def _reading(answer: Any, path: tuple[str, str]) -> float | None:
    value = answer.get(path[0], {}).get(path[1]) if isinstance(answer, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def pull_once(svc: AppKeys, outbound: Outbound) -> int:
    """Every app's cities, now; returns how many readings were published."""
    key = svc.settings.openweather_api_key
    if not key:
        return 0
    async with svc.db() as conn:
        rows = await conn.fetch("SELECT app_id, cities FROM app_weather_cities")
    now = datetime.now(UTC)
    slot = int(time.time() // svc.settings.openweather_interval_s)
    published = 0
    for row in rows:
        app_id = str(row["app_id"])
        for city in row["cities"]:
            try:
                answer = await outbound.get_json(svc.settings.openweather_base_url,
                                                 {"q": city, "appid": key, "units": "metric"})
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("weather not read", app_id=app_id, city=city, error=repr(exc)[:300])
                continue
            for name, path, unit in READINGS:
                value = _reading(answer, path)
                if value is None:
                    continue
                event = EnrichedEvent(
                    event_id=f"weather:{app_id}:{city}:{name}:{slot}"[:128], app_id=app_id, type="metric",
                    event_name=name, source="openweather", source_kind="server", properties={"city": city},
                    metric_value=value, metric_unit=unit, timestamp=now, received_at=now,
                )
                await publish(svc.producer, EVENTS_TOPIC, event.model_dump(mode="json"), key=app_id)
                published += 1
    if published:
        log.info("weather pulled", readings=published, apps=len(rows))
    return published


async def pull_weather(svc: AppKeys, outbound: Outbound) -> None:
    """Background job: `pull_once` every OPENWEATHER_INTERVAL_S (nothing while no key is set)."""
    while True:
        try:
            await pull_once(svc, outbound)
        except Exception as exc:  # noqa: BLE001 - Kafka or Postgres down: the next round tries again
            log.warning("weather pull failed; retrying at the next round", error=repr(exc))
        await asyncio.sleep(svc.settings.openweather_interval_s)


AppId = Annotated[Line, Path(max_length=64)]

router = APIRouter(prefix="/api/auth/apps/{app_id}/weather", tags=["apps"], responses=errors(401, 403, 404, 422, 503))


@router.put("", operation_id="setWeatherCities", response_model=WeatherOut,
            summary="The cities whose current weather is pulled into the app's custom metrics")
async def put_cities(app_id: AppId, body: WeatherIn, user: User, ctx: AuthCtx) -> WeatherOut:
    return await set_cities(ctx.keys, user.sub, app_id, body.cities)


@router.get("", operation_id="getWeatherCities", response_model=WeatherOut, summary="An app's weather cities")
async def read_cities(app_id: AppId, user: User, ctx: AuthCtx) -> WeatherOut:
    return await get_cities(ctx.keys, user.sub, app_id)
