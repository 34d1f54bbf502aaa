"""Ingest logic: read the body, validate each event, enrich it, hand it to Kafka and wait for the ack."""

from __future__ import annotations

import gzip
import operator
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter
from pydantic import ValidationError

from libs.apikeys import KeyRecord, KeyTable
from libs.apps import AppDirectory
from libs.clientip import TrustedProxies
from libs.http import ApiError, DependencyUnavailable
from libs.kafka import EVENTS_TOPIC
from libs.limits import JsonLimitError, check_event
from libs.logs import get_logger, kafka_headers
from libs.metrics import TalliedCounter, labelled
from libs.settings import Settings
from libs.stream.produce import Backpressure, CoalescingPublisher
from services.gateway import enrich
from services.gateway.ratelimit import KeyRateLimiter
from services.gateway.schemas import CollectEvent, MetricIn, NamedEvent
from services.gateway.siterules import EVENTS_EXCLUDED, RuleBook, SiteRules, check_origin

log = get_logger(__name__)

MAX_REQUEST_BYTES = 500 * 1024  # Segment's limit per request
MAX_EVENT_BYTES = 32 * 1024  # Segment's limit per event
MAX_BATCH_EVENTS = 2000
ACK_TIMEOUT_S = 0.8  # answer 503 well under a second when Kafka does not acknowledge

EVENTS_ACCEPTED = TalliedCounter("gateway_events_accepted_total", "Events acknowledged by Kafka", ["route"])
EVENTS_REJECTED = Counter("gateway_events_rejected_total", "Events refused at validation", ["route"])
PUBLISH_FAILURES = Counter("gateway_publish_failures_total", "Requests answered 503 because Kafka did not ack")
RATE_LIMITED = Counter("gateway_rate_limited_total", "Requests answered 429")
BOTS_DROPPED = Counter("gateway_bot_events_dropped_total", "Bot events dropped (BOT_POLICY=drop)")


def decode_body(raw: bytes, content_encoding: str | None) -> Any:
    """JSON from a plain or gzip/deflate body; 413 past the size limit, 400 when not JSON."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise ApiError(413, f"request body over {MAX_REQUEST_BYTES // 1024} KB; send smaller batches")
    encoding = content_encoding.lower().strip() if content_encoding else ""
    if encoding in ("gzip", "deflate"):
        try:
            decomp = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
            raw = decomp.decompress(raw, MAX_REQUEST_BYTES + 1)
        except (zlib.error, gzip.BadGzipFile) as exc:
            raise ApiError(400, f"body is not valid {encoding}") from exc
        if len(raw) > MAX_REQUEST_BYTES:
            raise ApiError(413, f"decompressed body over {MAX_REQUEST_BYTES // 1024} KB; send smaller batches")
    elif encoding not in ("", "identity"):
        raise ApiError(415, f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    if not raw:
        raise ApiError(400, "empty body; send a JSON event")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from exc


class KeyMiss(ApiError):
    """A 401 for a key the key table does not accept (yet): `KeyTable.caught_up_for(key)` tells
    whether looking again after a catch-up may still find it."""

    def __init__(self, key: str) -> None:
        super().__init__(401, "invalid, revoked or expired API key")
        self.key = key


def authenticate(keys: KeyTable, api_key: str | None, how: str = "the x-api-key header") -> KeyRecord:
    """The usable key's record, without waiting. Raises ApiError 401, KeyMiss when the key is not usable."""
    if not api_key:
        raise ApiError(401, f"missing API key: send it in {how}")
    key = api_key.strip()
    record = keys.lookup(key)
    if record is None:
        raise KeyMiss(key)
    return record


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


Validate = Callable[[Any], Any]  # a schema's validation: the validated event, or ValidationError
# How a route takes its events: (validation, conversion into an enriched event, the route's metric label).
Route = tuple[Validate, Callable[[Any, "RequestFacts"], dict[str, Any]], str]


def validate_items(
    validate: Validate, items: Sequence[Any], body_size: int | None = None
) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    """Valid (index, validated event) pairs and per-index errors; events over 32 KB or over the limits of
    libs/limits.py (depth, width, finite numbers) are refused by index too.

    `body_size`, when known and at most 32 KB, spares measuring each event: none can be larger."""
    good: list[tuple[int, Any]] = []
    bad: list[dict[str, Any]] = []
    measure = body_size is None or body_size > MAX_EVENT_BYTES
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            bad.append({"index": index, "errors": [{"msg": "an event must be a JSON object"}]})
            continue
        try:
            check_event(item)  # first: orjson cannot even measure an event nested too deep
        except JsonLimitError as exc:
            bad.append({"index": index, "errors": [exc.error()]})
            continue
        if measure and len(orjson.dumps(item)) > MAX_EVENT_BYTES:
            bad.append({"index": index, "errors": [{"msg": f"event over {MAX_EVENT_BYTES // 1024} KB"}]})
            continue
        try:
            good.append((index, validate(item)))
        except ValidationError as exc:
            bad.append({"index": index, "errors": _errors(exc)})
    return good, bad


_INDEX = operator.itemgetter("index")


def split_batch(body: Any, batch_key: str = "events") -> tuple[list[Any], bool]:
    """(items, is_batch) for a single event or `{"events": [...]}`."""
    if isinstance(body, dict) and batch_key in body and isinstance(body[batch_key], list):
        items = body[batch_key]
        if not items:
            raise ApiError(400, f"'{batch_key}' is empty; send at least one event")
        if len(items) > MAX_BATCH_EVENTS:
            raise ApiError(413, f"at most {MAX_BATCH_EVENTS} events per request")
        return items, True
    if isinstance(body, dict):
        return [body], False
    raise ApiError(400, 'send one event object, or {"events": [...]}')


_META_FIELDS = frozenset({"browser", "os", "screenSize"})


def from_collect(ev: CollectEvent, facts: RequestFacts) -> dict[str, Any]:
    """A `/api/analytics/collect` event (validated into a dict, see schemas.CollectEvent), enriched."""
    out = facts.base(ev.get("event_id"))
    meta = ev.get("metadata") or {}
    properties = ev.get("properties")
    props = dict(properties) if properties else {}
    if meta.keys() - _META_FIELDS:  # what the client adds beside browser, os and screenSize
        props.update({k: v for k, v in meta.items() if k not in _META_FIELDS and v is not None})
    url = ev.get("url")
    if url:
        out.update(enrich.url_facts(url))
    name = ev["event"]
    out["type"] = "page" if name in ("pageview", "page_view", "page") else "track"
    out["event_name"] = name
    out["source"] = "collect"
    out["user_id"] = ev.get("userId") or ""
    out["session_id"] = ev.get("sessionId") or ""
    out["url"] = url or ""
    referrer = ev.get("referrer")
    out["referrer"] = referrer or ""
    out["referrer_host"] = enrich.referrer_host(referrer)
    out["screen_size"] = meta.get("screenSize") or ""
    out["properties"] = props
    # What the client says about itself wins over what its User-Agent suggests.
    device = ev.get("device")
    if device:
        out["device_type"] = device.lower()
    if meta.get("browser"):
        out["browser"] = meta["browser"]
    if meta.get("os"):
        out["os"] = meta["os"]
    ip = ev.get("ipAddress")
    if ip:
        out["ip"] = ip
    out["timestamp"] = enrich.event_time(ev.get("timestamp"), out["received_at"], out["flags"])
    return out


def from_named_event(ev: NamedEvent, facts: RequestFacts) -> dict[str, Any]:
    out = facts.base(ev.event_id)
    out.update(
        type="track",
        event_name=ev.event_name,
        event_category=ev.event_category or "",
        source=ev.source or "events",
        user_id=ev.user_id or "",
        session_id=ev.session_id or "",
        properties=ev.metadata or {},
    )
    out["timestamp"] = enrich.event_time(ev.timestamp, out["received_at"], out["flags"])
    return out


def from_metric(ev: MetricIn, facts: RequestFacts) -> dict[str, Any]:
    out = facts.base(ev.event_id)
    out.update(
        type="metric",
        event_name=ev.metric_name,
        source="metrics",
        metric_value=ev.value,
        metric_unit=ev.unit or "",
        properties=dict(ev.tags or {}),
    )
    out["timestamp"] = enrich.event_time(ev.timestamp, out["received_at"], out["flags"])
    return out


@dataclass(slots=True)
class RequestFacts:
    """What the request itself says about every event in it."""

    record: KeyRecord
    received_at: datetime
    user_agent: str
    ip: str
    body_size: int | None = None
    rules: SiteRules | None = None  # the site's ingest rules (siterules.py), None when it has none
    hidden: set[int] | None = None  # events (their id()) dropped by the site's excluded_ips, answered as taken

    def base(self, event_id: str | None) -> dict[str, Any]:
        """The request's own facts for one event (a copy of the cached template, plus its own id,
        arrival time, flags and properties)."""
        event = dict(enrich.request_template(self.record.app_id, self.user_agent, self.ip))
        event["event_id"] = event_id or enrich.new_event_id()
        event["received_at"] = self.received_at
        event["flags"] = []
        event["properties"] = {}
        return event


class Ingestor:
    """Validate, enrich, rate limit and publish; shared by the `/api/analytics/*` routes and the Segment API."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyTable,
        publisher: Publisher,
        limiter: KeyRateLimiter | None,
        apps: AppDirectory | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.apps = apps if apps is not None else AppDirectory()  # each app's site rules (libs/apps.py)
        self.publisher = publisher
        self.limiter = limiter
        self.rules = RuleBook(self.apps.get)  # the site rules of each app, compiled once per version
        self.proxies = TrustedProxies(settings.trusted_proxies)
        self.draining = False  # set when the process stops: new events are refused, not acknowledged

    def facts(self, record: KeyRecord, peer: str, headers: Any) -> RequestFacts:
        """The request's facts, with its site's rules; 403 for a write key's browser request from an
        origin the site does not allow."""
        rules = self.rules.rules(record.app_id)
        if rules is not None:
            check_origin(rules, record.kind, headers.get("origin"))
        ip = self.proxies.client_ip(peer, headers.get("x-forwarded-for"))
        return RequestFacts(record, enrich.now_utc(), headers.get("user-agent", ""), ip, rules=rules)

    def check_rate(self, record: KeyRecord) -> None:
        if self.limiter is None:
            return
        retry_after = self.limiter.check(record.key_id)
        if retry_after is not None:
            RATE_LIMITED.inc()
            raise ApiError(
                429, f"rate limit {self.settings.ingest_rate_limit} for this key exceeded; retry in {retry_after}s",
                {"Retry-After": str(retry_after)},
            )

    def accept(
        self,
        facts: RequestFacts,
        items: Sequence[Any],
        is_batch: bool,
        validate: Validate,
        convert: Callable[[Any, RequestFacts], dict[str, Any]],
        route: str,
    ) -> Pending:
        """Validate, enrich and hand the valid items to the publisher, without waiting: the caller
        awaits `Publisher.acknowledged(pending)` before answering. 422 if no item is valid."""
        self.check_rate(facts.record)
        events, bad = self.prepare(facts, items, is_batch, (validate, convert, route))
        published = events
        if facts.hidden:  # answered as taken, never published (siterules.py)
            published = [event for event in events if id(event) not in facts.hidden]
            EVENTS_EXCLUDED.inc(len(events) - len(published))
        waiters = self.publisher.append(facts.record.app_id, published) if published else []
        return Pending(events, bad, waiters, route, len(published))

    def prepare(
        self, facts: RequestFacts, items: Sequence[Any], is_batch: bool, how: Route
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the enriched events to publish, the refused ones' errors by index), for the route's
        (validate, convert, name). Every event returned is one the aggregator can store
        (libs/limits.py). 422 if no item is valid."""
        validate, convert, route = how
        good, bad = validate_items(validate, items, facts.body_size)
        oldest = facts.received_at - timedelta(days=self.settings.clickhouse_retention_days)
        converted = []
        for index, item in good:
            event = convert(item, facts)
            if event["timestamp"] < oldest:  # ClickHouse's TTL would drop it: refuse it rather than lose it
                bad.append({"index": index, "errors": [self._too_old(oldest)]})
            else:
                converted.append(event)
        if bad:
            labelled(EVENTS_REJECTED, route).inc(len(bad))
            bad.sort(key=_INDEX)
        if not converted:
            raise ApiError(422, bad if is_batch else bad[0]["errors"])
        events = []
        rules = facts.rules
        for event in converted:
            # The address as received (before anonymizing): the request's, or the one the event states.
            if rules is not None and rules.excluded(event["ip"]):
                if facts.hidden is None:
                    facts.hidden = set()
                facts.hidden.add(id(event))
            enrich.finalize(event, self.settings.ip_anonymize)
            if event["is_bot"] and self.settings.bot_policy == "drop":
                BOTS_DROPPED.inc()
                continue
            events.append(event)
        return events, bad

    def _too_old(self, oldest: datetime) -> dict[str, Any]:
        days = self.settings.clickhouse_retention_days
        return {"loc": ["timestamp"], "type": "timestamp_too_old",
                "msg": f"older than the {days} days events are kept (CLICKHOUSE_RETENTION_DAYS): send events "
                       f"from {oldest:%Y-%m-%d %H:%M} UTC on"}


@dataclass(slots=True)
class Pending:
    """A request's accepted events, handed to the publisher and not yet acknowledged: `events` as
    answered, `published` of them handed to Kafka (the others were dropped by the site's excluded_ips,
    which the answer does not reveal)."""

    events: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    waiters: list[Any]
    route: str
    published: int


class Publisher:
    """The gateway's side of `analytics.events.v1`: hand a request's events over, then wait for the ack."""

    def __init__(self, producer: Callable[[], AIOKafkaProducer]) -> None:
        self.batches = CoalescingPublisher(producer, EVENTS_TOPIC, ACK_TIMEOUT_S)

    def append(self, app_id: str, events: list[dict[str, Any]]) -> list[Any]:
        """Add the events to their partition's open batch; the futures resolve on the broker's ack."""
        key = app_id.encode()
        try:
            # Every event of a request has the same key, hence the same partition.
            return self.batches.append(
                self.batches.partition(key), key, list(map(orjson.dumps, events)), kafka_headers()
            )
        except (KafkaError, Backpressure) as exc:
            raise _unavailable(exc, len(events)) from exc

    @staticmethod
    async def acknowledged(pending: Pending) -> None:
        """Wait until Kafka acknowledged every event of the request, or raise 503 (within
        ACK_TIMEOUT_S: the batch deadline starts when its first event arrives)."""
        try:
            for waiter in pending.waiters:
                await waiter
        except (TimeoutError, KafkaError, Backpressure) as exc:
            raise _unavailable(exc, pending.published) from exc
        EVENTS_ACCEPTED.inc((pending.route,), pending.published)


def _unavailable(exc: BaseException, events: int) -> DependencyUnavailable:
    PUBLISH_FAILURES.inc()
    log.warning("Kafka did not take or acknowledge the events in time; answering 503", error=repr(exc), events=events)
    return DependencyUnavailable("the event bus (Kafka)", retry_after=2)
