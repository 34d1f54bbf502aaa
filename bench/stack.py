"""The whole `make run` stack as a user starts it (`analytics run`, every engine embedded), for the
benchmarks that measure it as one: its processes, their memory (PSS: shared pages counted once) and CPU.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.common import Proc
from libs.embedded.engines import socket_dir
from libs.embedded.procs import free_port


@dataclass
class Stack:
    """`analytics run` on its own port and data dir, with everything else as `make run` leaves it."""

    proc: Proc
    data_dir: Path
    port: int
    _cpu_before: dict[int, float] = field(default_factory=dict)

    @classmethod
    def start(cls, **env: str) -> Stack:
        data = Path(tempfile.mkdtemp(prefix="bench-stack-"))
        port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.endswith("_URL") and
                       k != "KAFKA_BOOTSTRAP_SERVERS"}  # every engine embedded, as on a laptop
        environment.update(ANALYTICS_DATA_DIR=str(data), LOG_LEVEL="WARNING", **env)
        proc = Proc.analytics(["run", "--port", str(port)], environment, f"http://127.0.0.1:{port}")
        stack = cls(proc, data, port)
        try:
            proc.wait_ready(180)
        except BaseException:
            stack.stop()
            raise
        return stack

    @property
    def base(self) -> str:
        return self.proc.base

    def processes(self) -> list[psutil.Process]:
        """The `analytics run` process and every process it started (engines, their workers)."""
        assert self.proc.popen is not None
        root = psutil.Process(self.proc.popen.pid)
        return [root, *root.children(recursive=True)]

    def engine_urls(self) -> dict[str, str]:
        """The embedded Kafka's and Redis's URLs, for another process to share them (as the banner's exports)."""
        urls = {"REDIS_URL": f"unix://{socket_dir(self.data_dir) / 'redis.sock'}"}
        for p in self.processes():
            cmd = p.cmdline()
            if "--listener-url" in cmd:
                urls["KAFKA_BOOTSTRAP_SERVERS"] = cmd[cmd.index("--listener-url") + 1].removeprefix("tcp://")
        return urls

    def memory(self) -> dict[str, float]:
        """PSS in MB by process name (summed over processes of one name) and `total`: shared pages are
        split between the processes that map them, so the sum counts each page once."""
        by_name: dict[str, float] = {}
        for p in self.processes():
            try:
                pss = p.memory_full_info().pss / 2**20
                name = _label(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            by_name[name] = round(by_name.get(name, 0.0) + pss, 1)
        by_name["total"] = round(sum(by_name.values()), 1)
        return by_name

    def cpu_mark(self) -> None:
        """Start a CPU window (see `cpu_since_mark`)."""
        self._cpu_before = {p.pid: _cpu(p) for p in self.processes()}

    def cpu_since_mark(self, seconds: float) -> dict[str, float]:
        """Cores used by each process name since `cpu_mark` over `seconds` of wall time (1.0 = one core)."""
        used: dict[str, float] = {}
        for p in self.processes():
            try:
                name = _label(p)
                spent = _cpu(p) - self._cpu_before.get(p.pid, 0.0)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            used[name] = round(used.get(name, 0.0) + spent / seconds, 3)
        return used

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _cpu(p: psutil.Process) -> float:
    times = p.cpu_times()
    return float(times.user + times.system)


def _label(p: psutil.Process) -> str:
    """A short name for a process of the stack: `analytics` (the Python services), `postgres`, `tansu`..."""
    cmd = p.cmdline()
    head = Path(cmd[0]).name if cmd else p.name()
    if head.startswith("python") and len(cmd) > 1:
        head = Path(cmd[1]).name
    if head.startswith("postgres") or (cmd and cmd[0].startswith("postgres:")):
        return "postgres"
    if head.startswith("tansu"):
        return "kafka (tansu)"
    if head.startswith("valkey") or p.name().startswith("valkey"):
        return "redis (valkey)"
    return head


def main() -> None:
    """`python -m bench.stack`: start the stack, print its memory, stop."""
    stack = Stack.start()
    try:
        for name, mb in stack.memory().items():
            print(f"  {name:<20} {mb:8.1f} MB")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
