"""The slice driven over real HTTP, shared by the end-to-end tests."""

from __future__ import annotations

import time
import uuid

import httpx

PASSWORD = "Str0ng!pass"


def run_slice(auth_base: str, ingest_base: str, query_base: str, n_events: int = 5) -> dict[str, object]:
    name = f"e2e{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=10) as http:
        r = http.post(f"{auth_base}/api/user/signup", json={"username": name, "email": f"{name}@example.com", "password": PASSWORD})
        assert r.status_code == 201, r.text
        r = http.post(f"{auth_base}/api/user/login", json={"username": name, "password": PASSWORD})
        assert r.status_code == 200, r.text
        bearer = {"authorization": f"Bearer {r.json()['access_token']}"}
        r = http.post(f"{auth_base}/api/auth/register", json={"name": "e2e site"}, headers=bearer)
        assert r.status_code == 201, r.text
        app = r.json()
        events = [{"event": "page_view", "device": "mobile" if i % 2 else "desktop", "userId": f"u{i % 3}"} for i in range(n_events)]
        deadline = time.monotonic() + 10
        while True:  # the new key reaches the gateway through Kafka
            r = http.post(f"{ingest_base}/api/analytics/collect", json={"events": events}, headers={"x-api-key": app["write_key"]})
            if r.status_code != 401 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == n_events
        deadline = time.monotonic() + 20
        while True:
            r = http.get(f"{query_base}/api/analytics/event-summary", params={"event": "page_view"}, headers={"x-api-key": app["api_key"]})
            if (r.status_code == 200 and r.json()["count"] == n_events) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == n_events, body
        assert body["uniqueUsers"] == min(3, n_events)
        assert body["deviceData"] == {"desktop": (n_events + 1) // 2, "mobile": n_events // 2}
        # Reads with the user's token and app_id, as a dashboard does.
        r = http.get(f"{query_base}/api/analytics/event-summary", params={"event": "page_view", "app_id": app["app_id"]}, headers=bearer)
        assert r.status_code == 200 and r.json()["count"] == n_events, r.text
        return {"app": app, "summary": body, "username": name}
