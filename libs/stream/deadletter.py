"""One dead-letter record shape for every consumer, and the bad-ratio stop.

A message a consumer gives up on goes to its dead-letter topic as a `DeadLetter` (libs.contracts):
why (`reason`), the original message (`original`: the parsed JSON value, or its text), where it was
(`topic`, `partition`, `offset`, `timestamp_ms`), who gave up (`group`) and when (`failed_at`), plus the
fields a consumer adds of its own. The record keeps the message's key, and the request id of the
request that produced the message travels on as a header (libs.logs).

A `BadMessages` guard (optional) counts bad and good messages per key (the app): one app's poison is
only dead-lettered; when most recent messages are bad from most of the apps sending, `TooManyBadMessages`
stops the consumer rather than dead-letter all traffic (see badness.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from tenacity import AsyncRetrying, wait_random_exponential

from libs.kafka import dumps
from libs.logs import get_logger, kafka_headers, request_id_from_headers, request_id_var
from libs.stream.badness import BadMessages

log = get_logger(__name__)

MAX_ORIGINAL_CHARS = 100_000


class TooManyBadMessages(RuntimeError):
    """Most recent messages were bad, from most of the apps sending: the deployment looks broken."""


@contextlib.contextmanager
def message_context(message: Any) -> Iterator[None]:
    """The request id of the request that produced `message`, for its logs and the messages it causes."""
    token = request_id_var.set(request_id_from_headers(message.headers))
    try:
        yield
    finally:
        request_id_var.reset(token)


def dead_letter_record(message: Any, reason: str, group: str | None, **extra: Any) -> dict[str, Any]:
    """The shared shape (libs.contracts.DeadLetter) of a record about `message`."""
    text = (message.value or b"").decode("utf-8", errors="replace")
    original: Any = text[:MAX_ORIGINAL_CHARS]
    if len(text) <= MAX_ORIGINAL_CHARS:
        with contextlib.suppress(orjson.JSONDecodeError):
            original = orjson.loads(message.value)
    return {
        "reason": reason,
        "original": original,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "timestamp_ms": message.timestamp,
        "group": group,
        "failed_at": datetime.now(UTC).isoformat(),
        **extra,
    }


class DeadLetters:
    """Where a consumer's given-up messages go, and (optionally) when to stop instead."""

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, guard: BadMessages | None = None, stop_hint: str = ""
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.guard = guard
        self.stop_hint = stop_hint  # what the operator should do when the guard stops the consumer
        self.group: str | None = None  # set by the consumer that uses it

    def good(self, message: Any) -> None:
        """Count a message that was handled (for the guard)."""
        if self.guard is not None:
            self.guard.record(BadMessages.app_of(message.key), False)

    async def send(self, message: Any, reason: str, **extra: Any) -> None:
        """Publish the record (retried while Kafka is away: the offset is committed only after it),
        then count the message bad; raises TooManyBadMessages when the guard says so."""
        with message_context(message):
            record = dumps(dead_letter_record(message, reason, self.group, **extra))
            async for attempt in AsyncRetrying(wait=wait_random_exponential(multiplier=0.5, max=10), reraise=True):
                with attempt:
                    await self.producer.send_and_wait(self.topic, record, key=message.key, headers=kafka_headers())
        if self.guard is None:
            return
        app = BadMessages.app_of(message.key)
        self.guard.record(app, True)
        if self.guard.newly_misbehaving(app):
            log.warning("most recent messages of this app are invalid; they go to the DLQ, other apps are not affected",
                        app_id=app, dlq=self.topic, last_error=reason)
        broken = self.guard.broken()
        if broken is not None:
            self.guard = self.guard.fresh()  # a restarted consumer judges afresh
            raise TooManyBadMessages(
                f"{broken} on {message.topic} (limit {self.guard.max_ratio:.0%}): the deployment looks broken; "
                f"the consumer stopped instead of dead-lettering all traffic. Inspect {self.topic} and {self.stop_hint}"
            )
