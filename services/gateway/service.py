"""Ingest logic: read the body, validate each event, enrich it, hand it to Kafka and wait for the ack."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError

from libs.apikeys import KeyRecord, KeyTable
from libs.http import ApiError, DependencyUnavailable
from libs.kafka import EVENTS_TOPIC
from libs.logs import get_logger, kafka_headers
from libs.settings import Settings
from services.gateway import enrich
from services.gateway.ratelimit import KeyRateLimiter
from services.gateway.schemas import CollectEvent, MetricIn, SeedEvent

log = get_logger(__name__)

MAX_REQUEST_BYTES = 500 * 1024  # Segment's limit per request
MAX_EVENT_BYTES = 32 * 1024  # Segment's limit per event
MAX_BATCH_EVENTS = 2000
ACK_TIMEOUT_S = 0.8  # answer 503 well under a second when Kafka does not acknowledge

EVENTS_ACCEPTED = Counter("gateway_events_accepted_total", "Events acknowledged by Kafka", ["route"])
EVENTS_REJECTED = Counter("gateway_events_rejected_total", "Events refused at validation", ["route"])
PUBLISH_FAILURES = Counter("gateway_publish_failures_total", "Requests answered 503 because Kafka did not ack")
RATE_LIMITED = Counter("gateway_rate_limited_total", "Requests answered 429")
BOTS_DROPPED = Counter("gateway_bot_events_dropped_total", "Bot events dropped (BOT_POLICY=drop)")


def decode_body(raw: bytes, content_encoding: str | None) -> Any:
    """JSON from a plain or gzip/deflate body; 413 past the size limit, 400 when not JSON."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise ApiError(413, f"request body over {MAX_REQUEST_BYTES // 1024} KB; send smaller batches")
    encoding = (content_encoding or "").lower().strip()
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


def authenticate(keys: KeyTable, api_key: str | None, how: str = "the x-api-key header") -> KeyRecord:
    if not api_key:
        raise ApiError(401, f"missing API key: send it in {how}")
    record = keys.lookup(api_key.strip())
    if record is None:
        raise ApiError(401, "invalid, revoked or expired API key")
    return record


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def validate_items(
    model: type[BaseModel], items: Sequence[Any], body_size: int | None = None
) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    """Valid (index, model) pairs and per-index errors; events over 32 KB are refused by index too.

    `body_size`, when known and at most 32 KB, spares measuring each event: none can be larger."""
    good: list[tuple[int, Any]] = []
    bad: list[dict[str, Any]] = []
    measure = body_size is None or body_size > MAX_EVENT_BYTES
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            bad.append({"index": index, "errors": [{"msg": "an event must be a JSON object"}]})
            continue
        if measure and len(orjson.dumps(item)) > MAX_EVENT_BYTES:
            bad.append({"index": index, "errors": [{"msg": f"event over {MAX_EVENT_BYTES // 1024} KB"}]})
            continue
        try:
            good.append((index, model.model_validate(item)))
        except ValidationError as exc:
            bad.append({"index": index, "errors": _errors(exc)})
    return good, bad


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


def from_collect(ev: CollectEvent, base: dict[str, Any]) -> dict[str, Any]:
    meta = ev.metadata.model_dump(exclude_none=True) if ev.metadata else {}
    out = dict(base)
    out.update(enrich.url_facts(ev.url))
    props = dict(ev.properties or {})
    props.update({k: v for k, v in meta.items() if k not in ("browser", "os", "screenSize")})
    out.update(
        type="page" if ev.event in ("pageview", "page_view", "page") else "track",
        event_name=ev.event,
        source="collect",
        user_id=ev.userId or "",
        session_id=ev.sessionId or "",
        url=ev.url or "",
        referrer=ev.referrer or "",
        referrer_host=enrich.referrer_host(ev.referrer),
        screen_size=meta.get("screenSize", ""),
        properties=props,
    )
    # What the client says about itself wins over what its User-Agent suggests.
    if ev.device:
        out["device_type"] = ev.device.lower()
    if meta.get("browser"):
        out["browser"] = meta["browser"]
    if meta.get("os"):
        out["os"] = meta["os"]
    if ev.ipAddress:
        out["ip"] = ev.ipAddress
    out["timestamp"] = enrich.event_time(ev.timestamp, base["received_at"], out["flags"])
    return out


def from_seed_event(ev: SeedEvent, base: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    out.update(
        type="track",
        event_name=ev.event_name,
        event_category=ev.event_category or "",
        source=ev.source or "events",
        user_id=ev.user_id or "",
        session_id=ev.session_id or "",
        properties=ev.metadata or {},
    )
    out["timestamp"] = enrich.event_time(ev.timestamp, base["received_at"], out["flags"])
    return out


def from_metric(ev: MetricIn, base: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    out.update(
        type="metric",
        event_name=ev.metric_name,
        source="metrics",
        metric_value=ev.value,
        metric_unit=ev.unit or "",
        properties=dict(ev.tags or {}),
    )
    out["timestamp"] = enrich.event_time(ev.timestamp, base["received_at"], out["flags"])
    return out


@dataclass
class RequestFacts:
    """What the request itself says about every event in it."""

    record: KeyRecord
    received_at: datetime
    user_agent: str
    ip: str

    body_size: int | None = None
    _template: dict[str, Any] | None = None

    def base(self, event_id: str | None) -> dict[str, Any]:
        """The request's own facts for one event: computed once per request, copied per event."""
        if self._template is None:
            self._template = enrich.base_event(self.record.app_id, None, self.received_at, self.user_agent, self.ip)
        event = dict(self._template)
        event["event_id"] = event_id or enrich.new_event_id()
        event["flags"] = []
        return event


class Ingestor:
    """Validate, enrich, rate limit and publish; shared by the seed routes and the Segment API."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyTable,
        publisher: Publisher,
        limiter: KeyRateLimiter | None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.publisher = publisher
        self.limiter = limiter
        self.proxies = enrich.TrustedProxies(settings.trusted_proxies)

    def facts(self, record: KeyRecord, peer: str, headers: Any) -> RequestFacts:
        ip = self.proxies.client_ip(peer, headers.get("x-forwarded-for"))
        return RequestFacts(record, enrich.now_utc(), headers.get("user-agent", ""), ip)

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

    async def ingest(
        self,
        facts: RequestFacts,
        items: Sequence[Any],
        is_batch: bool,
        model: type[BaseModel],
        convert: Callable[[Any, dict[str, Any]], dict[str, Any]],
        route: str,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Publish the valid items; returns (published events, per-index errors). 422 if none is valid."""
        self.check_rate(facts.record)
        good, bad = validate_items(model, items, facts.body_size)
        EVENTS_REJECTED.labels(route).inc(len(bad))
        if not good:
            raise ApiError(422, bad if is_batch else bad[0]["errors"])
        events = []
        for _, item in good:
            event = enrich.finalize(convert(item, facts.base(item.client_event_id())), self.settings.ip_anonymize)
            if event["is_bot"] and self.settings.bot_policy == "drop":
                BOTS_DROPPED.inc()
                continue
            events.append(event)
        if events:
            await self.publisher.publish(facts.record.app_id, events)
        EVENTS_ACCEPTED.labels(route).inc(len(events))
        return events, bad


# From this many events, a request's events are encoded into record batches of their own (one future
# per batch instead of one per event); fewer are appended to the shared batch, where concurrent
# requests' events coalesce.
BATCH_BUILDER_MIN = 8


class Publisher:
    def __init__(self, producer: Callable[[], AIOKafkaProducer]) -> None:
        self._producer = producer
        self._partitions: dict[bytes, int] = {}
        self._submit_locks: dict[int, asyncio.Lock] = {}
        self._partition_count = 0
        self._sorted_partitions: list[int] = []
        self._partitions_checked_at = float("-inf")

    async def _send_as_batches(
        self, producer: AIOKafkaProducer, events: list[dict[str, Any]], key: bytes, partition: int, headers: Any
    ) -> list[Any]:
        batches = [producer.create_batch()]
        for event in events:
            value = orjson.dumps(event)
            if batches[-1].append(key=key, value=value, timestamp=None, headers=headers) is None:  # full
                batches.append(producer.create_batch())
                batches[-1].append(key=key, value=value, timestamp=None, headers=headers)
        # One submitter per partition at a time: aiokafka's send_batch waits for the partition's
        # previous batch to drain, and with many concurrent waiters its timeout bookkeeping expires
        # them early (KafkaTimeoutError). Queued here instead, in order, under our own deadline.
        lock = self._submit_locks.setdefault(partition, asyncio.Lock())
        async with lock:
            return [await producer.send_batch(batch, EVENTS_TOPIC, partition=partition) for batch in batches]

    async def _partition(self, producer: AIOKafkaProducer, key: bytes) -> int:
        if time.monotonic() >= self._partitions_checked_at + 10:
            partitions = await producer.partitions_for(EVENTS_TOPIC)
            self._partitions_checked_at = time.monotonic()
            if len(partitions) != self._partition_count:  # partitions were added: recompute
                self._partitions.clear()
                self._partition_count = len(partitions)
                self._sorted_partitions = sorted(partitions)
        found = self._partitions.get(key)
        if found is None:
            ordered = self._sorted_partitions
            found = self._partitions[key] = ordered[(murmur2(key) & 0x7FFFFFFF) % len(ordered)]
        return found

    async def publish(self, app_id: str, events: list[dict[str, Any]]) -> None:
        """Hand every event to Kafka and wait until all are acknowledged, or raise 503."""
        producer = self._producer()
        key = app_id.encode()
        headers = kafka_headers()
        try:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                # Every event of a request has the same key, hence the same partition: find it once
                # (what aiokafka's default partitioner would pick) instead of hashing per event.
                partition = await self._partition(producer, key)
                if len(events) >= BATCH_BUILDER_MIN:
                    futures = await self._send_as_batches(producer, events, key, partition, headers)
                else:
                    futures = [
                        await producer.send(EVENTS_TOPIC, orjson.dumps(ev), key=key, partition=partition, headers=headers)
                        for ev in events
                    ]
                await asyncio.gather(*futures)
        except (TimeoutError, KafkaError) as exc:
            PUBLISH_FAILURES.inc()
            log.warning("kafka did not acknowledge in time; answering 503", error=repr(exc), events=len(events))
            raise DependencyUnavailable("the event bus (Kafka)", retry_after=2) from exc
