"""Child processes for embedded engines: started tied to us, recorded, and never left behind.

Three layers make sure no engine outlives the run that started it:
1. every child gets PR_SET_PDEATHSIG=SIGTERM, so the kernel stops it even if we are SIGKILLed;
2. `stop()` terminates, waits, then kills;
3. each child is recorded in `<data>/run/<name>.pid`; the next start, once it holds the data dir's
   owner lock (so no live run owns those children), stops whatever a crashed run left there.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psutil

from libs.embedded.errors import DataDirBusy
from libs.logs import get_logger

log = get_logger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn asking the kernel to send `sig` to the child when its parent dies."""

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


class OwnerLock:
    """An exclusive flock on `<data>/run/owner.lock`, held for the life of the owning process."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "owner.lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "unknown"
            fh.close()
            raise DataDirBusy(
                f"the embedded engines in {self.path.parent.parent} are already run by pid {owner} "
                "(an `analytics infra` or `analytics run`). Use the `export ...` lines it printed, stop it, "
                "or pick another ANALYTICS_DATA_DIR."
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def reap_stale(run_dir: Path) -> list[int]:
    """Stop processes recorded by a previous run that crashed. Call only while holding OwnerLock."""
    stopped: list[int] = []
    for pidfile in run_dir.glob("*.pid"):
        try:
            record = json.loads(pidfile.read_text())
            proc = psutil.Process(int(record["pid"]))
            if proc.create_time() - float(record["started"]) > 2 or proc.exe() != record["exe"]:
                raise psutil.NoSuchProcess(proc.pid)  # pid reused by something unrelated
        except (OSError, ValueError, KeyError, psutil.Error):
            pidfile.unlink(missing_ok=True)
            continue
        log.warning("stopping stale engine from a crashed run", engine=pidfile.stem, pid=proc.pid)
        _terminate(proc, timeout=10)
        stopped.append(proc.pid)
        pidfile.unlink(missing_ok=True)
    return stopped


def _terminate(proc: psutil.Process, timeout: float, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class ManagedProcess:
    """One engine binary running as our child, recorded in the run dir."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        run_dir: Path,
        log_path: Path,
        *,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        env: dict[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout: float = 30,
        ready_what: str = "",
        prepare: Callable[[], None] | None = None,
    ) -> None:
        """`ready` says the engine serves; `prepare` runs before every start (e.g. removes a stale socket)."""
        self.name = name
        self.argv = argv
        self.run_dir = run_dir
        self.log_path = log_path
        self.user = user
        self.stop_signal = stop_signal
        self.env = env
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.ready_what = ready_what
        self.prepare = prepare
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    def start(self) -> None:
        """Spawn the child. Call from a long-lived thread (the main one): the kernel signals the child
        when the thread that forked it ends, not only when the process does."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.popen = subprocess.Popen(  # noqa: S603 - argv is ours
                self.argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=self.user,
                # The stop signal, also when we die: PostgreSQL's SIGTERM ("smart") would wait for
                # clients of other processes to disconnect, its SIGINT ("fast") does not.
                preexec_fn=die_with_parent(self.stop_signal),
                env=self.env,
                start_new_session=True,  # Ctrl-C in a shell reaches us, and we stop the child in order
            )
        try:
            proc = psutil.Process(self.popen.pid)
            record = {"pid": proc.pid, "started": proc.create_time(), "exe": proc.exe(), "argv": self.argv}
        except psutil.Error:
            return  # it exited at once: nothing to stop later, and whoever waits for it sees the exit
        self.pidfile.write_text(json.dumps(record))

    def launch(self) -> None:
        """prepare, start, and wait until ready: the first start and every restart, with the same argv
        (so the same port or socket, and the same data dir)."""
        if self.prepare is not None:
            self.prepare()
        self.start()
        if self.ready is not None:
            self.wait_until(self.ready, self.ready_timeout, self.ready_what)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def listening(self, port: int) -> bool:
        """This child itself accepts connections on `port`: not merely something there (another run's
        engine that bound the port first)."""
        if self.popen is None or not self.alive():
            return False
        try:
            sockets = psutil.Process(self.popen.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in sockets)

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited while starting; see its log at {self.log_path}")
            if ready():
                return
            time.sleep(0.01)  # short: a restarted Kafka must get its topics before clients write
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready ({what}) in {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 10) -> None:
        if self.popen is not None and self.popen.poll() is None:
            _terminate(psutil.Process(self.popen.pid), timeout, self.stop_signal)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(1)
        self.pidfile.unlink(missing_ok=True)


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """`preferred` when nothing listens there, else a port the kernel picks."""
    if preferred is not None:
        with socket.socket() as probe:
            try:
                probe.bind((host, preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def launch_on_a_free_port(make: Callable[[int], ManagedProcess], preferred: int, tries: int = 3) -> tuple[ManagedProcess, int]:
    """Launch the engine `make(port)` builds, on `preferred` when nothing listens there, else on a port
    the kernel picks; it is ready when it listens there itself. A port free when probed can be bound by
    another process before the engine binds it (two runs starting at once both find 18123 free): the
    engine then exits, and is launched again on another port."""
    for attempt in range(tries):
        port = free_port(preferred if attempt == 0 else None)
        proc = make(port)
        proc.ready = functools.partial(proc.listening, port)
        proc.ready_what = f"listening on port {port}"
        try:
            proc.launch()
        except RuntimeError:
            proc.stop()
            if attempt + 1 == tries or not port_open("127.0.0.1", port):
                raise
            log.warning("port taken by another process while the engine started; trying another one",
                        engine=proc.name, port=port)
            continue
        return proc, port
    raise RuntimeError(f"no free port after {tries} tries")  # not reached: the last try raises


def port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False
