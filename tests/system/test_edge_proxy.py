"""The production edge proxy (deploy/nginx) run for real in front of the services in separate processes.

The nginx config is the one docker-compose.yml uses: the same `routes.conf`, and the same upstream
template rendered with 127.0.0.1 ports instead of the compose service names. The services are
started as an operator starts them (`analytics infra`, then `analytics run --services X` per
service) and every assertion is on what a client of the edge sees.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e import ROOT, analytics, clean_env, port, read_exports, stop_and_check_nothing_left, wait_ready
from tests.system.slice_http import run_slice

pytestmark = pytest.mark.e2e

NGINX_DIR = ROOT / "deploy" / "nginx"
TEMPLATE_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")

# What each service says to a request without credentials: tells which service answered.
GATEWAY_NO_KEY = "missing API key: send it in the x-api-key header"
QUERY_NO_KEY = "send x-api-key: <secret key>, or a Bearer token with app_id="


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def render_template(text: str, values: dict[str, str]) -> str:
    """What the nginx image's entrypoint does (envsubst of set variables), strict: all must be set."""
    missing = sorted({m for m in TEMPLATE_VAR.findall(text) if m not in values})
    assert not missing, f"template variables without a value: {missing}"
    return TEMPLATE_VAR.sub(lambda m: values[m.group(1)], text)


def write_nginx_prefix(prefix: Path, edge_port: int, upstreams: dict[str, int]) -> Path:
    """An nginx prefix laid out like /etc/nginx in the image: nginx.conf, conf.d/, analytics/routes.conf."""
    (prefix / "conf.d").mkdir(parents=True)
    (prefix / "analytics").mkdir()
    (prefix / "logs").mkdir()
    shutil.copy(NGINX_DIR / "routes.conf", prefix / "analytics" / "routes.conf")
    rendered = render_template(
        (NGINX_DIR / "templates" / "default.conf.template").read_text(),
        {
            "EDGE_PORT": f"127.0.0.1:{edge_port}",
            "EDGE_RESOLVER": "127.0.0.1",
            "UPSTREAM_RESOLVE": "",  # Debian's nginx predates `resolve`; nothing to re-resolve here
            **{f"{name.upper()}_UPSTREAM": f"127.0.0.1:{p}" for name, p in upstreams.items()},
        },
    )
    (prefix / "conf.d" / "default.conf").write_text(rendered)
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include conf.d/*.conf;
}}
"""
    )
    (prefix / "tmp").mkdir()
    return conf


@dataclass
class Edge:
    base: str
    services: dict[str, str]  # name -> base URL of the service's own port
    procs: dict[str, subprocess.Popen[str]]
    log_dir: Path


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light; .ci/run installs it)")
    tmp = tmp_path_factory.mktemp("edge")
    data = tmp / "d"
    started: list[subprocess.Popen[str]] = []
    try:
        infra = analytics("infra", env=clean_env(data), log=tmp / "infra.log")
        started.append(infra)
        env = clean_env(data, **read_exports(infra, tmp / "infra.log"))
        # chDB lives in one process, so aggregator and query share one (as documented).
        groups = {"gateway": "gateway", "auth": "auth", "query": "aggregator,query", "notifier": "notifier"}
        ports = {name: port() for name in groups}
        procs: dict[str, subprocess.Popen[str]] = {}
        for name, services in groups.items():
            procs[name] = analytics("run", "--services", services, "--port", str(ports[name]),
                                    env=env, log=tmp / f"{name}.log")
            started.append(procs[name])
        bases = {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
        for name, base in bases.items():
            wait_ready(base, procs[name], tmp / f"{name}.log")

        edge_port = port()
        conf = write_nginx_prefix(tmp / "nginx", edge_port, {n: ports[n] for n in ("gateway", "auth", "query")})
        check = subprocess.run([nginx, "-t", "-p", str(tmp / "nginx"), "-c", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, f"nginx -t refused the edge config:\n{check.stderr}"
        out = open(tmp / "nginx.log", "w")  # noqa: SIM115 - closed below
        proxy = subprocess.Popen([nginx, "-p", str(tmp / "nginx"), "-c", str(conf)], stdout=out, stderr=out,
                                 text=True, start_new_session=True)
        started.append(proxy)
        base = f"http://127.0.0.1:{edge_port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proxy.poll() is None, (tmp / "nginx.log").read_text() + (tmp / "nginx" / "logs" / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not answer /healthz"
            time.sleep(0.1)
        yield Edge(base, bases, procs, tmp)
        proxy.send_signal(signal.SIGQUIT)  # graceful stop
        proxy.wait(10)
        out.close()
        for name in ("gateway", "auth", "query", "notifier"):
            if procs[name].poll() is None:
                assert stop_and_check_nothing_left(procs[name], signal.SIGTERM) == 0, name
        assert stop_and_check_nothing_left(infra, signal.SIGINT) == 0
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def detail(response: httpx.Response) -> object:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.json()["detail"]


def test_the_edge_answers_its_own_health_and_unknown_paths_as_json(edge: Edge) -> None:
    r = httpx.get(f"{edge.base}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "service": "edge"}
    r = httpx.get(f"{edge.base}/no/such/page")
    assert r.status_code == 404 and detail(r) == "Not Found"
    assert "server" not in r.headers or "nginx/" not in r.headers["server"]  # no version leaked
    # Internal endpoints stay inside the network.
    assert httpx.get(f"{edge.base}/metrics").status_code == 404


def test_ingest_and_query_share_two_paths_and_are_told_apart_by_method(edge: Edge) -> None:
    for path in ("/api/analytics/events", "/api/analytics/metrics"):
        posted = httpx.post(f"{edge.base}{path}", json={})
        assert posted.status_code == 401 and detail(posted) == GATEWAY_NO_KEY, (path, posted.text)
        got = httpx.get(f"{edge.base}{path}")
        assert got.status_code == 401 and detail(got) == QUERY_NO_KEY, (path, got.text)
    # The same answers as the services give on their own ports: the edge adds nothing.
    assert detail(httpx.post(f"{edge.services['gateway']}/api/analytics/events", json={})) == GATEWAY_NO_KEY
    assert detail(httpx.get(f"{edge.services['query']}/api/analytics/events")) == QUERY_NO_KEY


def test_each_route_reaches_its_own_service(edge: Edge) -> None:
    # gateway: collect (POST); query: every other /api/analytics read.
    r = httpx.post(f"{edge.base}/api/analytics/collect", json={"event": "x"})
    assert r.status_code == 401 and detail(r) == GATEWAY_NO_KEY
    for path in ("/api/analytics/event-summary?event=x", "/api/analytics/events/count",
                 "/api/analytics/user-stats?userId=u1", "/api/analytics/users/active"):
        r = httpx.get(f"{edge.base}{path}")
        assert r.status_code == 401 and detail(r) == QUERY_NO_KEY, (path, r.text)
    # auth: users, apps and email; these paths exist only there (elsewhere they would be 404).
    r = httpx.post(f"{edge.base}/api/user/login", json={"username": "nobody-here", "password": "Wr0ng!pass"})
    assert r.status_code == 401, r.text
    r = httpx.get(f"{edge.base}/api/user/get_user_profile")
    assert r.status_code == 401 and "Bearer" in str(detail(r))
    r = httpx.post(f"{edge.base}/api/auth/register", json={"name": "x"})
    assert r.status_code == 401 and "Bearer" in str(detail(r))
    r = httpx.post(f"{edge.base}/api/email/notification", json={})
    assert r.status_code in (401, 422) and r.status_code != 404, r.text
    # Routes present only in one service: the Swagger spec of the one that answered proves it.
    spec = httpx.get(f"{edge.services['gateway']}/openapi.json").json()
    assert "/api/analytics/collect" in spec["paths"]


def test_every_route_of_every_service_is_proxied_to_that_service(edge: Edge) -> None:
    """Each service's own route table (its /openapi.json), replayed through the edge; the edge's
    access log names the upstream that answered. New routes are covered without editing this test."""
    # Each service's own routes, which stay inside the network (routes.conf says why).
    own = {"/healthz", "/readyz", "/metrics", "/status", "/docs", "/docs/oauth2-redirect", "/openapi.json"}
    port_of = {base.rsplit(":", 1)[1]: name for name, base in edge.services.items()}
    sent: dict[str, tuple[str, str, str]] = {}
    with httpx.Client(timeout=10) as http:
        for name in ("gateway", "auth", "query"):
            spec = http.get(f"{edge.services[name]}/openapi.json").json()
            for path, operations in spec["paths"].items():
                if path in own:
                    continue
                concrete = re.sub(r"\{[^}]+\}", "x1", path)
                for method in operations:
                    rid = f"route-{len(sent)}-{method}"
                    http.request(method.upper(), f"{edge.base}{concrete}", headers={"x-request-id": rid})
                    sent[rid] = (method.upper(), path, name)
    assert {name for _, _, name in sent.values()} == {"gateway", "auth", "query"}
    time.sleep(0.3)
    answered = {}
    for line in (edge.log_dir / "nginx.log").read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            answered[entry["request_id"]] = port_of.get(entry["upstream"].rsplit(":", 1)[-1], entry["upstream"] or "the edge")
    wrong = {f"{m} {p}": f"reached {answered.get(rid)}, owned by {owner}" for rid, (m, p, owner) in sent.items()
             if answered.get(rid) != owner}
    assert not wrong, wrong


def test_request_ids_pass_through_and_are_made_when_missing(edge: Edge) -> None:
    r = httpx.get(f"{edge.base}/api/analytics/events", headers={"x-request-id": "edge-test-42"})
    assert r.headers["x-request-id"] == "edge-test-42"
    r = httpx.post(f"{edge.base}/api/analytics/collect", json={})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), r.headers  # nginx's $request_id


def test_the_whole_slice_through_the_edge(edge: Edge) -> None:
    """Sign up, register an app, ingest and read back: every step through the one edge port."""
    result = run_slice(edge.base, edge.base, edge.base)
    assert result["summary"]["count"] == 5  # type: ignore[index]
    # And the events/metrics reads answer through the edge with a real key.
    key = result["app"]["api_key"]  # type: ignore[index]
    r = httpx.get(f"{edge.base}/api/analytics/events", params={"limit": 2}, headers={"x-api-key": key})
    assert r.status_code == 200, r.text
    r = httpx.post(f"{edge.base}/api/analytics/metrics", headers={"x-api-key": key},
                   json={"metric_name": "load_ms", "value": 12.5, "unit": "ms", "tags": {"page": "/"}})
    assert r.status_code == 202, r.text


def test_the_image_healthcheck_tells_ready_from_down(edge: Edge) -> None:
    """deploy/healthcheck.py, the image's HEALTHCHECK, against a real service and a closed port."""
    script = ROOT / "deploy" / "healthcheck.py"
    gateway_port = edge.services["gateway"].rsplit(":", 1)[1]
    ok = subprocess.run([sys.executable, str(script)], env={"HEALTHCHECK_PORT": gateway_port},
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "ready" in ok.stdout, ok.stdout + ok.stderr
    down = subprocess.run([sys.executable, str(script)], env={"HEALTHCHECK_PORT": str(port())},
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "nothing answers" in down.stdout, down.stdout


def test_a_stopped_service_is_a_json_503_with_retry_after_not_an_html_502(edge: Edge) -> None:
    # Last test of the module: stops the gateway for good.
    assert stop_and_check_nothing_left(edge.procs["gateway"], signal.SIGTERM) == 0
    r = httpx.post(f"{edge.base}/api/analytics/collect", json={"event": "x"}, headers={"x-api-key": "wk_x"})
    assert r.status_code == 503, r.text
    assert "unavailable" in str(detail(r)) and r.headers["retry-after"] == "5"
    # Reads on the shared path still reach the query service.
    r = httpx.get(f"{edge.base}/api/analytics/events")
    assert r.status_code == 401 and detail(r) == QUERY_NO_KEY


def test_the_dashboard_session_cookie_works_through_the_edge(edge: Edge) -> None:
    """The dashboard and auth answer on one origin behind the edge, so the refresh cookie that login sets
    is sent back to the refresh route (and only there), and refresh rotates it."""
    name = f"edge{int(time.time() * 1000) % 10**9}"
    with httpx.Client(base_url=edge.base, timeout=10) as browser:
        assert browser.get("/dashboard").status_code == 200
        r = browser.post("/api/user/signup", json={"username": name, "email": f"{name}@example.com", "password": "Str0ng!pass"})
        assert r.status_code == 201, r.text
        r = browser.post("/api/user/login", json={"username": name, "password": "Str0ng!pass"})
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"]
        assert "Path=/api/user/refresh" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        first = browser.cookies["analytics_refresh"]
        r = browser.post("/api/user/refresh", json={})  # the cookie only
        assert r.status_code == 200, r.text
        assert browser.cookies["analytics_refresh"] == r.json()["refresh_token"] != first
        r = browser.get("/api/user/get_user_profile", headers={"authorization": f"Bearer {r.json()['access_token']}"})
        assert r.status_code == 200 and r.json()["username"] == name
