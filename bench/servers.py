"""HTTP server benchmark: the gateway's HTTP server (uvicorn with `services/http_protocol.py`, a
response's head and body in one write) against granian (a Rust ASGI server), serving the same apps.

Single-event `POST /api/analytics/collect` requests/s (each answered 202 only after Kafka's ack) with
wrk, one worker each, in ROUNDS rounds. Each number is divided by the requests/s of the bare ASGI
endpoint on stock uvicorn measured in the same round (the ingest benchmark's baseline), and the gateway
on granian by the gateway on uvicorn (measured back to back); medians over the rounds, with each
server's CPU time per request (less sensitive to a busy machine than requests/s). Cases:

* bare endpoint: stock uvicorn (baseline), uvicorn + one-write protocol, granian;
* the gateway app (bench/served.py, the same lifespan-started stack) on uvicorn + one-write protocol
  and on granian.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.common import Proc, env_for, write_result
from bench.ingest import CPU_PER_REQUEST_US, EVENT, ROUNDS, UA, make_keys, measure
from libs.embedded import EmbeddedStack
from libs.embedded.procs import free_port
from libs.settings import Settings

GRANIAN = str(Path(sys.executable).parent / "granian")
NOISE = 0.05


def granian(target: str, port: int, env: dict[str, str], health: str = "") -> Proc:
    argv = [GRANIAN, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--loop", "uvloop", "--backlog", "2048", "--log-level", "warning", "--no-access-log", "--no-ws",
            target]
    proc = Proc(argv, env, f"http://127.0.0.1:{port}", health=health)
    proc.start()
    return proc


def main() -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="bench-servers-"))
    base = Settings(analytics_data_dir=data, ingest_rate_limit="10000000/second", log_level="WARNING")
    print("server benchmark: starting Kafka (Tansu), Postgres and Redis ...", flush=True)
    engines = EmbeddedStack.start(base, ["kafka", "postgres", "redis"])
    procs: dict[str, Proc] = {}
    try:
        env = env_for(engines.settings, INGEST_RATE_LIMIT="10000000/second")
        ports = {name: free_port() for name in ("auth", "bare", "bare_one_write", "bare_granian", "gw_uvicorn",
                                                "gw_granian")}
        procs["auth"] = Proc.analytics(["run", "--services", "auth", "--port", str(ports["auth"])], env,
                                       f"http://127.0.0.1:{ports['auth']}")
        procs["bare"] = Proc.uvicorn("bench.bare_app:app", ports["bare"], env)
        procs["bare_one_write"] = Proc([sys.executable, "-m", "bench.bare_app", str(ports["bare_one_write"])], env,
                                       f"http://127.0.0.1:{ports['bare_one_write']}", health="")
        procs["bare_one_write"].start()
        procs["bare_granian"] = granian("bench.bare_app:app", ports["bare_granian"], env)
        procs["gw_uvicorn"] = Proc([sys.executable, "-m", "bench.served", str(ports["gw_uvicorn"])], env,
                                   f"http://127.0.0.1:{ports['gw_uvicorn']}")
        procs["gw_uvicorn"].start()
        procs["gw_granian"] = granian("bench.served:app", ports["gw_granian"], env, health="/readyz")
        for proc in procs.values():
            proc.wait_ready()
        key_uvicorn = make_keys(procs["auth"].base, procs["gw_uvicorn"].base)
        key_granian = make_keys(procs["auth"].base, procs["gw_granian"].base)
        single = orjson.dumps(EVENT)
        plain = {"content-type": "application/json", "user-agent": UA}
        collect = "/api/analytics/collect"
        cases = {
            "bare_uvicorn_one_write": ("bare ASGI, uvicorn + one-write protocol", "bare_one_write", plain),
            "bare_granian": ("bare ASGI, granian", "bare_granian", plain),
            "gateway_uvicorn_one_write": ("gateway, uvicorn + one-write protocol", "gw_uvicorn",
                                          {**plain, "x-api-key": key_uvicorn["write_key"]}),
            "gateway_granian": ("gateway, granian", "gw_granian", {**plain, "x-api-key": key_granian["write_key"]}),
        }
        print(f"single events, one worker each, {ROUNDS} rounds; ratios to the bare endpoint on stock uvicorn "
              "in the same round:", flush=True)
        rounds: list[dict[str, Any]] = []
        for _ in range(ROUNDS):
            baseline = measure("bare ASGI, stock uvicorn (baseline)", procs["bare"].base + collect, single, plain,
                               procs["bare"])
            one: dict[str, Any] = {"bare_uvicorn_requests_per_s": round(baseline)}
            for name, (label, server, headers) in cases.items():
                rps = measure(label, procs[server].base + collect, single, headers, procs[server])
                one[f"{name}_requests_per_s"] = round(rps)
                one[f"{name}_ratio"] = round(rps / baseline, 3)
                one[f"{name}_cpu_us_per_request"] = CPU_PER_REQUEST_US[label]
            # Head to head, measured back to back in the same round.
            one["gateway_granian_to_uvicorn"] = round(
                one["gateway_granian_requests_per_s"] / one["gateway_uvicorn_one_write_requests_per_s"], 3)
            rounds.append(one)

        def median(key: str) -> float:
            return statistics.median(r[key] for r in rounds)

        ratios = {name: median(f"{name}_ratio") for name in cases}
        cpu = {name: median(f"{name}_cpu_us_per_request") for name in cases}
        head_to_head = median("gateway_granian_to_uvicorn")
        # Within NOISE of each other the two are a tie: the shared machines this runs on vary more than that.
        winner = ("tie" if abs(head_to_head - 1) < NOISE
                  else "granian" if head_to_head > 1 else "uvicorn_one_write")
        for name in cases:
            print(f"ratio {name} / bare stock uvicorn: {ratios[name]:.2f}   server CPU {cpu[name]:.0f} µs/request")
        cpu_gain = cpu["gateway_granian"] / cpu["gateway_uvicorn_one_write"] - 1
        cheaper = "tie" if abs(cpu_gain) < NOISE else "uvicorn_one_write" if cpu_gain > 0 else "granian"
        print(f"gateway on granian / on uvicorn + one-write, same round: {head_to_head:.2f} (median of {ROUNDS}); "
              f"faster for the gateway: {winner}; less CPU per request: {cheaper} (granian {cpu_gain:+.0%}); "
              f"under ±{NOISE:.0%} is a tie")
        result = {"ratios": ratios, "server_cpu_us_per_request": cpu, "gateway_granian_to_uvicorn": head_to_head,
                  "gateway_faster": winner, "gateway_less_cpu": cheaper, "rounds": rounds,
                  "seconds_per_measurement": int(os.environ.get("BENCH_SECONDS", "10")),
                  "connections": int(os.environ.get("BENCH_CONNECTIONS", "64")), "cpus": os.cpu_count()}
        write_result("servers", result)
        return result
    finally:
        for proc in procs.values():
            proc.stop()
        engines.stop()


if __name__ == "__main__":
    main()
    sys.exit(0)
