"""Rendering (jinja2, HTML with a plain-text part) and sending (aiosmtplib) one email."""

from __future__ import annotations

import contextlib
import re
import ssl
from dataclasses import dataclass, field, replace
from email.message import EmailMessage as MimeMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
import jinja2

from libs.notifications import EmailMessage
from libs.settings import Settings

TEMPLATES = Path(__file__).parent / "templates"

_html = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
)
_text = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=False, undefined=jinja2.StrictUndefined  # noqa: S701
)
_SUBJECTS = dict(
    line.split("=", 1) for line in (TEMPLATES / "subjects.txt").read_text().splitlines() if "=" in line
)


class PermanentFailure(Exception):
    """Retrying cannot help (5xx reply, refused recipient, bad template data): goes to the DLQ."""


class TemporaryFailure(Exception):
    """Retrying may help (connection refused, 4xx reply, timeout)."""


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool
    starttls: bool | None  # None: use it when the server offers it
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    timeout: float = 10

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpTarget:
        """The SMTP_URL target with the TLS trust and timeout of `settings`."""
        assert settings.smtp_url
        target = cls.from_url(settings.smtp_url)
        context = ssl.create_default_context(cafile=str(settings.smtp_ca_file) if settings.smtp_ca_file else None)
        if not settings.smtp_tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return replace(target, tls_context=context, timeout=settings.smtp_timeout_s)

    @classmethod
    def from_url(cls, url: str) -> SmtpTarget:
        """`smtp://[user:pass@]host[:587]` (STARTTLS when the server offers it) or `smtps://...:465`
        (implicit TLS). `?starttls=require` refuses to send in the clear; `?starttls=never` never upgrades."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError("SMTP_URL must start with smtp:// or smtps://")
        implicit = parts.scheme == "smtps"
        mode = parse_qs(parts.query).get("starttls", [""])[0]
        if mode not in ("", "require", "never", "auto"):
            raise ValueError("SMTP_URL: starttls must be require, never or auto")
        starttls = False if implicit else {"require": True, "never": False}.get(mode)
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or (465 if implicit else 587),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit,
            starttls=starttls,
        )


def _msgid_domain(sender: str) -> str:
    address = parseaddr(sender)[1]
    return address.rpartition("@")[2] or "analytics.localhost"


def _one_line(subject: str) -> str:
    """The subject with its line breaks folded into spaces: subjects carry names people chose (an app's
    name), and a header holds one line (the email package refuses a line break rather than send it)."""
    return " ".join(part for part in (line.strip() for line in subject.splitlines()) if part)


def render(message: EmailMessage, sender: str, base_url: str) -> MimeMessage:
    mime = MimeMessage()
    mime["From"] = sender
    mime["To"] = str(message.to)
    # The same for every attempt: should a crash between the server's 250 and our sent-record ever
    # deliver a mail twice, mail stores that collapse duplicate Message-IDs show it once.
    mime["Message-ID"] = f"<{re.sub(r'[^A-Za-z0-9._-]', '', message.message_id)}@{_msgid_domain(sender)}>"
    mime["X-Analytics-Message-Id"] = message.message_id
    if message.template is None:
        assert message.subject and message.body
        mime["Subject"] = _one_line(message.subject)
        mime.set_content(message.body)
        return mime
    data: dict[str, Any] = {"base_url": base_url, **message.data}
    try:
        subject = _text.from_string(_SUBJECTS[message.template]).render(**data).strip()
        text = _text.get_template(f"{message.template}.txt").render(**data)
        html = _html.get_template(f"{message.template}.html").render(**{**data, "subject": subject})
    except (jinja2.TemplateError, KeyError) as exc:
        raise PermanentFailure(f"template {message.template!r} cannot be rendered: {exc}") from exc
    mime["Subject"] = _one_line(subject)
    mime.set_content(text)
    mime.add_alternative(html, subtype="html")
    return mime


async def send(target: SmtpTarget, mime: MimeMessage) -> None:
    """Deliver one message. Raises TemporaryFailure or PermanentFailure."""
    try:
        await aiosmtplib.send(
            mime,
            hostname=target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            use_tls=target.implicit_tls,
            start_tls=target.starttls,
            tls_context=target.tls_context,
            timeout=target.timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        replies = "; ".join(f"{r.recipient}: SMTP {r.code} {r.message}" for r in exc.recipients)
        if all(400 <= c < 500 for c in codes):
            raise TemporaryFailure(f"recipient deferred: {replies}") from exc
        raise PermanentFailure(f"recipient refused: {replies}") from exc
    except aiosmtplib.SMTPResponseException as exc:
        if 400 <= exc.code < 500:
            raise TemporaryFailure(f"SMTP {exc.code}: {exc.message}") from exc
        raise PermanentFailure(f"SMTP {exc.code}: {exc.message}") from exc
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise TemporaryFailure(f"SMTP server unreachable: {exc!r}") from exc


async def smtp_ping(target: SmtpTarget, timeout: float = 3) -> bool:
    """True when the server greets us and answers NOOP (over TLS when the target uses implicit TLS)."""
    client = aiosmtplib.SMTP(
        hostname=target.host, port=target.port, use_tls=target.implicit_tls, start_tls=False,
        tls_context=target.tls_context, timeout=timeout,
    )
    try:
        await client.connect()
        await client.noop()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        return False
    finally:
        if client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit()
    return True
