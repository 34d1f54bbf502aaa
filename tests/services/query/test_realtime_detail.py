"""The realtime view (issue #20): visitors per minute over the last 30 minutes, top pages and sources,
from events sent a few minutes ago through the gateway."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import register_app, signup_login
from tests.services.query.test_query import send, wait_stored

pytestmark = pytest.mark.engines


def ago(now: datetime, minutes: int) -> str:
    return (now - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def minute(now: datetime, minutes: int) -> str:
    return (now - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:00Z")


async def test_visitors_per_minute_and_the_top_pages_and_sources_of_the_last_30_minutes(client: httpx.AsyncClient) -> None:
    app = await register_app(client, await signup_login(client), "live shop")
    # Whole minutes back from the middle of the current minute: every event lands in the minute meant.
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    if now > datetime.now(UTC):
        now -= timedelta(minutes=1)

    def view(who: str, minutes: int, path: str, **extra: Any) -> dict[str, Any]:
        return {"event": "page_view", "url": f"https://shop.test{path}", "timestamp": ago(now, minutes), "userId": who, **extra}

    events = [
        view("ann", 2, "/", referrer="https://www.google.com/"), view("ann", 1, "/pricing"),
        view("ben", 2, "/pricing", referrer="https://news.example.com/x"),
        view("cat", 10, "/"), view("cat", 10, "/blog"),
        {"event": "signup_click", "url": "https://shop.test/pricing", "timestamp": ago(now, 1), "userId": "cat"},
        view("dan", 28, "/blog"),
        view("eve", 45, "/old", referrer="https://www.google.com/"),  # before the 30 minutes
    ]
    await send(client, app, events)
    await wait_stored(client, app, len(events))
    r = await client.get("/api/analytics/stats/realtime/detail", headers={"x-api-key": app["api_key"]})
    assert r.status_code == 200, r.text
    body = r.json()
    taken_at = datetime.now(UTC)
    assert body["visitors"] == 4
    assert len(body["minutes"]) == 30
    assert body["minutes"][-1]["minute"] == taken_at.strftime("%Y-%m-%dT%H:%M:00Z")
    counts = {m["minute"]: m["visitors"] for m in body["minutes"] if m["visitors"]}
    assert counts == {minute(now, 28): 1, minute(now, 10): 1, minute(now, 2): 2, minute(now, 1): 2}
    assert body["pages"] == [{"page": "/", "visitors": 2}, {"page": "/blog", "visitors": 2}, {"page": "/pricing", "visitors": 2}]
    assert body["sources"] == [{"source": "Direct / None", "visitors": 2}, {"source": "google.com", "visitors": 1},
                               {"source": "news.example.com", "visitors": 1}]
