"""Start a real local engine for every backing service whose URL is not set.

`EmbeddedStack.start(settings, roles)` returns settings with the URLs filled in, so the services
use the same clients and code paths as in production. The engines come from the `embedded` extra;
this module imports them only when one is started, so a production install (runtime dependencies
only, every URL set) imports it too, and a missing extra is reported as `EngineNotInstalled`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from libs.embedded.errors import DataDirBusy, EmbeddedError, EngineNotInstalled, require_engines
from libs.logs import get_logger
from libs.settings import Settings

if TYPE_CHECKING:
    from libs.embedded.procs import ManagedProcess, OwnerLock
    from libs.embedded.smtp_sink import SmtpSink
    from libs.embedded.supervisor import Supervisor

log = get_logger(__name__)

# "clickhouse": chDB served over ClickHouse's HTTP interface by a child process (libs.embedded.clickhouse_http),
# for `analytics infra`. Without it a service runs chDB inside its own process (libs.clickhouse).
Role = Literal["kafka", "postgres", "redis", "smtp", "clickhouse"]
ROLE_SETTING: dict[Role, str] = {
    "kafka": "kafka_bootstrap_servers",
    "postgres": "database_url",
    "redis": "redis_url",
    "smtp": "smtp_url",
    "clickhouse": "clickhouse_url",
}
ROLE_ENV: dict[Role, str] = {
    "kafka": "KAFKA_BOOTSTRAP_SERVERS",
    "postgres": "DATABASE_URL",
    "redis": "REDIS_URL",
    "smtp": "SMTP_URL",
    "clickhouse": "CLICKHOUSE_URL",
}

__all__ = ["ROLE_ENV", "ROLE_SETTING", "DataDirBusy", "EmbeddedError", "EmbeddedStack", "EngineNotInstalled", "Role"]


@dataclass
class EmbeddedStack:
    settings: Settings
    started: dict[Role, str] = field(default_factory=dict)
    _procs: list[ManagedProcess] = field(default_factory=list)
    _smtp: SmtpSink | None = None
    _lock: OwnerLock | None = None
    _supervisor: Supervisor | None = None

    @classmethod
    def start(cls, settings: Settings, roles: Iterable[Role]) -> EmbeddedStack:
        """Start engines for the `roles` whose URL is unset. Raises EngineNotInstalled (the `embedded`
        extra is missing), DataDirBusy or RuntimeError."""
        stack = cls(settings)
        missing = [r for r in dict.fromkeys(roles) if not getattr(settings, ROLE_SETTING[r])]
        if not missing:
            return stack
        require_engines(missing)
        from libs.embedded.procs import OwnerLock, reap_stale

        data_dir = settings.data_dir
        run_dir = data_dir / "run"
        stack._lock = OwnerLock(run_dir)
        stack._lock.acquire()
        try:
            reap_stale(run_dir)
            for role in missing:
                stack._start_role(role)
        except BaseException:
            stack.stop()
            raise
        stack.settings = settings.model_copy(update={ROLE_SETTING[r]: url for r, url in stack.started.items()})
        return stack

    def _start_role(self, role: Role) -> None:
        data_dir = self.settings.data_dir
        if role == "smtp":
            from libs.embedded.smtp_sink import SmtpSink

            self._smtp = SmtpSink(data_dir)
            self._smtp.start()
            url = self._smtp.url
        elif role == "clickhouse":
            from libs.clickhouse import database_from_url
            from libs.embedded.clickhouse_http import start_clickhouse_http

            proc, url = start_clickhouse_http(data_dir, database_from_url(None))
            self._procs.append(proc)
        else:
            from libs.embedded.engines import start_kafka, start_postgres, start_redis

            starter = {"kafka": start_kafka, "postgres": start_postgres, "redis": start_redis}[role]
            proc, url = starter(data_dir)
            self._procs.append(proc)
        self.started[role] = url
        log.info("embedded engine started", engine=role, url=url)

    def supervise(self, announce: Callable[[str], None] | None = None) -> None:
        """Restart an engine that dies, on the same address and data dir (libs.embedded.supervisor);
        `announce` hears each restart in a line for the user. Tansu comes back empty: its topics are
        created again."""
        if not self._procs or self._supervisor is not None:
            return
        from libs.embedded.supervisor import Supervisor
        from libs.kafka import ensure_topics

        settings = self.settings
        self._supervisor = Supervisor(
            self._procs, after_restart={"kafka": lambda: asyncio.run(ensure_topics(settings))}, announce=announce
        )
        self._supervisor.start()

    def engines_ready(self) -> bool:
        """False once an engine kept dying and is no longer restarted."""
        return self._supervisor is None or self._supervisor.ready()

    def env_lines(self) -> list[str]:
        return [f"export {ROLE_ENV[role]}={url}" for role, url in self.started.items()]

    def stop(self) -> None:
        """Stop every engine this stack started, last started first."""
        if self._supervisor is not None:
            self._supervisor.stop()  # first: an engine stopped on purpose is not restarted
            self._supervisor = None
        if self._smtp is not None:
            self._smtp.stop()
            self._smtp = None
        while self._procs:
            proc = self._procs.pop()
            proc.stop()
            log.info("embedded engine stopped", engine=proc.name)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
