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
* An offset is committed only once every message up to it is done (sent or dead-lettered).
* Stopping (`drain`): the mails queued up to the topic's end offsets at stop are sent first, bounded
  by `drain_timeout_s`; those still unsent then are counted and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from libs.kafka import EMAIL_DLQ_TOPIC, GroupMember, dumps, make_consumer
from libs.logs import get_logger, kafka_headers, request_id_from_headers, request_id_var
from libs.notifications import EmailMessage
from libs.settings import Settings
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


class EmailConsumer(GroupMember):
    drain_labels = ("notifier", "queued mails", "sent")

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        redis: aioredis.Redis,
        retry_budget_s: float | None = None,
        group_id: str | None = None,
        topic: str | None = None,
    ) -> None:
        assert settings.smtp_url
        super().__init__()
        self.settings = settings
        self.target = SmtpTarget.from_settings(settings)
        self.producer = producer
        self.redis = redis
        self.retry_budget_s = retry_budget_s if retry_budget_s is not None else settings.notifier_retry_budget_s
        self.group_id = group_id or settings.notifier_group_id
        self.topic = topic or settings.notifier_topic
        # partition -> {offset: done?}; commit the longest done prefix
        self.inflight: dict[int, dict[int, bool]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.started = asyncio.Event()  # set once the consumer has joined its group
        self.running = True
        self.consumer: Any = None

    def stop(self) -> None:
        """Ask `run()` to return: mails in flight are cancelled, what is done is committed."""
        self.running = False

    async def _run(self) -> None:
        consumer = self.consumer = make_consumer(self.settings, group_id=self.group_id, max_poll_records=100)
        consumer.subscribe([self.topic], listener=_Rebalance(self, consumer))
        try:
            await consumer.start()
        except BaseException:  # cancelled while joining: still close the client
            await consumer.stop()
            raise
        self.started.set()
        log.info("notifier consuming", topic=self.topic, group=self.group_id,
                 smtp=f"{self.target.host}:{self.target.port}")
        try:
            while self.running:
                batch = await consumer.getmany(timeout_ms=200)
                for tp, messages in batch.items():
                    for message in messages:
                        await self.slots.acquire()  # bounded in-flight work: backpressure on polling
                        self.inflight.setdefault(tp.partition, {})[message.offset] = False
                        task = asyncio.create_task(self._handle(message))
                        self.tasks.add(task)
                        task.add_done_callback(self.tasks.discard)
                await self._commit(consumer)
        finally:
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._commit(consumer)
            await consumer.stop()

    async def _commit(self, consumer: Any, partitions: set[int] | None = None) -> None:
        offsets = {}
        for partition, states in self.inflight.items():
            if partitions is not None and partition not in partitions:
                continue
            done_upto = None
            for offset in sorted(states):
                if not states[offset]:
                    break
                done_upto = offset
            if done_upto is not None:
                offsets[TopicPartition(self.topic, partition)] = done_upto + 1
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partition away: its new owner starts from the last commit and the
            # sent-record keeps it from mailing twice.
            log.warning("offset commit refused (rebalance); the next owner redelivers", error=repr(exc))
            return
        for tp, next_offset in offsets.items():
            states = self.inflight.get(tp.partition, {})
            for offset in [o for o in states if o < next_offset]:
                del states[offset]

    async def _handle(self, message: Any) -> None:
        token = request_id_var.set(request_id_from_headers(message.headers))
        try:
            try:
                await self._deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not stall the partition forever
                log.error("email handling failed", error=repr(exc), exc_info=exc)
                await self._dead_letter(message, None, f"unexpected error: {exc!r}", "error")
            if self.settings.notifier_commit_delay_ms:
                await asyncio.sleep(self.settings.notifier_commit_delay_ms / 1000)
            states = self.inflight.get(message.partition)
            if states is not None and message.offset in states:
                states[message.offset] = True
        finally:
            request_id_var.reset(token)
            self.slots.release()

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
        try:
            original: Any = orjson.loads(message.value)
        except (orjson.JSONDecodeError, TypeError):
            original = (message.value or b"").decode(errors="replace")
        record = {
            "reason": reason,
            "message_id": email.message_id if email else (original.get("message_id") if isinstance(original, dict) else None),
            "to": str(email.to) if email else None,
            "template": email.template if email else None,
            "original": original,
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "failed_at": datetime.now(UTC).isoformat(),
        }
        # The offset is committed only after this succeeds: keep trying while Kafka is away.
        async for attempt in AsyncRetrying(wait=wait_random_exponential(multiplier=0.5, max=10), reraise=True):
            with attempt:
                await self.producer.send_and_wait(EMAIL_DLQ_TOPIC, dumps(record), key=message.key, headers=kafka_headers())
        DEAD.labels(kind).inc()
        log.error("email dead-lettered", reason=reason, message_id=record["message_id"])


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commit what is done before partitions move; forget the state of partitions we lost."""

    def __init__(self, owner: EmailConsumer, consumer: Any) -> None:
        self.owner = owner
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        lost = {tp.partition for tp in revoked}
        with contextlib.suppress(Exception):
            await self.owner._commit(self.consumer, lost)
        for partition in lost:
            self.owner.inflight.pop(partition, None)
        self.owner.assigned.clear()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.owner.assigned.set()
