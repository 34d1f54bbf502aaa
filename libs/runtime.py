"""Running services: shared connections, the service contract, and one stack that starts and stops them.

A service module exposes `SERVICE = ServiceSpec(...)`. Its `build(runtime)` returns the routers it
serves, the background tasks it runs, the readiness checks of its dependencies, and what to do at
start and stop. The same services run in one process (`analytics run`), in several, or in tests.

A service's routers are module-level. What its routes need (connections, the key table, a cache) is
one typed context object that its start hook sets with `runtime.contexts.set(name, context)`; a route
takes it as a FastAPI dependency made by `context_dependency(name, Kind)`. The stack hands out each
router bound to its own contexts (`bind_contexts`), so one app may serve several services, several
stacks (tests) may share a process, and a router mounted in an app of one's own still finds them.

Stopping loses nothing that was acknowledged: first every service stops taking work it would
acknowledge (the gateway answers 503 and waits for Kafka's acks of what it already took), then the
consumers store and send what Kafka holds, up to `drain_timeout_s`, and say what they could not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, Depends, FastAPI, Request

from libs import __version__
from libs.clickhouse import ClickHouse, connect_clickhouse
from libs.http import (
    ApiError,
    BodyLimitMiddleware,
    Check,
    RequestContextMiddleware,
    RouteCORS,
    install_error_handlers,
    install_health_routes,
    readiness,
    route_matcher,
)
from libs.kafka import Drained, ensure_topics, kafka_ping, make_producer
from libs.logs import get_logger
from libs.openapi import install_docs
from libs.settings import Settings
from libs.stores import create_pg_pool, create_redis, pg_ping, redis_ping
from libs.stream.consumer import Members, reporting_to

log = get_logger(__name__)

Need = Literal["kafka", "postgres", "redis", "smtp", "clickhouse"]

# A failed background job is started again after RESTART_MIN_S, doubling up to RESTART_MAX_S; it counts
# as healthy again (and the delay starts over) once it has run RESTART_STABLE_S.
RESTART_MIN_S = 0.5
RESTART_MAX_S = 60.0
RESTART_STABLE_S = 5.0

C = TypeVar("C")


class Contexts:
    """The context object each service of a stack set on start, by service name."""

    def __init__(self) -> None:
        self._by_service: dict[str, object] = {}

    def set(self, service: str, context: object) -> None:
        self._by_service[service] = context

    def find(self, service: str, kind: type[C]) -> C | None:
        """The context of `service`, or None before it started."""
        found = self._by_service.get(service)
        if found is not None and not isinstance(found, kind):
            raise TypeError(f"the context of {service} is a {type(found).__name__}, not a {kind.__name__}")
        return found

    def get(self, service: str, kind: type[C]) -> C:
        """The context of `service`; 503 while it has not started (a request that came in too early)."""
        found = self.find(service, kind)
        if found is None:
            raise ApiError(503, f"the {service} service is still starting; try again in a moment", {"Retry-After": "1"})
        return found


def context_dependency(service: str, kind: type[C]) -> Callable[[Request], Awaitable[C]]:
    """A FastAPI dependency giving the routes of `service` its context, from the contexts the request's
    router is bound to: `Ctx = Annotated[Kind, Depends(context_dependency("name", Kind))]`."""

    async def dependency(request: Request) -> C:  # async: no thread hop for a dict lookup
        contexts: Contexts = request.state.contexts
        return contexts.get(service, kind)

    dependency.__name__ = f"{service}_context"
    return dependency


def bind_contexts(router: APIRouter, contexts: Contexts) -> APIRouter:
    """`router`, its routes reaching `contexts` wherever it is mounted. The binding is a router-level
    dependency, which FastAPI solves before the routes' own."""

    async def use_contexts(request: Request) -> None:
        request.state.contexts = contexts

    bound = APIRouter(dependencies=[Depends(use_contexts)])
    bound.include_router(router)
    return bound


class Runtime:
    """Connections shared by every service in this process, each opened once, on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._pg: asyncpg.Pool | None = None
        self._redis: aioredis.Redis | None = None
        self._clickhouse: ClickHouse | None = None
        self._lock = asyncio.Lock()
        self._topics_ready = False
        self.shared: dict[str, Any] = {}  # objects services share, e.g. the API-key table
        self.contexts = Contexts()  # each service's own, set on start (see the module's docstring)

    async def kafka_ready(self) -> None:
        async with self._lock:
            if not self._topics_ready:
                await ensure_topics(self.settings)
                self._topics_ready = True

    async def producer(self) -> AIOKafkaProducer:
        await self.kafka_ready()
        async with self._lock:
            if self._producer is None:
                producer = make_producer(self.settings)
                await producer.start()
                self._producer = producer
            return self._producer

    async def pg(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pg is None:
                self._pg = await create_pg_pool(self.settings)
            return self._pg

    async def redis(self) -> aioredis.Redis:
        async with self._lock:
            if self._redis is None:
                self._redis = create_redis(self.settings)
            return self._redis

    async def clickhouse(self) -> ClickHouse:
        async with self._lock:
            if self._clickhouse is None:
                self._clickhouse = await connect_clickhouse(self.settings)
            return self._clickhouse

    def checks(self, needs: set[Need]) -> dict[str, Check]:
        """Readiness checks for the given dependencies."""
        checks: dict[str, Check] = {}
        if "kafka" in needs:
            checks["kafka"] = lambda: kafka_ping(self.settings)
        if "postgres" in needs:
            checks["postgres"] = lambda: pg_ping(self._pg) if self._pg else _false()
        if "redis" in needs:
            checks["redis"] = lambda: redis_ping(self._redis) if self._redis else _false()
        if "clickhouse" in needs:
            checks["clickhouse"] = lambda: self._clickhouse.ping() if self._clickhouse else _false()
        return checks

    async def close(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):  # a dead broker must not hold up shutdown
                await asyncio.wait_for(self._producer.stop(), 5)
        if self._pg is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pg.close(), 5)
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        if self._clickhouse is not None:
            await self._clickhouse.close()
        self._producer = self._pg = self._redis = self._clickhouse = None


async def _false() -> bool:
    return False


def _log_drained(d: Drained) -> None:
    facts = {"service": d.service, "drained": d.drained, "at_risk": d.at_risk, "seconds": round(d.seconds, 2)}
    if d.at_risk:
        log.error(
            f"{d.at_risk} {d.noun} at risk: not {d.done} when the {d.timeout:g}s drain (DRAIN_TIMEOUT_S) ended "
            f"({d.drained} were); the errors above say why", **facts,
        )
    else:
        log.info(f"drained {d.drained} {d.noun} in {d.seconds:.2f}s ({d.done})", **facts)


@dataclass
class ServiceParts:
    routers: list[APIRouter] = field(default_factory=list)
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    checks: dict[str, Check] = field(default_factory=dict)
    # Outermost ASGI layers (e.g. the gateway's ingest fast path), applied around the whole app.
    asgi_wrappers: list[Callable[[Any], Any]] = field(default_factory=list)
    # Request body caps of exact paths, instead of the JSON APIs' 64 KB (libs.http.BodyLimitMiddleware).
    body_limits: dict[str, int] = field(default_factory=dict)
    # Routes any website may call from a browser (open CORS): "POST /path" or "GET /prefix/*".
    public_routes: list[str] = field(default_factory=list)
    # Stopping, before `on_stop`: stop taking work that would be acknowledged (and wait until what was
    # taken is acknowledged or refused); then finish what was acknowledged within the given seconds,
    # saying how much and what was left (None: nothing to drain).
    stop_accepting: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    drains: list[Callable[[float], Awaitable[Drained | None]]] = field(default_factory=list)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port: int
    needs: frozenset[Need]
    build: Callable[[Runtime], ServiceParts]
    description: str = ""
    # The dependencies /readyz checks (default: all of `needs`). A service that keeps working without
    # one (the gateway without Postgres or Redis) leaves it out, so an outage does not take it out of
    # its load balancer.
    ready_needs: frozenset[Need] | None = None
    # The OpenAPI tags of its routes, each (name, description), in the order the docs list them.
    tags: tuple[tuple[str, str], ...] = ()


class Stack:
    """Some services sharing one Runtime: start (migrations, consumers), serve, stop cleanly."""

    def __init__(self, settings: Settings, specs: list[ServiceSpec]) -> None:
        self.settings = settings
        self.specs = specs
        self.runtime = Runtime(settings)
        self.parts: dict[str, ServiceParts] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Background tasks that failed and have not yet run `RESTART_STABLE_S` since their restart, and
        # how often each has failed in all.
        self.failing: dict[str, BaseException] = {}
        self.failures: collections.Counter[str] = collections.Counter()
        self.extra_checks: dict[str, Check] = {}  # readiness of what runs beside the services (embedded engines)
        self._started = False
        self._stopped = False
        self.drained: list[Drained] | None = None
        self.drain_failures: list[str] = []  # services whose drain raised: what they held is unaccounted for
        self.members = Members()  # the consumers its services run (GET /status)

    @property
    def needs(self) -> set[Need]:
        return {n for spec in self.specs for n in spec.needs}

    def build(self) -> None:
        """Each service's parts (its routers bound to this stack's contexts), without starting anything:
        enough for `app()` to serve the OpenAPI document and the docs pages. `start` builds them first."""
        for spec in self.specs:
            if spec.name not in self.parts:
                parts = self.parts[spec.name] = spec.build(self.runtime)
                parts.routers = [bind_contexts(router, self.runtime.contexts) for router in parts.routers]

    async def start(self) -> None:
        self.build()
        for spec in self.specs:
            reporting = reporting_to.set((self.members, spec.name))  # consumers started here report in /status
            try:
                for hook in self.parts[spec.name].on_start:
                    await hook()
            finally:
                reporting_to.reset(reporting)
            log.info("service started", service=spec.name)
        for problem in self.settings.insecure_defaults():
            log.warning("insecure configuration", problem=problem)
        for spec in self.specs:
            for job in self.parts[spec.name].background:
                name = f"{spec.name}:{job.__name__}"
                self._tasks.append(asyncio.create_task(self._supervise(name, job), name=name))
        self._started = True

    async def _supervise(self, name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a background job (a consumer) until it returns; when it fails, log it, report it in
        /readyz and start it again after a growing delay. A failing consumer never stops the process,
        so the HTTP services it shares a process with keep answering."""
        reporting_to.set((self.members, name.partition(":")[0]))  # this task's own context: its consumers report in /status
        delay = RESTART_MIN_S
        while True:
            run = asyncio.create_task(job(), name=name)
            try:
                done, _ = await asyncio.wait({run}, timeout=RESTART_STABLE_S)
                if not done:  # it has been running long enough: healthy again
                    if self.failing.pop(name, None) is not None:
                        log.info("background task running again", task=name)
                    delay = RESTART_MIN_S
                    await run
                else:
                    run.result()
                return
            except asyncio.CancelledError:
                if not run.done():  # cancelled while waiting: the job gets to finish its batch and commit
                    run.cancel()
                    await asyncio.wait({run})
                raise
            except Exception as exc:  # any failure of a job is logged and retried
                self.failing[name] = exc
                self.failures[name] += 1
                log.error("background task failed; restarting it", task=name, error=repr(exc)[:500],
                          retry_in_s=delay, exc_info=exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)

    def task_checks(self, spec: ServiceSpec) -> dict[str, Check]:
        """A /readyz check per background job of `spec`: false from its failure until it has run
        `RESTART_STABLE_S` again."""
        names = [f"{spec.name}:{job.__name__}" for job in self.parts[spec.name].background]
        return {name: functools.partial(self._task_ok, name) for name in names}

    async def _task_ok(self, name: str) -> bool:
        return name not in self.failing

    async def drain(self) -> list[Drained]:
        """Stop taking work, then let the consumers finish what was acknowledged (`drain_timeout_s`);
        logs and returns what each did. Runs once: later calls return the first answer. A stack that
        did not finish starting served nothing, so it has nothing to drain."""
        if self.drained is not None:
            return self.drained
        self.drained = []
        if not self._started:
            return self.drained
        for spec in self.specs:
            for accepting in self._parts_of(spec).stop_accepting:
                try:
                    await accepting()
                except Exception as exc:  # noqa: BLE001 - the drains still run
                    log.warning("could not stop taking work", service=spec.name, error=repr(exc))
        hooks = [(spec.name, hook) for spec in self.specs for hook in self._parts_of(spec).drains]
        timeout = self.settings.drain_timeout_s
        results = await asyncio.gather(*(hook(timeout) for _, hook in hooks), return_exceptions=True)
        for (name, _), result in zip(hooks, results, strict=True):
            if isinstance(result, BaseException):
                log.error("draining failed; what it held is unaccounted for", service=name, error=repr(result))
                self.drain_failures.append(name)
            elif result is not None:
                _log_drained(result)
                self.drained.append(result)
        return self.drained

    def _parts_of(self, spec: ServiceSpec) -> ServiceParts:
        return self.parts.get(spec.name) or ServiceParts()

    async def stop(self) -> list[Drained]:
        """Drain (see `drain`), then cancel the background tasks still running, run the stop hooks, close
        the connections. Returns what the drain did; once stopped, later calls only return that."""
        drained = await self.drain()
        if self._stopped:
            return drained
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
        self._tasks.clear()
        for spec in reversed(self.specs):
            parts = self.parts.get(spec.name)
            for hook in reversed(parts.on_stop if parts else []):
                try:
                    await hook()
                except Exception as exc:  # noqa: BLE001 - stopping goes on for the others
                    log.warning("stop hook failed", service=spec.name, error=repr(exc))
        await self.runtime.close()
        return drained

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def app(self, specs: list[ServiceSpec] | None = None) -> Any:
        """An ASGI app serving the routes of `specs` (default: every service of the stack)."""
        specs = specs or self.specs
        names = [s.name for s in specs]
        title = "Analytics platform" if len(specs) > 1 else f"Analytics {names[0]} service"
        tags = [{"name": name, "description": text} for spec in specs for name, text in spec.tags]
        app = FastAPI(
            title=title,
            version=__version__,
            description="Routes: " + ", ".join(names) + ". Errors answer `{\"detail\": ...}`.",
            openapi_tags=[*tags, {"name": "health", "description": "liveness, readiness and Prometheus metrics"}],
            docs_url=None,
            redoc_url=None,
        )
        install_docs(app)
        install_error_handlers(app)
        checks: dict[str, Check] = {}
        for spec in specs:
            parts = self.parts[spec.name]
            for router in parts.routers:
                app.include_router(router)
            checked = spec.ready_needs if spec.ready_needs is not None else spec.needs
            checks.update(self.runtime.checks(set(checked) - {"smtp"}))
            checks.update(parts.checks)
            checks.update(self.task_checks(spec))
        checks.update(self.extra_checks)
        install_health_routes(app, checks, self.settings.insecure_defaults())

        @app.get("/status", operation_id="getStatus", tags=["health"],
                 summary="Readiness and the Kafka consumers of the services served here (what `analytics status` reads)")
        async def status() -> dict[str, Any]:
            ready, results = await readiness(checks)
            return {
                "services": names,
                "version": __version__,
                "kafka": self.settings.kafka_bootstrap_servers,  # where `analytics status` finds the groups
                "status": "ready" if ready else "not ready",
                "checks": results,
                "consumers": self.members.status(names),
            }

        served = [self.parts[spec.name] for spec in specs]
        app.add_middleware(BodyLimitMiddleware, limits={k: v for p in served for k, v in p.body_limits.items()})
        public = route_matcher(route for p in served for route in p.public_routes)
        app.add_middleware(RouteCORS, public=public, origins=self.settings.cors_origins)
        app.add_middleware(RequestContextMiddleware, service="+".join(names))
        wrapped: Any = app
        for spec in specs:
            for wrap in self.parts[spec.name].asgi_wrappers:
                wrapped = wrap(wrapped)
        return wrapped
