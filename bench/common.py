"""Shared pieces of the benchmarks: processes under test, environment, result files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from libs.embedded.procs import die_with_parent
from libs.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SMTP_URL": settings.smtp_url,
        "CLICKHOUSE_URL": settings.clickhouse_url,
    }.items():
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    env["ANALYTICS_DATA_DIR"] = str(settings.data_dir)
    env["LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


@dataclass
class Proc:
    argv: list[str]
    env: dict[str, str]
    base: str
    health: str = "/readyz"
    popen: subprocess.Popen[bytes] | None = field(default=None)

    @classmethod
    def analytics(cls, args: list[str], env: dict[str, str], base: str) -> Proc:
        proc = cls([str(Path(sys.executable).parent / "analytics"), *args], env, base)
        proc.start()
        return proc

    @classmethod
    def uvicorn(cls, target: str, port: int, env: dict[str, str]) -> Proc:
        argv = [sys.executable, "-m", "uvicorn", target, "--port", str(port), "--log-level", "warning",
                "--no-access-log", "--backlog", "2048"]
        proc = cls(argv, env, f"http://127.0.0.1:{port}", health="")
        proc.start()
        return proc

    def start(self) -> None:
        self.popen = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,  # noqa: S603
                                      stderr=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=die_with_parent())  # a killed bench leaves nothing behind


    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"{' '.join(self.argv)} exited with {self.popen.returncode}")
            try:
                r = httpx.get(self.base + self.health, timeout=2) if self.health else httpx.post(self.base, timeout=2)
                if r.status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.base} not ready after {timeout}s")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def register_app(http: httpx.Client, auth: str) -> dict[str, Any]:
    """A new user with a registered app, through the public auth API: {app_id, api_key, write_key, ...}."""
    name = f"bench{uuid.uuid4().hex[:6]}"
    http.post(f"{auth}/api/user/signup", json={"username": name, "email": f"{name}@example.com",
                                               "password": "Str0ng!pass"}).raise_for_status()
    login = http.post(f"{auth}/api/user/login", json={"username": name, "password": "Str0ng!pass"})
    login.raise_for_status()
    app = http.post(f"{auth}/api/auth/register", json={"name": "bench"},
                    headers={"authorization": f"Bearer {login.json()['access_token']}"})
    app.raise_for_status()
    return app.json()  # type: ignore[no-any-return]


def percentile(values: list[float], pct: float) -> float | None:
    """The nearest-rank `pct` percentile of `values` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path
