"""One guard around every Redis call of a process: a time budget per request and a circuit breaker.

Redis is a helper here (query cache, rate-limit windows, token denylist, sent-mail records, key usage)
and every caller already decides what "Redis did not answer" means (answer uncached, let the request
through, refuse a logout). A hung Redis (it accepts connections and never answers) must cost a request
milliseconds, not one socket timeout per call:

- Budget: the HTTP middleware runs each request inside `request_budget()`; the time its Redis calls
  take is added up, and together they get REQUEST_BUDGET_S: each call gets what is left as its timeout
  (at most CALL_TIMEOUT_S), and once it is spent the others fail at once. (Time spent elsewhere, e.g.
  in ClickHouse, does not count.) Calls outside a request (background loops) get CALL_TIMEOUT_S each.
- Breaker, one per Redis server (so one per process in production): FAILURES connection errors or
  timeouts in a row open it; while open, calls fail at once for COOLDOWN_S; then one call goes through
  as a probe: an answer closes the breaker, a failure opens it again.

A refused call raises `RedisUnavailable`, a `redis.exceptions.ConnectionError`, and a call cut short a
`redis.exceptions.TimeoutError`, so callers catching RedisError keep their decision unchanged. The
breaker is written here rather than taken from pybreaker/purgatory/aiobreaker: none of them has the
per-request budget, which is most of the job, and the state machine is a few lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from libs.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")

REQUEST_BUDGET_S = 0.1  # all Redis calls of one HTTP request together
CALL_TIMEOUT_S = 1.0  # one call outside a request (background loops)
FAILURES = 3  # connection errors or timeouts in a row that open the breaker
COOLDOWN_S = 2.0  # how long an open breaker refuses calls before one probe

CIRCUIT_OPEN = Gauge("redis_circuit_open", "1 while Redis calls are skipped (breaker open), else 0", ["target"])
SHORT_CIRCUITED = Counter(
    "redis_calls_short_circuited_total", "Redis calls refused without asking Redis", ["target", "reason"]
)
CALL_FAILURES = Counter("redis_call_failures_total", "Redis calls that failed: connection errors and timeouts", ["target"])



class _Budget:
    """Seconds the Redis calls of one request may still take."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds


_budget: ContextVar[_Budget | None] = ContextVar("redis_budget", default=None)


class RedisUnavailable(RedisConnectionError):
    """Redis was not asked: its breaker is open, or the request's Redis budget is spent."""


@contextlib.contextmanager
def request_budget(seconds: float = REQUEST_BUDGET_S) -> Iterator[None]:
    """Give the Redis calls made in this context `seconds` in all."""
    token = _budget.set(_Budget(seconds))
    try:
        yield
    finally:
        _budget.reset(token)


def _is_outage(exc: BaseException) -> bool:
    """A connection error or timeout, also when wrapped (e.g. by `limits` as StorageError)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)):
            return True
        seen = getattr(seen, "storage_error", None) or seen.__cause__
    return False


class RedisGuard:
    """The budget and breaker of one Redis server."""

    def __init__(
        self, target: str, *, failures: int = FAILURES, cooldown: float = COOLDOWN_S,
        call_timeout: float = CALL_TIMEOUT_S, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.failures = failures
        self.cooldown = cooldown
        self.call_timeout = call_timeout
        self._clock = clock
        self._failed_in_a_row = 0
        self._open_until: float | None = None  # None: closed
        self._probing = False
        CIRCUIT_OPEN.labels(target).set(0)

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """`await fn(*args, **kwargs)` under the budget and the breaker."""
        return await self._call(_budget.get(), fn, *args, **kwargs)

    async def call_outside_budget(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """As `call`, with `call_timeout` of its own rather than what is left of the request's budget:
        for a call a request cannot do without (a security check that fails closed), so that a burst of
        requests queueing for Redis is not mistaken for Redis being away."""
        return await self._call(None, fn, *args, **kwargs)

    async def _call(self, budget: _Budget | None, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        timeout, probe = self._admit(budget)
        started = self._clock()
        try:
            async with asyncio.timeout(timeout):
                result = await fn(*args, **kwargs)
        except TimeoutError as exc:  # ours, or the socket's
            self._failed(exc, probe)
            raise RedisTimeoutError(f"Redis did not answer within {timeout * 1000:.0f} ms") from exc
        except asyncio.CancelledError:
            if probe:
                self._probing = False  # the caller gave up: the next call probes instead
            raise
        except BaseException as exc:
            if _is_outage(exc):
                self._failed(exc, probe)
            else:
                self._answered()  # e.g. a script error: Redis itself answered
            raise
        finally:
            if budget is not None:
                budget.left -= self._clock() - started
        self._answered()
        return result

    def _admit(self, budget: _Budget | None) -> tuple[float, bool]:
        """(timeout, whether this call is the probe) for a call allowed now; else RedisUnavailable."""
        now = self._clock()
        if self._open_until is not None and (now < self._open_until or self._probing):
            SHORT_CIRCUITED.labels(self.target, "circuit_open").inc()
            raise RedisUnavailable(f"Redis at {self.target} is not answering; calls are skipped for a while")
        timeout = self.call_timeout if budget is None else min(self.call_timeout, budget.left)
        if timeout <= 0:
            SHORT_CIRCUITED.labels(self.target, "budget_spent").inc()
            raise RedisUnavailable("this request's time for Redis is spent")
        probe = self._open_until is not None  # the cool-down is over: this call is the one probe
        self._probing = self._probing or probe
        return timeout, probe

    def _answered(self) -> None:
        self._failed_in_a_row = 0
        self._probing = False
        if self._open_until is not None:
            self._open_until = None
            CIRCUIT_OPEN.labels(self.target).set(0)
            log.info("redis answers again; using it again", redis=self.target)

    def _failed(self, exc: BaseException, probe: bool) -> None:
        CALL_FAILURES.labels(self.target).inc()
        self._failed_in_a_row += 1
        if probe or (self._open_until is None and self._failed_in_a_row >= self.failures):
            if self._open_until is None:
                log.warning(
                    "redis is not answering; skipping redis calls, retrying every few seconds",
                    redis=self.target, cooldown_s=self.cooldown, error=repr(exc),
                )
            self._open_until = self._clock() + self.cooldown
            self._probing = False
            CIRCUIT_OPEN.labels(self.target).set(1)


_GUARDS: dict[str, RedisGuard] = {}


def redis_target(url: str) -> str:
    """The server a Redis URL names, without credentials: `host:port/db` or the socket path."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


def guard_for(url: str) -> RedisGuard:
    """The one guard of this process for the Redis server at `url`."""
    target = redis_target(url)
    guard = _GUARDS.get(target)
    if guard is None:
        guard = _GUARDS[target] = RedisGuard(target)
    return guard


class GuardedRedis(aioredis.Redis):
    """A redis-py client whose every command goes through the server's RedisGuard. (Pipelines are not
    guarded: nothing here uses them.)"""

    guard: RedisGuard

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        return await self.guard.call(super().execute_command, *args, **options)
