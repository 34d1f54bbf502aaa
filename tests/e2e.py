"""Helpers for end-to-end tests: the product started as a user starts it, in subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from libs.embedded.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
URL_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL", "DATABASE_URL", "REDIS_URL", "SMTP_URL")


def clean_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh machine: no backing-service URLs, our own data dir."""
    env = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    env.update(ANALYTICS_DATA_DIR=str(data_dir), LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
    env.update(extra)  # infra's exports name the data dir too
    return env


def analytics(*args: str, env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[str]:
    return _spawn([str(Path(sys.executable).parent / "analytics"), *args], env, log, cwd)


def isolated(topic: str, group: str, *args: str, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """`analytics *args` with the aggregator and the notifier reading `topic` in `group` (tests/isolated.py)."""
    return _spawn([sys.executable, "-m", "tests.isolated", "--topic", topic, "--group", group, *args], env, log, ROOT)


def _spawn(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[str]:
    out = open(log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=out, text=True, cwd=cwd,
                            start_new_session=True)


def wait_ready(base: str, proc: subprocess.Popen[str], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before ready:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{base} not ready in {timeout}s:\n{log.read_text()[-3000:]}")


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_and_check_nothing_left(proc: subprocess.Popen[str], sig: int = signal.SIGINT, timeout: float = 40) -> int:
    """Send `sig`, wait for exit, and assert that no process it started is still running."""
    children = descendants(proc.pid)
    proc.send_signal(sig)
    code = proc.wait(timeout)
    time.sleep(0.3)
    left = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"left running after {signal.Signals(sig).name}: {[(p.pid, p.cmdline()) for p in left]}"
    return code


@contextmanager
def running(
    *args: str, env: dict[str, str], log: Path, base: str, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[str]]:
    proc = analytics(*args, env=env, log=log, cwd=cwd)
    try:
        wait_ready(base, proc, log)
        yield proc
    finally:
        if proc.poll() is None:
            for p in descendants(proc.pid):
                p.kill()
            proc.kill()


def port() -> int:
    return free_port()


def read_exports(infra: subprocess.Popen[str], log: Path, timeout: float = 60) -> dict[str, str]:
    """The `export NAME=value` lines `analytics infra` prints once its engines are up."""
    exports: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while "ANALYTICS_DATA_DIR" not in exports and time.monotonic() < deadline:  # the last one
        line = infra.stdout.readline() if infra.stdout else ""
        if not line and infra.poll() is not None:
            raise AssertionError(log.read_text())
        if m := re.match(r"export (\w+)=(.*)", line.strip()):
            exports[m.group(1)] = m.group(2)
    return exports
