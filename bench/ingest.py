"""Ingest benchmark (issue #4): the gateway against baselines measured in the same run.

1. single-event `POST /api/analytics/collect` requests/s (each answered 202 only after Kafka's ack),
   divided by the requests/s of a bare ASGI endpoint answering 202 (same uvicorn, one worker each,
   same wrk load): target >= 0.5. Measured in ROUNDS back-to-back pairs (bare, then gateway); the
   median pair's ratio is reported with every round, as the machine is shared and noisy. A plain
   FastAPI + pydantic route without Kafka, and the bare endpoint on the gateway's own HTTP server
   (one write per response), are measured too, for context.
2. events/s through `POST /v1/batch` with 100 events per request, divided by aiokafka's own producer
   rate (acks=all) to the same broker: target >= 0.5.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from bench.common import Proc, env_for, register_app, write_result
from bench.wrk import run_wrk
from libs.embedded import EmbeddedStack
from libs.embedded.procs import free_port
from libs.settings import Settings

SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
BATCH_CONNECTIONS = 8
ROUNDS = int(os.environ.get("BENCH_INGEST_ROUNDS", "3"))
EVENT = {"event": "page_view", "url": "https://shop.example/p/1?utm_source=news", "device": "mobile",
         "userId": "u-1", "metadata": {"browser": "Firefox", "os": "Linux", "screenSize": "1920x1080"}}
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def batch_body(n: int) -> bytes:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    calls = [{"type": "track", "event": "Bench Event", "userId": f"u{i % 50}", "timestamp": now,
              "properties": {"plan": "pro", "amount": i}, "context": {"userAgent": UA}} for i in range(n)]
    return orjson.dumps({"batch": calls, "sentAt": now})


def make_keys(auth: str, gateway: str) -> dict[str, Any]:
    with httpx.Client(timeout=10) as http:
        app = register_app(http, auth)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = http.post(f"{gateway}/api/analytics/collect", json=EVENT, headers={"x-api-key": app["write_key"]})
            if r.status_code == 202:
                return app
            time.sleep(0.1)
    raise RuntimeError(f"gateway never accepted the new key: {r.status_code} {r.text}")


async def producer_rate(bootstrap: str, n: int, value: bytes) -> float:
    """aiokafka's own rate: `n` messages of the gateway's size, acks=all, as fast as it goes."""
    from libs.kafka import make_producer

    settings = Settings(kafka_bootstrap_servers=bootstrap)
    producer = make_producer(settings, linger_ms=5)
    await producer.start()
    try:
        warm = [await producer.send("bench.producer", value, key=b"app") for _ in range(2000)]
        await asyncio.gather(*warm)
        start = time.perf_counter()
        futures = [await producer.send("bench.producer", value, key=b"app") for _ in range(n)]
        await asyncio.gather(*futures)
        return n / (time.perf_counter() - start)
    finally:
        await producer.stop()


CPU_PER_REQUEST_US: dict[str, float] = {}


def measure(
    label: str, url: str, body: bytes, headers: dict[str, str], server: Proc | None = None,
    connections: int = CONNECTIONS,
) -> float:
    run_wrk(url, body, headers, 2, connections)  # warm-up
    process = psutil.Process(server.popen.pid) if server is not None and server.popen is not None else None
    # The server's processes: itself and its workers (granian serves from a child process).
    processes = [process, *process.children(recursive=True)] if process else []
    before = sum(sum(p.cpu_times()[:2]) for p in processes)
    result = run_wrk(url, body, headers, SECONDS, connections)
    used = sum(sum(p.cpu_times()[:2]) for p in processes) - before
    cpu_us = used / (result.requests_per_s * SECONDS) * 1e6 if processes else 0.0
    CPU_PER_REQUEST_US[label] = round(cpu_us, 1)
    bad = result.non_2xx + result.errors
    print(f"  {label:<44} {result.requests_per_s:>10,.0f} req/s   p50 {result.latency_p50_ms or 0:.2f} ms"
          f"   p99 {result.latency_p99_ms or 0:.2f} ms   server CPU {cpu_us:,.0f} µs/request"
          + (f"   ({bad} failed)" if bad else ""), flush=True)
    if bad:
        raise RuntimeError(f"{label}: {bad} requests failed; the numbers would not mean anything")
    return result.requests_per_s


def main() -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    base = Settings(analytics_data_dir=data, ingest_rate_limit="10000000/second", log_level="WARNING")
    print("ingest benchmark: starting Kafka (Tansu), Postgres and Redis ...", flush=True)
    engines = EmbeddedStack.start(base, ["kafka", "postgres", "redis"])
    procs: list[Proc] = []
    try:
        env = env_for(engines.settings, INGEST_RATE_LIMIT="10000000/second")
        p_auth, p_gw, p_bare, p_fast, p_bare1 = (free_port() for _ in range(5))
        procs.append(Proc.analytics(["run", "--services", "auth", "--port", str(p_auth)], env, f"http://127.0.0.1:{p_auth}"))
        procs.append(Proc.analytics(["run", "--services", "gateway", "--port", str(p_gw)], env, f"http://127.0.0.1:{p_gw}"))
        procs.append(Proc.uvicorn("bench.bare_app:app", p_bare, env))
        procs.append(Proc.uvicorn("bench.bare_app:fastapi_app", p_fast, env))
        procs.append(Proc([sys.executable, "-m", "bench.bare_app", str(p_bare1)], env, f"http://127.0.0.1:{p_bare1}",
                          health=""))
        procs[-1].start()
        for proc in procs:
            proc.wait_ready()
        app = make_keys(procs[0].base, procs[1].base)
        single = orjson.dumps(EVENT)
        json_headers = {"content-type": "application/json", "user-agent": UA}
        print(f"single events ({CONNECTIONS} connections, {SECONDS}s each, one uvicorn worker each; {ROUNDS} rounds "
              "of the bare endpoint then the gateway, back to back; the median round's ratio counts):", flush=True)
        rounds = []
        for _ in range(ROUNDS):
            bare = measure("bare ASGI endpoint answering 202", f"{procs[2].base}/api/analytics/collect", single,
                           json_headers, procs[2])
            gateway = measure("gateway /api/analytics/collect (Kafka acked)", f"{procs[1].base}/api/analytics/collect",
                              single, {**json_headers, "x-api-key": app["write_key"]}, procs[1])
            rounds.append({"bare_asgi_requests_per_s": round(bare), "gateway_requests_per_s": round(gateway),
                           "ratio": round(gateway / bare, 3)})
        middle = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
        bare, gateway = middle["bare_asgi_requests_per_s"], middle["gateway_requests_per_s"]
        fastapi = measure("plain FastAPI + pydantic, no Kafka", f"{procs[3].base}/api/analytics/collect",
                          single, json_headers, procs[3])
        # Context: the gateway's HTTP server writes a response's head and body at once; the same bare
        # endpoint on that server shows how much of the ratio is owed to it.
        bare_one_write = measure("bare ASGI, one write per response", f"{procs[4].base}/api/analytics/collect",
                                 single, json_headers, procs[4])
        print(f"batches of 100 events ({BATCH_CONNECTIONS} connections):", flush=True)
        auth = "Basic " + base64.b64encode(f"{app['write_key']}:".encode()).decode()
        body = batch_body(100)
        # Fewer connections for batches: 8 x 100 events in flight saturate the gateway without queueing
        # requests past the 0.8 s acknowledgement deadline (which would be answered 503).
        batch_rps = measure("gateway /v1/batch (100 events a request)", f"{procs[1].base}/v1/batch", body,
                            {**json_headers, "authorization": auth}, procs[1], connections=BATCH_CONNECTIONS)
        batch_events = batch_rps * 100
        sample_event = _sample_enriched_size()
        producer = asyncio.run(producer_rate(engines.settings.kafka_bootstrap_servers or "", 200_000, sample_event))
        print(f"  {'aiokafka producer alone (acks=all)':<44} {producer:>10,.0f} events/s", flush=True)
        print(f"  {'gateway /v1/batch':<44} {batch_events:>10,.0f} events/s", flush=True)
        result = {
            "single_event": {
                "gateway_requests_per_s": gateway, "bare_asgi_requests_per_s": bare, "rounds": rounds,
                "plain_fastapi_requests_per_s": round(fastapi), "ratio": middle["ratio"],
                "plain_fastapi_ratio": round(fastapi / bare, 3), "target": 0.5,
                "bare_asgi_one_write_requests_per_s": round(bare_one_write),
                "ratio_to_bare_one_write": round(gateway / bare_one_write, 3),
            },
            "batch_100": {
                "gateway_events_per_s": round(batch_events), "aiokafka_producer_events_per_s": round(producer),
                "ratio": round(batch_events / producer, 3), "target": 0.5,
            },
            "server_cpu_us_per_request": CPU_PER_REQUEST_US,
            "seconds_per_measurement": SECONDS, "connections": CONNECTIONS, "cpus": os.cpu_count(),
        }
        print(f"ratio single-event gateway / bare ASGI: {result['single_event']['ratio']:.2f} (target >= 0.5; "
              f"{result['single_event']['ratio_to_bare_one_write']:.2f} against the bare endpoint on the "
              "gateway's one-write HTTP server)")
        print(f"ratio batch gateway / aiokafka producer: {result['batch_100']['ratio']:.2f} (target >= 0.5)")
        write_result("ingest", result)
        return result
    finally:
        for proc in procs:
            proc.stop()
        engines.stop()


def _sample_enriched_size() -> bytes:
    """A value of the size the gateway publishes for one batch call (about 700 bytes)."""
    return b"x" * 700


if __name__ == "__main__":
    main()
    sys.exit(0)
