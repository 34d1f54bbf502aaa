"""Restart an embedded engine that dies, on the same port or socket and data dir.

A thread polls each engine's child process. When one has exited without being asked to, it is reaped
(no zombie), logged with its exit code and what was lost, started again with the same argv, and
counted in `embedded_engine_restarts_total{engine}`. Restarts back off (0.5 s, 1 s, 2 s, ...); past
MAX_RESTARTS within WINDOW_S the supervisor gives up on that engine, says so, and `ready()` turns false
(so /readyz answers 503).

The thread must live as long as the engines it restarted: the kernel sends a child its parent-death
signal when the thread that forked it ends (libs.embedded.procs).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import Counter

from libs.embedded.procs import ManagedProcess
from libs.logs import get_logger

log = get_logger(__name__)

RESTARTS = Counter("embedded_engine_restarts_total", "Embedded engines restarted after they died", ["engine"])

MAX_RESTARTS = 5
WINDOW_S = 60.0

# What a restart loses, per engine: said in the log and to the user.
LOST = {
    "kafka": "Tansu keeps messages in memory only: every topic and message it held is gone (topics are created "
             "again; events not yet stored and mails not yet sent are lost; consumer groups start over)",
    "postgres": "nothing committed: same data dir, PostgreSQL replays its log; open transactions were rolled back",
    "clickhouse": "nothing stored: same chDB data dir; statements running at that moment failed, and sessions "
                  "(their temporary tables and SET) are gone",
    "redis": "what changed since its last snapshot (at most a minute): cached answers, rate-limit windows, "
             "logout records and sent-mail records",
}


class Supervisor:
    def __init__(
        self,
        engines: list[ManagedProcess],
        *,
        after_restart: dict[str, Callable[[], None]] | None = None,
        announce: Callable[[str], None] | None = None,
        interval: float = 0.5,
    ) -> None:
        """`after_restart[name]` runs once engine `name` serves again (e.g. re-create Kafka topics)."""
        self.engines = list(engines)
        self.after_restart = after_restart or {}
        self.announce = announce
        self.interval = interval
        self.gave_up: set[str] = set()
        self._recent: dict[str, deque[float]] = {e.name: deque() for e in self.engines}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="embedded-engine-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the engines are stopped on purpose)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=90)

    def ready(self) -> bool:
        return not self.gave_up

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for engine in self.engines:
                if engine.name in self.gave_up or engine.popen is None:
                    continue
                code = engine.popen.poll()  # also reaps it
                if code is None or self._stop.is_set():
                    continue
                try:
                    self._handle_exit(engine, code)
                except Exception as exc:  # noqa: BLE001 - this thread must outlive the engines it started
                    log.error("embedded engine supervisor failed a round", engine=engine.name, error=repr(exc))

    def _handle_exit(self, engine: ManagedProcess, code: int) -> None:
        recent = self._recent[engine.name]
        now = time.monotonic()
        while recent and now - recent[0] > WINDOW_S:
            recent.popleft()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if len(recent) >= MAX_RESTARTS:
            self.gave_up.add(engine.name)
            log.error(
                "embedded engine keeps dying; not restarting it again", engine=engine.name, exit_code=code,
                restarts=len(recent), window_s=WINDOW_S, log_path=str(engine.log_path),
            )
            self._say(f"# {engine.name} died again ({how}) after {len(recent)} restarts in {WINDOW_S:.0f} s; "
                      f"not restarting it. See {engine.log_path}, then restart this command.")
            return
        log.warning("embedded engine died; restarting it", engine=engine.name, exit_code=code, lost=LOST.get(engine.name))
        if recent and self._stop.wait(min(0.5 * 2 ** (len(recent) - 1), 8)):  # back off when it keeps dying
            return
        recent.append(time.monotonic())
        try:
            engine.launch()
        except Exception as exc:  # noqa: BLE001 - the next round sees it dead and tries again
            log.warning("embedded engine did not come back; trying again", engine=engine.name, error=repr(exc))
            return
        hook = self.after_restart.get(engine.name)
        try:
            if hook is not None:
                hook()
        except Exception as exc:  # noqa: BLE001 - the engine runs; say what is missing
            log.error("embedded engine restarted but not set up again", engine=engine.name, error=repr(exc))
        RESTARTS.labels(engine.name).inc()
        log.warning("embedded engine restarted", engine=engine.name, restarts_in_window=len(recent))
        self._say(f"# {engine.name} died ({how}) and was restarted on the same address and data dir "
                  f"(restart {len(recent)}); lost: {LOST.get(engine.name, 'nothing known')}")

    def _say(self, line: str) -> None:
        if self.announce is not None:
            self.announce(line)
