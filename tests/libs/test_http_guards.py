"""What every HTTP service guards, seen from a client: request bodies are capped before they are read
(413 over a real socket, with the process's memory flat), CORS is open only for ingest and the
snippet, and the development JWT secret is warned about."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from urllib.parse import urlsplit

import httpx
import orjson
import psutil
import pytest

from libs.runtime import ServiceParts, ServiceSpec, Stack
from libs.settings import Settings
from services.auth import SERVICE as AUTH
from tests.conftest import serving, signup_login
from tests.services.auth.helpers import captured_logs, client_for, random_ip

pytestmark = pytest.mark.engines

MB = 1 << 20
CHUNK = b"x" * (64 * 1024)


@pytest.fixture(scope="module")
async def live_url(stack: Stack) -> AsyncIterator[str]:
    """Every service of the stack on a real socket (uvicorn), as clients reach them."""
    async with serving(stack.app()) as url:
        yield url


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Samples this process's resident memory every 5 ms; yields a list that ends up holding the
    growth of the peak over the start (bytes)."""
    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    growth: list[int] = []
    try:
        yield growth
    finally:
        stop.set()
        sampler.join()
        growth.append(max(peak[0], process.memory_info().rss) - start)


async def raw_post(url: str, path: str, headers: dict[str, str], chunks: Iterable[bytes] = ()) -> tuple[int, dict]:
    """POST over a plain socket: the head, then `chunks` as fast as the server takes them, until it
    answers. Returns (status, JSON body); AssertionError when no answer comes within 10 s."""
    where = urlsplit(url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    head = f"POST {path} HTTP/1.1\r\nhost: {where.netloc}\r\ncontent-type: application/json\r\n"
    writer.write((head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())

    async def pump() -> None:
        with contextlib.suppress(ConnectionError):
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()

    pumping = asyncio.create_task(pump())
    try:
        status_line, _, rest = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).partition(b"\r\n")
        length = next(int(v) for k, _, v in (h.partition(b": ") for h in rest.split(b"\r\n")) if k.lower() == b"content-length")
        body = await asyncio.wait_for(reader.readexactly(length), 10)
    except TimeoutError as exc:
        raise AssertionError(f"no answer to POST {path} within 10 s (the server is still reading the body)") from exc
    finally:
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        writer.transport.abort()
    return int(status_line.split()[1]), orjson.loads(body)


def chunked(total: int) -> Iterator[bytes]:
    """A chunked transfer encoding of `total` bytes of garbage (never terminated early)."""
    for _ in range(total // len(CHUNK)):
        yield b"%x\r\n%b\r\n" % (len(CHUNK), CHUNK)
    yield b"0\r\n\r\n"


JSON_ROUTES = {"/api/user/login": 64, "/api/user/signup": 64, "/api/auth/register": 64, "/api/email/reports": 64,
               "/api/email/notification": 256}  # KB


@pytest.mark.parametrize(("path", "cap_kb"), JSON_ROUTES.items())
async def test_a_huge_content_length_is_refused_413_without_reading_the_body(
    live_url: str, path: str, cap_kb: int
) -> None:
    status, body = await raw_post(live_url, path, {"content-length": str(200 * MB)})
    assert status == 413, body
    assert f"{cap_kb} KB" in body["detail"]


async def test_a_notification_as_long_as_its_schema_allows_fits_its_cap(client: httpx.AsyncClient) -> None:
    user = await signup_login(client)
    text = "\U0001f600" * 20000  # 20,000 characters, sent as 240 KB of ASCII JSON
    r = await client.post("/api/email/notification", json={"subject": "long", "body": text}, headers=user["headers"])
    assert r.status_code == 202, r.text


async def test_a_chunked_body_is_cut_off_at_the_cap_and_memory_stays_flat(live_url: str) -> None:
    """Before, five 200 MB login bodies took the process from 670 MB to 1.87 GB."""
    with peak_rss_growth() as growth:
        status, body = await raw_post(live_url, "/api/user/login", {"transfer-encoding": "chunked"}, chunked(96 * MB))
    assert status == 413, body
    assert "64 KB" in body["detail"]
    assert growth[0] < 24 * MB, f"memory grew by {growth[0] // MB} MB while refusing a 96 MB body"


async def test_a_json_body_under_the_cap_is_read_as_before(live_url: str) -> None:
    async with httpx.AsyncClient(base_url=live_url) as http:
        r = await http.post("/api/user/login", json={"username": "nobody", "password": "x" * 300})
    assert r.status_code == 422, r.text  # read and validated: the password is too long, nothing else


async def test_ingest_keeps_its_own_limits_500_kb_per_request_and_inflated(live_url: str) -> None:
    key = {"x-api-key": "wk_" + "A" * 43}  # the limits apply before the key is looked at
    status, body = await raw_post(live_url, "/api/analytics/collect", {**key, "content-length": str(200 * MB)})
    assert (status, "500 KB" in body["detail"]) == (413, True), body
    status, body = await raw_post(live_url, "/v1/batch", {**key, "transfer-encoding": "chunked"}, chunked(8 * MB))
    assert (status, "500 KB" in body["detail"]) == (413, True), body
    async with httpx.AsyncClient(base_url=live_url) as http:
        events = {"events": [{"event": "a", "metadata": {"pad": "x" * 400}}] * 2000}  # 1.7 MB, gzips to a few KB
        r = await http.post("/api/analytics/collect", content=gzip.compress(orjson.dumps(events)),
                            headers={**key, "content-encoding": "gzip"})
        assert r.status_code == 413 and "decompressed body over 500 KB" in r.json()["detail"], r.text
        # a body between the JSON APIs' cap and the ingest cap is read (and here refused for its key)
        r = await http.post("/api/analytics/collect", content=orjson.dumps({"events": [{"event": "b" * 200}] * 1000}),
                            headers=key)
        assert r.status_code == 401, r.text


# ---- CORS ------------------------------------------------------------------------------------

DASHBOARD = "https://dash.example.com"


@pytest.fixture(scope="module")
async def dashboard_origin_auth(engines: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An auth service configured with CORS_ALLOWED_ORIGINS=DASHBOARD and another origin."""
    configured = engines.model_copy(update={"cors_allowed_origins": f"{DASHBOARD}, https://admin.example.com"})
    async with Stack(configured, [AUTH]) as lone, client_for(lone, random_ip()) as http:
        yield http


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {"origin": origin, "access-control-request-method": method,
            "access-control-request-headers": "content-type,authorization"}


async def test_an_unknown_origin_gets_no_cors_grant_on_the_account_routes(client: httpx.AsyncClient) -> None:
    r = await client.options("/api/user/login", headers=preflight("https://evil.example"))
    assert "access-control-allow-origin" not in r.headers, r.headers
    r = await client.post("/api/user/login", json={"username": "nobody", "password": "Guess!x1"},
                          headers={"origin": "https://evil.example"})
    assert r.status_code == 401
    assert "access-control-allow-origin" not in r.headers, r.headers
    r = await client.get("/api/analytics/events/count", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers, r.headers  # reads are not ingest


async def test_a_configured_dashboard_origin_is_granted(dashboard_origin_auth: httpx.AsyncClient) -> None:
    http = dashboard_origin_auth
    r = await http.options("/api/user/login", headers=preflight(DASHBOARD))
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == DASHBOARD
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = await http.post("/api/user/login", json={"username": "nobody", "password": "Guess!x1"},
                        headers={"origin": DASHBOARD})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == DASHBOARD
    assert "Retry-After" in r.headers["access-control-expose-headers"]
    r = await http.options("/api/user/login", headers=preflight("https://evil.example"))
    assert "access-control-allow-origin" not in r.headers


async def test_ingest_and_the_snippet_stay_open_to_any_origin(client: httpx.AsyncClient) -> None:
    for path in ("/api/analytics/collect", "/api/analytics/events", "/api/analytics/metrics", "/v1/batch"):
        r = await client.options(path, headers=preflight("https://blog.example"))
        assert r.headers.get("access-control-allow-origin") == "*", path
    r = await client.post("/api/analytics/collect", json={"event": "x"}, headers={"origin": "https://blog.example"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "*"
    r = await client.get("/js/script.js", headers={"origin": "https://blog.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


# ---- the development JWT secret ----------------------------------------------------------------

PROBE = ServiceSpec("probe", 0, frozenset(), lambda _rt: ServiceParts())


async def readyz_and_logs(settings: Settings) -> tuple[httpx.Response, list[dict]]:
    with captured_logs() as out:
        async with Stack(settings, [PROBE]) as lone, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=lone.app()), base_url="http://svc"
        ) as http:
            ready = await http.get("/readyz")
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    return ready, [line for line in lines if "JWT_SECRET" in json.dumps(line)]


async def test_the_development_jwt_secret_is_warned_about_at_start_and_in_readyz(engines: Settings) -> None:
    ready, logged = await readyz_and_logs(engines.model_copy(update={"analytics_env": "development"}))
    assert ready.status_code == 200, ready.text  # still ready: it is development
    warnings = ready.json()["warnings"]
    assert len(warnings) == 1 and "JWT_SECRET is the development default" in warnings[0], warnings
    assert [line["level"] for line in logged] == ["warning"], logged
    assert "secrets.token_urlsafe" in json.dumps(logged[0])  # says what to do


async def test_a_real_jwt_secret_is_not_warned_about(engines: Settings) -> None:
    ready, logged = await readyz_and_logs(engines.model_copy(update={"jwt_secret": "s" * 48}))
    assert ready.status_code == 200 and ready.json()["warnings"] == []
    assert logged == []
