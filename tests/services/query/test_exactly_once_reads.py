"""Every read counts an event once, even when it reached ClickHouse twice (a client retry with the same
id in another batch): raw reads and the daily rollup alike."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import eventually, register_app, signup_login

pytestmark = pytest.mark.engines
FRESH = {"cache-control": "no-cache"}


async def test_an_event_sent_twice_in_separate_batches_counts_once_in_every_summary(client: httpx.AsyncClient) -> None:
    app = await register_app(client, await signup_login(client))
    auth = {"authorization": "Basic " + base64.b64encode(f"{app['write_key']}:".encode()).decode()}
    day = (datetime.now(UTC) - timedelta(days=3)).replace(hour=12, minute=0, second=0, microsecond=0)
    calls = [{"type": "track", "event": "retried", "userId": f"u{i}", "messageId": str(uuid.uuid4()),
              "timestamp": (day + timedelta(minutes=i)).isoformat()} for i in range(3)]
    for _ in range(2):  # the client retries the whole batch: same message ids, a later request
        r = await client.post("/v1/batch", json={"batch": calls}, headers=auth)
        assert r.status_code == 200
        await asyncio.sleep(0.6)  # past the aggregator's batch age: the copy lands in another insert
    key = {"x-api-key": app["api_key"], **FRESH}
    start, end = (day - timedelta(days=1)).date().isoformat(), (day + timedelta(days=1)).date().isoformat()

    async def stored() -> bool:
        r = await client.get("/api/analytics/events/count", params={"start_date": start, "end_date": end}, headers=key)
        return r.json()["count"] >= 3

    await eventually(stored, 10)
    await asyncio.sleep(1)
    summary = (await client.get("/api/analytics/event-summary",
                                params={"event": "retried", "startDate": start, "endDate": end}, headers=key)).json()
    count = (await client.get("/api/analytics/events/count", params={"start_date": start, "end_date": end},
                              headers=key)).json()
    daily = (await client.get("/api/analytics/events/grouped", params={"start_date": start, "end_date": end},
                              headers=key)).json()
    assert count["count"] == 3
    assert summary["count"] == 3, summary
    assert summary["uniqueUsers"] == 3
    assert next(g for g in daily["groups"] if g["key"] == "retried")["count"] == 3
