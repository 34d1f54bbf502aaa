"""Email consumer: each message on `notifications.email.v1` is mailed once.

* Sent once: the message id is recorded in Redis after the SMTP server accepted the mail and checked
  before sending, so a redelivery (crash after sending, before the commit) does not mail twice; a
  short claim (`SET NX`) keeps two copies of one message in flight at once (a partition that moved
  while its old owner still retries, a producer that published twice) from both being sent. The one
  window left is a crash between the server's acceptance and the record (milliseconds); the
  `Message-ID` header is derived from the message id so mail stores can fold such a duplicate.
* Temporary failures are retried with exponential backoff and jitter in their own task, so one slow
  mail does not hold up the others; permanent ones, and those past the retry budget, go to
  `notifications.email.dlq.v1` with the reason.
* An offset is committed only once every message up to it is done (sent or dead-lettered): the
  stream skeleton's watermark (libs/stream), with at most MAX_IN_FLIGHT mails in flight before the
  partitions are paused.
* Stopping (`drain`): the mails queued up to the topic's end offsets at stop are sent first, bounded
  by `drain_timeout_s`; those still unsent then are counted and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from libs.kafka import EMAIL_DLQ_TOPIC, EMAIL_TOPIC, NOTIFIER_GROUP
from libs.logs import get_logger
from libs.notifications import EmailMessage
from libs.settings import Settings
from libs.stream import Concurrent, ConsumerSpec, DeadLetters, StreamConsumer, dead_letter_record
from services.notifier.mailer import PermanentFailure, SmtpTarget, TemporaryFailure, render, send

log = get_logger(__name__)

SENT_KEY = "notifier:sent:"
SENDING_KEY = "notifier:sending:"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
SENT_TTL_S = 30 * 24 * 3600
MAX_IN_FLIGHT = 100

SENT = Counter("notifier_emails_sent_total", "Emails accepted by the SMTP server", ["template"])
RETRIED = Counter("notifier_emails_retried_total", "Send attempts that failed temporarily")
DEAD = Counter("notifier_emails_dead_lettered_total", "Emails given up on", ["reason"])
DUPLICATES = Counter("notifier_duplicates_skipped_total", "Redelivered emails not sent again")
SEND_LATENCY = Histogram("notifier_send_seconds", "SMTP send latency")


class EmailConsumer(StreamConsumer):
    """The notifier's consumer, declared on the stream skeleton (libs/stream): one task per message,
    at most MAX_IN_FLIGHT before its partitions are paused; committed by watermark."""

    drain_labels = ("notifier", "queued mails", "sent")

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        redis: aioredis.Redis,
        retry_budget_s: float | None = None,
        group_id: str = NOTIFIER_GROUP,
        topic: str = EMAIL_TOPIC,
    ) -> None:
        assert settings.smtp_url
        self.target = SmtpTarget.from_settings(settings)
        self.redis = redis
        self.retry_budget_s = retry_budget_s if retry_budget_s is not None else settings.notifier_retry_budget_s
        super().__init__(settings, ConsumerSpec(
            topic=topic,
            group_id=group_id,
            strategy=Concurrent(self._handle, MAX_IN_FLIGHT),
            dead_letters=DeadLetters(producer, EMAIL_DLQ_TOPIC),
            commit_interval_s=0,  # a mail is slow next to a commit: commit as soon as one is done
            client_options={"max_poll_records": 100},
        ))

    async def _handle(self, message: Any) -> None:
        try:
            await self._deliver(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not stall the partition forever
            log.error("email handling failed", error=repr(exc), exc_info=exc)
            await self._dead_letter(message, None, f"unexpected error: {exc!r}", "error")

    async def _deliver(self, message: Any) -> None:
        try:
            email = EmailMessage.model_validate_json(message.value)
        except ValidationError as exc:
            await self._dead_letter(message, None, f"invalid message: {exc.errors()[0]['msg']}", "invalid")
            return
        sent = False
        try:
            mime = render(email, self.settings.smtp_from, self.settings.public_base_url)
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(TemporaryFailure),
                wait=wait_random_exponential(multiplier=0.5, max=self.settings.notifier_retry_max_wait_s),
                stop=stop_after_delay(self.retry_budget_s),
                reraise=True,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        RETRIED.inc()
                    sent = await self._send_once(email, mime)
        except PermanentFailure as exc:
            await self._dead_letter(message, email, str(exc), "permanent")
            return
        except TemporaryFailure as exc:
            await self._dead_letter(message, email, f"gave up after {self.retry_budget_s:.0f}s: {exc}", "retries")
            return
        if not sent:
            DUPLICATES.inc()
            log.info("email already sent; skipped", message_id=email.message_id)
            return
        SENT.labels(email.template or "text").inc()
        log.info("email sent", message_id=email.message_id, template=email.template)

    async def _send_once(self, email: EmailMessage, mime: Any) -> bool:
        """Send unless already sent; False when it was. Only one sender at a time per message id: a
        partition that moved to another notifier while this one still retries is not mailed twice.

        The sent-record is read after the claim is held: read before it, a copy that another sender
        finished (and released) in between would be mailed a second time."""
        if await self._already_sent(email.message_id):
            return False
        token = uuid.uuid4().hex
        if not await self._claim(email.message_id, token):
            raise TemporaryFailure("another notifier is sending this message right now")
        try:
            if await self._already_sent(email.message_id):
                return False
            start = time.perf_counter()
            await send(self.target, mime)
            SEND_LATENCY.observe(time.perf_counter() - start)
            await self._mark_sent(email.message_id)
        finally:
            await self._release(email.message_id, token)
        return True

    async def _claim(self, message_id: str, token: str) -> bool:
        try:
            ttl_ms = int((self.target.timeout * 3 + 5) * 1000)
            return bool(await self.redis.set(SENDING_KEY + message_id, token, nx=True, px=ttl_ms))
        except (RedisError, OSError):
            return True  # as in _already_sent: better a rare duplicate than a lost mail

    async def _release(self, message_id: str, token: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.redis.eval(_RELEASE, 1, SENDING_KEY + message_id, token)

    async def _already_sent(self, message_id: str) -> bool:
        try:
            return bool(await self.redis.exists(SENT_KEY + message_id))
        except (RedisError, OSError) as exc:
            # Better a rare duplicate than a lost mail: send, and say so.
            log.warning("sent-mail record unreachable; sending without the duplicate check", error=repr(exc))
            return False

    async def _mark_sent(self, message_id: str) -> None:
        for _ in range(5):
            try:
                await self.redis.set(SENT_KEY + message_id, b"1", ex=SENT_TTL_S)
                return
            except (RedisError, OSError):
                await asyncio.sleep(0.5)
        log.error("could not record a sent email; a redelivery would send it again", message_id=message_id)

    async def _dead_letter(self, message: Any, email: EmailMessage | None, reason: str, kind: str) -> None:
        original = dead_letter_record(message, reason, None)["original"]
        message_id = email.message_id if email else (original.get("message_id") if isinstance(original, dict) else None)
        assert self.dead_letters is not None
        await self.dead_letters.send(
            message, reason, message_id=message_id, to=str(email.to) if email else None,
            template=email.template if email else None,
        )
        DEAD.labels(kind).inc()
        log.error("email dead-lettered", reason=reason, message_id=message_id)
