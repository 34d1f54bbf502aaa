"""The notifier against real servers: the embedded aiosmtpd sink, and aiosmtpd servers started here
that refuse, defer, go away, speak TLS or want a login; real Kafka and Redis; a real subprocess
killed between sending and committing.

Tests that need their own SMTP server run their own `EmailConsumer` in their own consumer group on
their own topic, so the notifier of the session stack never sees their mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage as Mime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from libs.embedded.procs import free_port
from libs.embedded.smtp_sink import read_inbox
from libs.kafka import EMAIL_DLQ_TOPIC, make_consumer, make_producer, publish
from libs.notifications import EmailMessage
from libs.runtime import Stack
from libs.settings import Settings
from libs.stores import create_redis
from services.notifier.consumer import EmailConsumer
from services.notifier.mailer import SmtpTarget, render, smtp_ping
from tests.conftest import eventually, signup_login, unique

pytestmark = pytest.mark.engines

ROOT = Path(__file__).resolve().parents[3]


# ---- real SMTP servers ---------------------------------------------------------------------------
class Inbox:
    """An aiosmtpd handler that keeps mail in memory; `bounce-*` recipients get 550, `defer-*` 451."""

    def __init__(self) -> None:
        self.messages: list[Mime] = []
        self.logins: list[str] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("bounce-"):
            return "550 5.1.1 mailbox unavailable"
        if address.startswith("defer-"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        assert isinstance(msg, Mime)
        self.messages.append(msg)
        return "250 Message accepted for delivery"

    def with_id(self, message_id: str) -> list[Mime]:
        return [m for m in self.messages if m["X-Analytics-Message-Id"] == message_id]

    async def wait_for(self, message_id: str, timeout: float, failure: str) -> None:
        async def arrived() -> bool:
            return bool(self.with_id(message_id))

        await eventually(arrived, timeout, failure)


def sink_with_id(settings: Settings, message_id: str) -> list[Mime]:
    return [m for m in read_inbox(settings.data_dir / "mail") if m["X-Analytics-Message-Id"] == message_id]


def sink_to(settings: Settings, address: str) -> list[Mime]:
    return [m for m in read_inbox(settings.data_dir / "mail") if m["To"] == address]


def parts(msg: Mime) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    return (text.get_content() if text else ""), (html.get_content() if html else "")


@contextlib.contextmanager
def smtp_server(port: int | None = None, **options: Any) -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = port or free_port(3025)
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (it is its own CA)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def server_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, tls_files))
    return context


# ---- an isolated notifier ------------------------------------------------------------------------
async def create_topic(settings: Settings, topic: str) -> None:
    """One partition, so messages are handled in the order they were published."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def notifier(engines: Settings, smtp_url: str, **overrides: Any) -> AsyncIterator[tuple[EmailConsumer, Any]]:
    """A running EmailConsumer of its own group on its own topic; yields it and a `send(msg)` function."""
    topic = unique("test.email.")
    await create_topic(engines, topic)
    settings = engines.model_copy(update={
        "smtp_url": smtp_url, "notifier_retry_budget_s": 30, "notifier_retry_max_wait_s": 0.5, **overrides,
    })
    producer = make_producer(engines)
    await producer.start()
    redis = create_redis(engines)
    consumer = EmailConsumer(settings, producer, redis, group_id=unique("test-notifier-"), topic=topic)
    task = asyncio.create_task(consumer.run())

    async def send(message: EmailMessage) -> str:
        await publish(producer, topic, message.model_dump(mode="json", by_alias=True), key=message.message_id)
        return message.message_id

    try:
        await asyncio.wait_for(consumer.started.wait(), 30)
        yield consumer, send
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()
        await redis.aclose()


def note(to: str, subject: str = "Hello", body: str = "Body text") -> EmailMessage:
    return EmailMessage(to=to, template="notification", data={"username": "t", "subject": subject, "body": body})


async def dead_letter(settings: Settings, message_id: str, timeout: float = 20) -> dict[str, Any]:
    """The record with this message id on notifications.email.dlq.v1."""
    consumer = make_consumer(settings, EMAIL_DLQ_TOPIC, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=250)).values():
                for m in messages:
                    record = orjson.loads(m.value)
                    if record.get("message_id") == message_id:
                        assert m.key == message_id.encode()
                        return record  # type: ignore[no-any-return]
        raise AssertionError(f"{message_id} never reached {EMAIL_DLQ_TOPIC}")
    finally:
        await consumer.stop()


async def metric(client: httpx.AsyncClient, name: str) -> float:
    """Sum of every sample of a metric (all label values) on /metrics."""
    text = (await client.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"^{re.escape(name)}(\{{.*\}})? ", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- mail from the product's own flows, in the embedded sink -------------------------------------
async def test_signup_puts_a_welcome_mail_in_the_sink(client: httpx.AsyncClient, engines: Settings) -> None:
    user = await signup_login(client)

    async def arrived() -> bool:
        return bool(sink_to(engines, user["email"]))

    await eventually(arrived, 20, "no welcome mail in the sink")
    [mail] = sink_to(engines, user["email"])
    assert mail["Subject"] == f"Welcome to Analytics, {user['username']}"
    assert mail["From"] == engines.smtp_from
    assert mail["X-Envelope-To"] == user["email"]
    text, html = parts(mail)
    assert f"Welcome, {user['username']}!" in text
    assert f"<h1>Welcome, {user['username']}!</h1>" in html
    assert f"{engines.public_base_url}/dashboard" in text


async def test_key_created_and_revoked_mails_name_the_app_and_key_prefixes(
    client: httpx.AsyncClient, engines: Settings
) -> None:
    user = await signup_login(client)
    r = await client.post("/api/auth/register", json={"name": "Shop"}, headers=user["headers"])
    assert r.status_code == 201
    created = r.json()
    r = await client.post("/api/auth/revoke", json={"app_id": created["app_id"]}, headers=user["headers"])
    assert r.status_code == 200

    def subjects() -> dict[str, Mime]:
        return {m["Subject"]: m for m in sink_to(engines, user["email"])}

    async def both() -> bool:
        return {"New API keys for Shop", "API keys revoked for Shop"} <= set(subjects())

    await eventually(both, 20, f"key mails missing: {list(subjects())}")
    for subject in ("New API keys for Shop", "API keys revoked for Shop"):
        text, html = parts(subjects()[subject])
        assert created["api_key"][:11] in text, text  # the prefix, never the whole secret
        assert created["api_key"] not in text + html
        assert created["write_key"][:11] in html


async def test_notification_endpoint_mails_only_the_signed_in_user(
    client: httpx.AsyncClient, engines: Settings
) -> None:
    user = await signup_login(client)
    other = f"{unique('victim')}@example.com"
    r = await client.post("/api/email/notification", json={"subject": "Spam", "body": "x", "to": other},
                          headers=user["headers"])
    assert r.status_code == 403, r.text
    r = await client.post("/api/email/notification", json={"subject": "Spam", "body": "x", "to": other})
    assert r.status_code == 401
    r = await client.post("/api/email/notification", json={"subject": "Build done", "body": "All green."},
                          headers=user["headers"])
    assert r.status_code == 202, r.text
    message_id = r.json()["message_id"]

    async def arrived() -> bool:
        return bool(sink_with_id(engines, message_id))

    await eventually(arrived, 20, "the notification never arrived")
    [mail] = sink_with_id(engines, message_id)
    assert mail["To"] == user["email"] and mail["Subject"] == "Build done"
    assert "All green." in parts(mail)[0] and "All green." in parts(mail)[1]
    assert not [m for m in read_inbox(engines.data_dir / "mail") if other in (m["To"] or "")]


async def test_notifications_are_rate_limited(client: httpx.AsyncClient) -> None:
    user = await signup_login(client)
    statuses = []
    for i in range(12):
        r = await client.post("/api/email/notification", json={"subject": f"n{i}", "body": "b"},
                              headers=user["headers"])
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) > 0
            break
    assert statuses[:10] == [202] * 10 and statuses[-1] == 429, statuses


LINE_BREAKS = ["Build\ndone", "Build done\r\nBcc: victim@example.com", "one\rtwo", "next\u2028line", "tab\x0bbed",
               "trailing\n"]


async def test_a_notification_subject_is_one_line_and_the_body_may_have_many(client: httpx.AsyncClient) -> None:
    """A mail header holds one line: a subject with a line break is refused up front (it could never be sent)."""
    user = await signup_login(client)
    for subject in LINE_BREAKS:
        r = await client.post("/api/email/notification", json={"subject": subject, "body": "x"}, headers=user["headers"])
        assert r.status_code == 422, (subject, r.text)
        assert "subject" in r.text and "one line" in r.text, r.text
    r = await client.post("/api/email/notification", json={"subject": "Build\tdone", "body": "line 1\r\nline 2\n"},
                          headers=user["headers"])
    assert r.status_code == 202, r.text


async def test_an_app_name_with_line_breaks_still_gets_its_mails_with_a_one_line_subject(engines: Settings) -> None:
    """Template subjects carry names people chose (app names): a line break in one is folded into a
    space, so the key and report mails are delivered rather than dead-lettered, and no header is added."""
    with smtp_server() as (inbox, port):
        async with notifier(engines, f"smtp://127.0.0.1:{port}") as (_, send):
            message = EmailMessage(to="owner@example.com", template="api_key_created",
                                   data={"username": "ada", "app_name": "Shop\r\nBcc: victim@example.com", "keys": []})
            message_id = await send(message)
            await inbox.wait_for(message_id, 20, "the key mail was not delivered")
    [mail] = inbox.with_id(message_id)
    assert mail["Subject"] == "New API keys for Shop Bcc: victim@example.com"
    assert mail["Bcc"] is None


# ---- failures ------------------------------------------------------------------------------------
async def test_smtp_down_for_a_while_then_the_mail_arrives_once(
    engines: Settings, client: httpx.AsyncClient, stack: Stack
) -> None:
    port = free_port(3100)
    retried_before = await metric(client, "notifier_emails_retried_total")
    sent_before = await metric(client, "notifier_emails_sent_total")
    async with notifier(engines, f"smtp://127.0.0.1:{port}") as (_, send):
        message_id = await send(note("ada@example.com", "Patience"))
        await asyncio.sleep(3)  # nothing listens: connection refused, retried with backoff

        async def retried() -> bool:
            return await metric(client, "notifier_emails_retried_total") > retried_before

        await eventually(retried, 10, "no retry was counted")
        with smtp_server(port) as (inbox, _):
            await inbox.wait_for(message_id, 20, "the mail did not arrive after the server came back")
            await asyncio.sleep(2)
            assert len(inbox.with_id(message_id)) == 1
            assert inbox.with_id(message_id)[0]["Subject"] == "Patience"
    assert await metric(client, "notifier_emails_sent_total") > sent_before


async def test_a_550_goes_to_the_dlq_with_the_reason_and_does_not_hold_up_other_mail(
    engines: Settings, client: httpx.AsyncClient, stack: Stack
) -> None:
    dead_before = await metric(client, "notifier_emails_dead_lettered_total")
    with smtp_server() as (inbox, port):
        async with notifier(engines, f"smtp://127.0.0.1:{port}") as (_, send):
            bounced = await send(note("bounce-me@example.com", "Nope"))
            deferred = await send(note("defer-me@example.com", "Later"))  # 451: retried meanwhile
            fine = await send(note("fine@example.com", "Yes"))

            await inbox.wait_for(fine, 15, "good mail was held up behind the bad ones")
            record = await dead_letter(engines, bounced)
            assert "550" in record["reason"] and "mailbox unavailable" in record["reason"], record
            assert record["to"] == "bounce-me@example.com" and record["template"] == "notification"
            assert record["original"]["message_id"] == bounced
            assert not inbox.with_id(bounced) and not inbox.with_id(deferred)
    assert await metric(client, "notifier_emails_dead_lettered_total") >= dead_before + 1


async def test_one_message_published_twice_at_once_is_mailed_once(engines: Settings, client: httpx.AsyncClient) -> None:
    skipped_before = await metric(client, "notifier_duplicates_skipped_total")
    with smtp_server() as (inbox, port):
        async with notifier(engines, f"smtp://127.0.0.1:{port}") as (_, send):
            twice = note("twice@example.com", "Twice?")
            await asyncio.gather(send(twice), send(twice))  # both copies in flight together
            after = await send(note("twice@example.com", "After"))
            await inbox.wait_for(after, 15, "the following mail never came")

            async def skipped() -> bool:
                return await metric(client, "notifier_duplicates_skipped_total") > skipped_before

            await eventually(skipped, 15, "the second copy was not recognised as a duplicate")
            assert len(inbox.with_id(twice.message_id)) == 1
            assert inbox.with_id(twice.message_id)[0]["Message-ID"] == f"<{twice.message_id}@analytics.localhost>"


async def test_a_copy_that_checked_before_the_other_finished_is_not_mailed_again(engines: Settings) -> None:
    """Copy B checks the sent-record (not sent yet), copy A then sends and releases its claim, and only
    then does B claim: B must see A's sent-record and skip, not mail a second time."""
    with smtp_server() as (inbox, port):
        async with notifier(engines, f"smtp://127.0.0.1:{port}") as (consumer, _):
            email = note("race@example.com", "Once")
            mime = render(email, engines.smtp_from, engines.public_base_url)
            real_claim = consumer._claim
            other_copy: list[bool] = []
            first_call = [True]

            async def claim_after_the_other_copy_is_done(message_id: str, token: str) -> bool:
                if first_call and first_call.pop():
                    other_copy.append(await consumer._send_once(email, mime))  # copy A, start to end
                return await real_claim(message_id, token)

            consumer._claim = claim_after_the_other_copy_is_done  # type: ignore[method-assign]
            second = await consumer._send_once(email, mime)  # copy B
            assert other_copy == [True]
            assert second is False, "the second copy was mailed again"
            await asyncio.sleep(0.5)
            assert len(inbox.with_id(email.message_id)) == 1


async def test_temporary_failures_past_the_retry_budget_are_parked(engines: Settings) -> None:
    with smtp_server() as (inbox, port):
        async with notifier(engines, f"smtp://127.0.0.1:{port}", notifier_retry_budget_s=2) as (_, send):
            deferred = await send(note("defer-you@example.com"))
            record = await dead_letter(engines, deferred)
            assert record["reason"].startswith("gave up after 2s") and "451" in record["reason"], record
            assert not inbox.messages


async def test_an_invalid_message_is_parked_not_retried(engines: Settings) -> None:
    with smtp_server() as (inbox, port):
        async with notifier(engines, f"smtp://127.0.0.1:{port}") as (consumer, _):
            producer = make_producer(engines)
            await producer.start()
            try:
                message_id = unique("bad-")
                await publish(producer, consumer.topic, {"message_id": message_id, "to": "not-an-address",
                                                          "template": "welcome"}, key=message_id)
            finally:
                await producer.stop()
            record = await dead_letter(engines, message_id)
            assert record["reason"].startswith("invalid message"), record
            assert record["original"]["to"] == "not-an-address"
            assert not inbox.messages


async def test_starttls_with_login_and_implicit_tls(engines: Settings, tls_files: tuple[Path, Path]) -> None:
    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"mailer", b"s3cret")
        return AuthResult(success=ok, handled=False)

    with smtp_server(tls_context=server_tls(tls_files), require_starttls=True, authenticator=authenticate,
                     auth_require_tls=True, auth_required=True) as (inbox, port):
        url = f"smtp://mailer:s3cret@127.0.0.1:{port}"
        async with notifier(engines, url, smtp_ca_file=tls_files[0]) as (_, send):
            message_id = await send(note("tls@example.com", "Over STARTTLS"))

            await inbox.wait_for(message_id, 15, "no mail over STARTTLS with login")

    with smtp_server(ssl_context=server_tls(tls_files)) as (inbox, port):
        target = SmtpTarget.from_settings(engines.model_copy(update={
            "smtp_url": f"smtps://127.0.0.1:{port}", "smtp_ca_file": tls_files[0]}))
        assert await smtp_ping(target)
        async with notifier(engines, f"smtps://127.0.0.1:{port}", smtp_ca_file=tls_files[0]) as (_, send):
            message_id = await send(note("tls@example.com", "Over implicit TLS"))

            await inbox.wait_for(message_id, 15, "no mail over implicit TLS")
        # An untrusted certificate is not silently accepted.
        untrusted = SmtpTarget.from_settings(engines.model_copy(update={"smtp_url": f"smtps://127.0.0.1:{port}"}))
        assert not await smtp_ping(untrusted)


async def test_readyz_checks_kafka_and_smtp_and_metrics_exist(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["smtp"] is True and r.json()["checks"]["kafka"] is True
    text = (await client.get("/metrics")).text
    for name in ("notifier_emails_sent_total", "notifier_emails_retried_total",
                 "notifier_emails_dead_lettered_total", "notifier_send_seconds_bucket"):
        assert name in text, name
    assert not await smtp_ping(SmtpTarget.from_url(f"smtp://127.0.0.1:{free_port(3200)}"))


# ---- crash between sending and committing --------------------------------------------------------
def start_notifier(
    engines: Settings, env_extra: dict[str, str], port: int, log: Path, topic: str, group: str, hold_commits_s: float = 0
) -> subprocess.Popen[bytes]:
    """`analytics run --services notifier` reading `topic` in `group` (tests/isolated.py)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CLICKHOUSE_URL", "DATABASE_URL")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=str(engines.kafka_bootstrap_servers), REDIS_URL=str(engines.redis_url),
        ANALYTICS_DATA_DIR=str(engines.data_dir / unique("proc-")), LOG_LEVEL="INFO", PYTHONUNBUFFERED="1",
        **env_extra,
    )
    isolation = ["--topic", topic, "--group", group, "--hold-commits-s", str(hold_commits_s)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.isolated", *isolation, "run", "--services", "notifier", "--port", str(port)],
        env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
    )


async def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{port}/readyz", timeout=2)).status_code == 200:
                    return
            await asyncio.sleep(0.25)
    raise AssertionError(f"notifier not ready:\n{log.read_text()[-3000:]}")


async def committed(engines: Settings, group: str, topic: str) -> int | None:
    from aiokafka import TopicPartition

    consumer = make_consumer(engines, group_id=group)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, 0))  # type: ignore[no-any-return]
    finally:
        await consumer.stop()


async def metrics_of(port: int) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{port}/metrics")).text


def stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        proc.wait(30)


async def test_a_notifier_killed_after_sending_and_before_committing_still_mails_once(
    engines: Settings, tmp_path: Path
) -> None:
    topic, group = unique("test.email.kill."), unique("test-notifier-kill-")
    await create_topic(engines, topic)
    log = tmp_path / "notifier.log"
    with smtp_server() as (inbox, smtp_port):
        env = {"SMTP_URL": f"smtp://127.0.0.1:{smtp_port}"}
        port = free_port(3300)
        first = start_notifier(engines, env, port, log, topic, group, hold_commits_s=600)
        producer = make_producer(engines)
        await producer.start()
        try:
            async def send(message: EmailMessage) -> str:
                await publish(producer, topic, message.model_dump(mode="json", by_alias=True), key=message.message_id)
                return message.message_id

            await wait_ready(first, port, log)
            once = await send(note("once@example.com", "Only once"))

            await inbox.wait_for(once, 30, "the first notifier never sent the mail")

            async def recorded() -> bool:  # the notifier saw the server's 250 and recorded the send
                return 'notifier_emails_sent_total{template="notification"} 1.0' in await metrics_of(port)

            await eventually(recorded, 10, "the first notifier never counted the mail as sent")
            stop(first, signal.SIGKILL)  # no chance to commit
            assert await committed(engines, group, topic) is None, "the offset was committed before the kill"

            second = start_notifier(engines, env, port, log, topic, group)
            try:
                await wait_ready(second, port, log)
                # One partition: once the marker is mailed, the redelivered first message was handled.
                marker = await send(note("once@example.com", "Marker"))

                await inbox.wait_for(marker, 30, "the restarted notifier did not mail the marker")

                async def both_committed() -> bool:
                    return await committed(engines, group, topic) == 2

                await eventually(both_committed, 15, "offsets not committed after the restart")
                assert len(inbox.with_id(once)) == 1
                assert "notifier_duplicates_skipped_total 1.0" in await metrics_of(port)
            finally:
                stop(second, signal.SIGTERM)
        finally:
            await producer.stop()
            stop(first, signal.SIGKILL)
