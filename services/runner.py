"""Run a set of services in this process: embedded engines for unset URLs, the services, uvicorn.

`all` serves every route on one port (8000). A subset serves each service on its own port (the
table in the README) unless a port is given, in which case they share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn

from libs.embedded import EmbeddedStack, Role
from libs.kafka import Drained
from libs.logs import get_logger
from libs.memory import release_free_heap
from libs.runtime import ServiceSpec, Stack
from libs.settings import Settings
from services import aggregator, auth, gateway, notifier, query
from services.http_protocol import OneWriteHttpToolsProtocol, QuietServer

log = get_logger(__name__)

SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (auth.SERVICE, gateway.SERVICE, query.SERVICE, aggregator.SERVICE, notifier.SERVICE)
}
ALL_PORT = 8000


class StartupError(RuntimeError):
    """Something the user can fix; the message says what."""


def select_services(names: str) -> list[ServiceSpec]:
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted or wanted == ["all"]:
        return list(SERVICES.values())
    unknown = [n for n in wanted if n not in SERVICES]
    if unknown:
        raise StartupError(f"unknown service(s) {', '.join(unknown)}; choose from: all, {', '.join(SERVICES)}")
    return [SERVICES[n] for n in SERVICES if n in wanted]


def check_chdb_placement(settings: Settings, specs: list[ServiceSpec]) -> None:
    names = {s.name for s in specs}
    if settings.clickhouse_url is None and len(names & {"aggregator", "query"}) == 1:
        raise StartupError(
            "without CLICKHOUSE_URL, ClickHouse is chDB, which lives inside one process: run aggregator and "
            "query together (--services aggregator,query,...) or set CLICKHOUSE_URL to a ClickHouse server"
        )


def embedded_roles(specs: list[ServiceSpec]) -> list[Role]:
    roles: list[Role] = ["kafka", "postgres", "redis", "smtp"]
    needs = {n for s in specs for n in s.needs}
    return [r for r in roles if r in needs]


def ensure_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupError(
                f"port {port} on {host} is in use ({exc.strerror}); stop what runs there or pass --port"
            ) from exc


@dataclass
class Listener:
    specs: list[ServiceSpec]
    host: str
    port: int


def plan_listeners(specs: list[ServiceSpec], host: str, port: int | None, everything: bool) -> list[Listener]:
    if everything:
        return [Listener(specs, host, port or ALL_PORT)]
    if port is not None:
        return [Listener(specs, host, port)]
    return [Listener([spec], host, spec.port) for spec in specs]


async def run_services(
    settings: Settings,
    specs: list[ServiceSpec],
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    everything: bool = False,
    announce: Callable[[str], None] = print,
) -> int:
    """Start, serve until SIGINT/SIGTERM, stop. Returns an exit code. A failing background task (a
    consumer) is restarted by the stack and reported in /readyz; it never stops the HTTP services.

    Stopping: ingest answers 503 while the aggregator stores, and the notifier sends, what Kafka
    acknowledged (`Stack.drain`, bounded by `drain_timeout_s`); then the HTTP servers, the services
    and the embedded engines stop. The last log line says "stopped cleanly" only when nothing
    acknowledged was left behind; otherwise it says how much is at risk."""
    check_chdb_placement(settings, specs)
    listeners = plan_listeners(specs, host, port, everything)
    settings = with_served_base_url(settings, listeners)
    for listener in listeners:
        ensure_port_free(listener.host, listener.port)

    embedded = EmbeddedStack.start(settings, embedded_roles(specs))
    embedded.supervise(announce)  # an engine that dies is restarted
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = Stack(embedded.settings, specs)
    if embedded.started.keys() - {"smtp"}:
        stack.extra_checks["embedded_engines"] = lambda: _now(embedded.engines_ready())
    servers: list[QuietServer] = []
    serving: list[asyncio.Task[None]] = []
    try:
        await _wait_or_stop(stack.start(), stop)
        if stop.is_set():
            return 130
        tune_garbage_collector()
        for listener in listeners:
            app = stack.app(listener.specs)
            config = uvicorn.Config(
                app, host=listener.host, port=listener.port, log_config=None, access_log=False,
                lifespan="off", timeout_graceful_shutdown=10, backlog=2048, http=OneWriteHttpToolsProtocol,
                proxy_headers=False,  # X-Forwarded-For is read by libs.clientip, from TRUSTED_PROXIES only
            )
            servers.append(QuietServer(config))
        serving.extend(asyncio.create_task(s.serve(), name=f"http:{s.config.port}") for s in servers)
        while not all(s.started for s in servers):
            if any(t.done() for t in serving):
                raise StartupError("an HTTP listener failed to start; see the log above")
            await asyncio.sleep(0.02)
        announce(_banner(embedded, listeners, settings))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([stopped, *serving], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        return 0
    finally:
        # The servers keep answering while the stack drains: ingest with 503, the rest as usual.
        drained = await stack.drain()
        for server in servers:
            server.should_exit = True  # stop accepting, finish in-flight requests
        if serving:
            await asyncio.wait(serving, timeout=15)
        await stack.stop()
        embedded.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        log_stopped(drained, kafka_embedded="kafka" in embedded.started, failures=stack.drain_failures)


def log_stopped(drained: Sequence[Drained], kafka_embedded: bool, failures: Sequence[str] = ()) -> None:
    """The last line of a stop: "stopped cleanly" only when every acknowledged event was stored and
    every queued mail sent; otherwise how many are at risk, and what becomes of them."""
    risky = [f"{d.at_risk} {d.noun}" for d in drained if d.at_risk]
    risky += [f"whatever the {name} held" for name in failures]
    if not risky:
        log.info("stopped cleanly", **{f"{d.service}_drained": d.drained for d in drained})
        return
    fate = (
        "lost: the embedded Kafka kept them in memory only" if kafka_embedded
        else "they stay in Kafka and are handled when the services run again"
    )
    log.error(f"stopped with {' and '.join(risky)} at risk; {fate}")


async def _now(value: bool) -> bool:
    return value


def with_served_base_url(settings: Settings, listeners: list[Listener]) -> Settings:
    """Links in emails point at PUBLIC_BASE_URL; when it is not set, at where this process serves the
    dashboard (the query service), so `analytics run --port 9000` mails working links."""
    if "public_base_url" in settings.model_fields_set:
        return settings
    serving = next((li for li in listeners if any(s.name == "query" for s in li.specs)), None)
    if serving is None:
        return settings
    host = "127.0.0.1" if serving.host in ("0.0.0.0", "::", "") else serving.host
    if ":" in host:
        host = f"[{host}]"
    return settings.model_copy(update={"public_base_url": f"http://{host}:{serving.port}"})


def tune_garbage_collector() -> None:
    """After start-up, move everything alive (code, schemas, parsers' tables) out of the collector's
    reach and collect young objects less often. Request handling makes short-lived, mostly acyclic
    objects that reference counting frees; scanning hundreds of thousands of start-up objects on every
    collection was a large share of the ingest path's CPU (figure: docs/scaling.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    release_free_heap()  # what start-up freed (libs/memory.py)


async def _wait_or_stop(coro: Any, stop: asyncio.Event) -> None:
    task = asyncio.create_task(coro)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        task.result()
    else:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def _banner(embedded: EmbeddedStack, listeners: list[Listener], settings: Settings) -> str:
    lines = ["", "Analytics platform is running."]
    for listener in listeners:
        base = f"http://{listener.host}:{listener.port}"
        names = ", ".join(s.name for s in listener.specs)
        lines.append(f"  {names:<40} {base}   (docs: {base}/docs, ready: {base}/readyz)")
    lines.append(f"  data dir: {settings.data_dir}")
    if embedded.started:
        lines.append("  embedded engines started (set these URLs to use your own servers instead):")
        lines.extend(f"    {line}" for line in embedded.env_lines())
        if "kafka" in embedded.started:
            lines.append("    (the embedded Kafka, Tansu, keeps messages in memory only: Ctrl-C first stores and sends what it holds)")
        if "smtp" in embedded.started:
            lines.append(f"    mail sent by the platform lands in {settings.data_dir / 'mail'}")
    if settings.clickhouse_url is None and any("clickhouse" in s.needs for li in listeners for s in li.specs):
        lines.append(f"  ClickHouse: chDB in this process, data in {settings.data_dir / 'clickhouse'}")
    base = f"http://{listeners[0].host}:{listeners[0].port}"
    if any(s.name == "query" for li in listeners for s in li.specs):
        query_base = next(f"http://{li.host}:{li.port}" for li in listeners if any(s.name == "query" for s in li.specs))
        lines.append(f"Open {query_base}/dashboard to sign up, add your site and get its tracking snippet.")
    lines += [
        "Next: sign up, log in, register an app, send events:",
        f"  curl -s -XPOST {base}/api/user/signup -H 'content-type: application/json' "
        "-d '{\"username\":\"ada\",\"email\":\"ada@example.com\",\"password\":\"Str0ng!pass\"}'",
        "Press Ctrl-C to stop everything.",
        "",
    ]
    return "\n".join(lines)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
