"""An SMTP server that accepts every message and stores it as an `.eml` file (a local inbox)."""

from __future__ import annotations

import time
import uuid
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from libs.embedded.procs import free_port


class MaildirHandler:
    def __init__(self, inbox: Path) -> None:
        self.inbox = inbox
        inbox.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode()
        header = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        tmp = self.inbox / f".{name}.tmp"
        tmp.write_bytes(header + content)
        tmp.rename(self.inbox / name)  # readers never see half a message
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(self, data_dir: Path) -> None:
        self.inbox = data_dir / "mail"
        self.port = free_port(2525)
        self._controller = Controller(MaildirHandler(self.inbox), hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


def read_inbox(inbox: Path) -> list[EmailMessage]:
    """Every message in an inbox folder, oldest first."""
    messages = []
    for path in sorted(inbox.glob("*.eml")):
        msg = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(msg, EmailMessage)
        messages.append(msg)
    return messages
