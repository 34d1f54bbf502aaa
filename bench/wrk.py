"""Drive an HTTP endpoint with wrk (Debian's `wrk`) and read its requests/s."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class WrkResult:
    requests_per_s: float
    non_2xx: int
    errors: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    requests: int = 0  # completed requests (answered, whatever the status)


def wrk_available() -> str | None:
    return shutil.which("wrk")


def run_wrk(url: str, body: bytes, headers: dict[str, str], seconds: int, connections: int) -> WrkResult:
    lua_headers = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
    script = f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n{lua_headers}\n'
    return run_wrk_script(url, script, seconds, connections)


def run_wrk_script(url: str, script: str, seconds: int, connections: int, timeout_s: int = 2) -> WrkResult:
    """wrk driven by a Lua `script` (which may pick each request in `request()`)."""
    exe = wrk_available()
    if exe is None:
        raise RuntimeError("wrk is not installed: `apt-get install wrk` (make bench does it when run as root)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
        path = Path(fh.name)
    try:
        out = subprocess.run(  # noqa: S603 - our own argv
            [exe, "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s", "--latency", "-s", str(path),
             url],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        ).stdout
    finally:
        path.unlink(missing_ok=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    done = int(m.group(1)) if (m := re.search(r"(\d+) requests in", out)) else 0
    return WrkResult(rps, non_2xx, errors, _latency(out, "50"), _latency(out, "99"), done)


def _latency(out: str, pct: str) -> float | None:
    m = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out)
    if not m:
        return None
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
