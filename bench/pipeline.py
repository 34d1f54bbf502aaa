"""The whole pipeline as users run it (issue #21): `analytics run` (every engine embedded, as `make run`
starts it) under varied ingest traffic while the dashboard's queries run every second.

Measured in one run, back to back, because the machine is shared:

* single-event `POST /api/analytics/collect` events/s of the whole stack, and of a bare ASGI endpoint
  answering 202 (same uvicorn, same wrk load): the ratio's goal is >= 0.4. ROUNDS pairs; the median
  pair's ratio counts and the spread is reported;
* `POST /v1/batch` (Segment batches of BATCH_EVENTS) events/s;
* freshness: a uniquely named marker event every ~0.5 s, timed from its 202 until the query API
  (event-summary, the dashboard's cached path) counts it: p99 goal <= 1 s;
* every event counted: after the traffic, the events the query API counts equal the events the
  gateway acknowledged (202), and wrk's acknowledged requests account for them (wrk stops with up to
  one request per connection in flight, which the server may have acknowledged unseen);
* CPU share per process (and the threads of the Python process) and PSS under load;
* for context (BENCH_PIPELINE_GATEWAY_PROCESS=1, the default): the same single-event load on a gateway
  in a process of its own (`analytics run --services gateway`, sharing the stack's embedded Kafka and
  Redis), in each round right after the stack: what running the gateway apart from the rest would give.

Traffic: 1,000 User-Agents, 10,000 visitor addresses (X-Forwarded-For; the gateway trusts 127.0.0.1),
20 event names, 300 pages (bench/traffic.py). BENCH_PIPELINE_SECONDS per phase (default 60).
"""

from __future__ import annotations

import base64
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import Proc, percentile, register_app, write_result
from bench.stack import Stack
from bench.traffic import lua_script
from bench.wrk import WrkResult, run_wrk_script
from libs.embedded.procs import free_port

SECONDS = int(os.environ.get("BENCH_PIPELINE_SECONDS", "60"))
ROUNDS = int(os.environ.get("BENCH_PIPELINE_ROUNDS", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
BATCH_CONNECTIONS = 8
BATCH_EVENTS = 50
WRK_TIMEOUT_S = 10  # a slow answer is a slow answer, not a wrk error
GATEWAY_PROCESS = os.environ.get("BENCH_PIPELINE_GATEWAY_PROCESS", "1") == "1"
GOALS = {"ratio": 0.4, "freshness_p99_s": 1.0}


class Dashboard(threading.Thread):
    """What the dashboard's overview page asks (services/query/dashboard/assets/app.js), once a second."""

    def __init__(self, base: str, app_id: str, key: str) -> None:
        super().__init__(daemon=True, name="dashboard")
        self.base, self.key = base, key
        params = {"app_id": app_id, "period": "day"}
        breakdown = [("page", "visitors,pageviews"), ("source", "visitors,pageviews"), ("browser", "visitors,pageviews"),
                     ("os", "visitors,pageviews"), ("country", "visitors,pageviews"), ("event_name", "visitors,events")]
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = [
            ("/api/analytics/stats/realtime", {"app_id": app_id}, {"cache-control": "no-cache"}),
            ("/api/analytics/stats/aggregate", {**params, "compare": "previous_period"}, {}),
            ("/api/analytics/stats/timeseries", {**params, "interval": "hour", "metrics": "visitors,pageviews"}, {}),
            *(("/api/analytics/stats/breakdown", {**params, "property": p, "metrics": m, "limit": 10}, {})
              for p, m in breakdown),
            ("/api/analytics/event-summary", {"app_id": app_id}, {}),
            ("/api/analytics/events/grouped", {"app_id": app_id, "by": "event_name"}, {}),
        ]
        self.stop = threading.Event()
        self.latencies_ms: list[float] = []
        self.failures: dict[str, int] = {}
        self.rounds = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers={"x-api-key": self.key}, timeout=30) as http:
            while not self.stop.is_set():
                started = time.monotonic()
                for path, params, headers in self.requests:
                    t0 = time.perf_counter()
                    try:
                        status = http.get(path, params=params, headers=headers).status_code
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__  # type: ignore[assignment]
                    self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                    if status != 200:
                        self.failures[f"{path} {status}"] = self.failures.get(f"{path} {status}", 0) + 1
                self.rounds += 1
                self.stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {"rounds": self.rounds, "requests": len(lat), "failures": self.failures,
                "latency_p50_ms": round(percentile(lat, 50) or 0, 1), "latency_p99_ms": round(percentile(lat, 99) or 0, 1)}


class Freshness(threading.Thread):
    """A uniquely named marker event every ~0.5 s; the time from its 202 until event-summary counts it."""

    def __init__(self, base: str, write_key: str, read_key: str, app_id: str) -> None:
        super().__init__(daemon=True, name="freshness")
        self.base, self.write_key, self.read_key, self.app_id = base, write_key, read_key, app_id
        self.stop = threading.Event()
        self.seconds: list[float] = []
        self.sent = 0  # markers acknowledged (202)
        self.refused = 0
        self.lost = 0  # acknowledged but not counted within 30 s

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as http:
            while not self.stop.is_set():
                started = time.monotonic()
                self.one(http)
                self.stop.wait(max(0.0, 0.5 - (time.monotonic() - started)))

    def one(self, http: httpx.Client) -> None:
        name = f"marker_{uuid.uuid4().hex[:12]}"
        r = http.post("/api/analytics/collect", json={"event": name, "url": "https://shop.example/marker"},
                      headers={"x-api-key": self.write_key})
        if r.status_code != 202:
            self.refused += 1
            return
        acked = time.monotonic()
        self.sent += 1
        while time.monotonic() - acked < 30:
            q = http.get("/api/analytics/event-summary", params={"app_id": self.app_id, "event": name},
                         headers={"x-api-key": self.read_key})
            if q.status_code == 200 and q.json().get("count", 0) >= 1:
                self.seconds.append(time.monotonic() - acked)
                return
            time.sleep(0.05)  # a dashboard polls far less; this is the resolution of the figure
        self.lost += 1

    def summary(self) -> dict[str, Any]:
        p50, p99 = percentile(self.seconds, 50), percentile(self.seconds, 99)
        return {"markers": self.sent, "refused": self.refused, "not_visible_in_30s": self.lost,
                "p50_s": round(p50, 3) if p50 is not None else None,
                "p99_s": round(p99, 3) if p99 is not None else None,
                "max_s": round(max(self.seconds), 3) if self.seconds else None}


def threads_cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of the `analytics` process's threads, by thread name (the event loop is the
    process's main thread; chDB's and the engines' clients have their own)."""
    assert stack.proc.popen is not None
    pid = stack.proc.popen.pid
    out: dict[str, float] = {}
    for t in psutil.Process(pid).threads():
        try:
            name = Path(f"/proc/{pid}/task/{t.id}/comm").read_text().strip()
        except OSError:
            continue
        name = "main (event loop)" if t.id == pid else name
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def waiting(pid: int) -> float:
    """Seconds the main thread of `pid` has spent runnable but waiting for a core (/proc schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def phase(
    stack: Stack, url: str, script: str, seconds: int, connections: int, per_request: int = 1,
) -> tuple[WrkResult, dict[str, Any]]:
    """wrk against the stack, with its CPU per process and thread, the CPU it spends per event, how
    long its event loop waited for a core, and PSS sampled halfway."""
    memory: dict[str, float] = {}
    sampler = threading.Timer(seconds / 2, lambda: memory.update(stack.memory()))
    assert stack.proc.popen is not None
    pid = stack.proc.popen.pid
    stack.cpu_mark()
    threads_before, wait_before = threads_cpu(stack), waiting(pid)
    sampler.start()
    t0 = time.monotonic()
    result = run_wrk_script(url, script, seconds, connections, WRK_TIMEOUT_S)
    wall = time.monotonic() - t0
    sampler.join()
    cpu = stack.cpu_since_mark(wall)
    after, waited = threads_cpu(stack), waiting(pid) - wait_before
    threads = {k: round((v - threads_before.get(k, 0.0)) / wall, 3) for k, v in after.items()}
    threads = dict(sorted(((k, v) for k, v in threads.items() if v >= 0.01), key=lambda kv: -kv[1]))
    events = max(1, result.requests * per_request)
    return result, {
        "cpu_cores_by_process": cpu, "cpu_cores_by_thread_of_analytics": threads,
        "cpu_us_per_event": {"stack": round(sum(cpu.values()) * wall / events * 1e6, 1),
                             "event_loop_thread": round(threads.get("main (event loop)", 0.0) * wall / events * 1e6, 1)},
        "event_loop_waiting_for_a_core_share": round(waited / wall, 3),
        "pss_mb": memory,
    }


def bare_phase(bare: Proc, url: str, script: str) -> tuple[WrkResult, float]:
    """wrk against the bare endpoint; its server's CPU µs per request."""
    assert bare.popen is not None
    own = psutil.Process(bare.popen.pid)
    before = sum(own.cpu_times()[:2])
    result = run_wrk_script(url, script, SECONDS, CONNECTIONS, WRK_TIMEOUT_S)
    return result, round((sum(own.cpu_times()[:2]) - before) / max(1, result.requests) * 1e6, 1)


def gateway_apart_phase(stack: Stack, apart: Proc, script: str) -> tuple[WrkResult, dict[str, float]]:
    """The single-event load on the gateway of its own process; cores used by it and by the stack."""
    assert apart.popen is not None
    own = psutil.Process(apart.popen.pid)
    before = sum(own.cpu_times()[:2])
    stack.cpu_mark()
    t0 = time.monotonic()
    result = run_wrk_script(f"{apart.base}/api/analytics/collect", script, SECONDS, CONNECTIONS, WRK_TIMEOUT_S)
    wall = time.monotonic() - t0
    cores = {"gateway process": round((sum(own.cpu_times()[:2]) - before) / wall, 3), **stack.cpu_since_mark(wall)}
    return result, {**cores, "us_per_event_all": round(sum(cores.values()) * wall / max(1, result.requests) * 1e6, 1)}


def start_gateway_process(stack: Stack) -> tuple[Proc, Path]:
    """`analytics run --services gateway` on its own port, on the stack's Kafka and Redis."""
    data = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_URL") and k != "KAFKA_BOOTSTRAP_SERVERS"}
    env.update(ANALYTICS_DATA_DIR=str(data), LOG_LEVEL="WARNING", **stack.engine_urls())
    port = free_port()
    proc = Proc.analytics(["run", "--services", "gateway", "--port", str(port)], env, f"http://127.0.0.1:{port}")
    proc.wait_ready(120)
    return proc, data


def accept_one(http: httpx.Client, base: str, write_key: str) -> None:
    """One event through `base`, once it knows the app's key (a new app reaches a gateway in moments)."""
    deadline = time.monotonic() + 20
    while http.post(f"{base}/api/analytics/collect", json={"event": "page_view"},
                    headers={"x-api-key": write_key}).status_code != 202:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway at {base} never accepted the new app's write key")
        time.sleep(0.1)


def ok_rate(result: WrkResult) -> float:
    """Requests/s answered 2xx: a refused request (429, 503) is answered fast and would flatter the rate."""
    return result.requests_per_s * (result.requests - result.non_2xx) / max(1, result.requests)


def report(label: str, result: WrkResult, per_request: int = 1) -> None:
    bad = f"   {result.non_2xx} non-2xx, {result.errors} socket errors" if result.non_2xx or result.errors else ""
    print(f"  {label:<48} {ok_rate(result) * per_request:>10,.0f} events/s   p50 "
          f"{result.latency_p50_ms or 0:.1f} ms   p99 {result.latency_p99_ms or 0:.1f} ms{bad}", flush=True)


def gateway_counter(name: str, *bases: str) -> int:
    """A gateway counter of /metrics (`gateway_events_accepted_total`, ...) summed over gateways and labels."""
    total = 0.0
    for base in bases:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith((f"{name}{{", f"{name} ")))
    return round(total)


def stored_events(base: str, app_id: str, key: str) -> int:
    r = httpx.get(f"{base}/api/analytics/event-summary", params={"app_id": app_id},
                  headers={"x-api-key": key, "cache-control": "no-cache"}, timeout=60)
    r.raise_for_status()
    return int(r.json()["count"])


def goal(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> dict[str, Any]:
    print("pipeline benchmark: starting the whole stack (`analytics run`, every engine embedded) and the bare "
          "ASGI baseline ...", flush=True)
    stack = Stack.start()
    bare = Proc.uvicorn("bench.bare_app:app", free_port(), dict(os.environ))
    threads: list[Dashboard | Freshness] = []
    apart: Proc | None = None
    apart_data: Path | None = None
    try:
        bare.wait_ready()
        if GATEWAY_PROCESS:
            apart, apart_data = start_gateway_process(stack)
        gateways = [stack.base] + ([apart.base] if apart else [])
        with httpx.Client(timeout=30) as http:
            app = register_app(http, stack.base)
            for base in gateways:
                accept_one(http, base, app["write_key"])
        python_sent = len(gateways)  # events acknowledged outside wrk and the markers
        app_id, write_key, read_key = app["app_id"], app["write_key"], app["api_key"]
        single = lua_script("single", "x-api-key", write_key)
        basic = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        batch = lua_script("batch", "authorization", basic, batch_events=BATCH_EVENTS)
        dashboard = Dashboard(stack.base, app_id, read_key)
        fresh = Freshness(stack.base, write_key, read_key, app_id)
        threads = [dashboard, fresh]
        for t in threads:
            t.start()
        stack_url, bare_url = f"{stack.base}/api/analytics/collect", f"{bare.base}/api/analytics/collect"
        acked, inflight = 0, 0  # events wrk saw acknowledged by the stack; at most in flight when wrk stopped
        warm = run_wrk_script(stack_url, single, 3, CONNECTIONS, WRK_TIMEOUT_S)
        acked, inflight = acked + warm.requests - warm.non_2xx, inflight + CONNECTIONS
        run_wrk_script(bare_url, single, 3, CONNECTIONS, WRK_TIMEOUT_S)
        if apart is not None:
            warm = run_wrk_script(f"{apart.base}/api/analytics/collect", single, 3, CONNECTIONS, WRK_TIMEOUT_S)
            acked, inflight = acked + warm.requests - warm.non_2xx, inflight + CONNECTIONS
        apart_label = ", a gateway in its own process" if apart else ""
        print(f"single events ({CONNECTIONS} connections, {SECONDS}s each, dashboard queries every second and a "
              f"marker every 0.5 s throughout; {ROUNDS} round(s) of the bare endpoint, the stack{apart_label}, "
              "back to back):", flush=True)
        rounds: list[dict[str, Any]] = []
        load: dict[str, Any] = {}
        for _ in range(ROUNDS):
            b, bare_us = bare_phase(bare, bare_url, single)
            report("bare ASGI endpoint answering 202", b)
            s, load = phase(stack, stack_url, single, SECONDS, CONNECTIONS)
            report("whole stack /api/analytics/collect", s)
            acked, inflight = acked + s.requests - s.non_2xx, inflight + CONNECTIONS
            rounds.append({"bare_events_per_s": round(ok_rate(b)), "stack_events_per_s": round(ok_rate(s)),
                           "ratio": round(ok_rate(s) / ok_rate(b), 3), "stack_non_2xx": s.non_2xx,
                           "stack_errors": s.errors, "stack_latency_p99_ms": s.latency_p99_ms,
                           "bare_cpu_us_per_request": bare_us, "stack_cpu_us_per_event": load["cpu_us_per_event"],
                           "event_loop_waiting_for_a_core_share": load["event_loop_waiting_for_a_core_share"]})
            if apart is not None:
                g, cpu = gateway_apart_phase(stack, apart, single)
                report("gateway in its own process (context)", g)
                acked, inflight = acked + g.requests - g.non_2xx, inflight + CONNECTIONS
                rounds[-1].update(gateway_process_events_per_s=round(ok_rate(g)),
                                  gateway_process_ratio=round(ok_rate(g) / ok_rate(b), 3),
                                  gateway_process_non_2xx=g.non_2xx, gateway_process_cpu_cores=cpu)
        middle = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
        failed_singles = gateway_counter("gateway_publish_failures_total", *gateways)
        print(f"batches of {BATCH_EVENTS} events ({BATCH_CONNECTIONS} connections):", flush=True)
        bt, batch_load = phase(stack, f"{stack.base}/v1/batch", batch, SECONDS, BATCH_CONNECTIONS,
                              BATCH_EVENTS)
        report("whole stack /v1/batch", bt, BATCH_EVENTS)
        acked += (bt.requests - bt.non_2xx) * BATCH_EVENTS
        inflight += BATCH_CONNECTIONS * BATCH_EVENTS
        fresh.stop.set()
        fresh.join()
        time.sleep(2)
        dashboard.stop.set()
        dashboard.join()
        expected = acked + python_sent + fresh.sent
        # Everything acknowledged is stored within seconds; wait up to 2 minutes for the last of it.
        accepted = gateway_counter("gateway_events_accepted_total", *gateways)
        failed = gateway_counter("gateway_publish_failures_total", *gateways)
        # Requests answered 503 (Kafka's acknowledgement later than ACK_TIMEOUT_S): their events may be
        # stored all the same, once (a client retries them with the same ids, which are not stored twice).
        late = failed_singles + (failed - failed_singles) * BATCH_EVENTS
        deadline, stored = time.monotonic() + 120, -1
        while time.monotonic() < deadline:
            stored = stored_events(stack.base, app_id, read_key)
            if stored >= accepted:
                break
            time.sleep(1)
        time.sleep(3)  # nothing more arrives later (a duplicate, a late write)
        stored = stored_events(stack.base, app_id, read_key)
        # Nothing acknowledged missing, nothing stored twice; wrk's count agrees with the gateway's.
        counted = accepted <= stored <= accepted + late and expected <= accepted <= expected + inflight
        freshness = fresh.summary()
        ratio = middle["ratio"]
        ratios = [r["ratio"] for r in rounds]
        apart_ratios = [r["gateway_process_ratio"] for r in rounds if "gateway_process_ratio" in r]
        result = {
            "single_event": {
                "stack_events_per_s": middle["stack_events_per_s"], "bare_asgi_events_per_s": middle["bare_events_per_s"],
                "ratio": ratio, "goal": GOALS["ratio"], "met": ratio >= GOALS["ratio"],
                "ratio_spread": [min(ratios), max(ratios)], "rounds": rounds,
                "gateway_process_ratio_median": statistics.median(apart_ratios) if apart_ratios else None,
                # What the ratio would be if the stack had the CPU the bare endpoint has: the machine is
                # shared, so this is steadier than the rates.
                "cpu_ratio": round(middle["bare_cpu_us_per_request"] / middle["stack_cpu_us_per_event"]["stack"], 3),
                "event_loop_cpu_ratio": round(middle["bare_cpu_us_per_request"]
                                              / middle["stack_cpu_us_per_event"]["event_loop_thread"], 3),
            },
            "batch": {"events_per_request": BATCH_EVENTS, "events_per_s": round(ok_rate(bt) * BATCH_EVENTS),
                      "non_2xx": bt.non_2xx, "errors": bt.errors, "latency_p99_ms": bt.latency_p99_ms},
            "freshness": {**freshness, "goal_p99_s": GOALS["freshness_p99_s"],
                          "met": freshness["p99_s"] is not None and freshness["p99_s"] <= GOALS["freshness_p99_s"]
                          and not freshness["not_visible_in_30s"]},
            "counted": counted,
            "stored_equals_acknowledged": stored == accepted,
            "counts": {"stored": stored, "gateway_acknowledged": accepted, "wrk_acknowledged_plus_ours": expected,
                       "in_flight_when_wrk_stopped_at_most": inflight, "markers": fresh.sent,
                       "answered_503_requests": failed, "answered_503_events": late,
                       "answered_429_requests": gateway_counter("gateway_rate_limited_total", *gateways)},
            "dashboard": dashboard.summary(),
            "under_single_event_load": load,
            "under_batch_load": batch_load,
            "seconds_per_phase": SECONDS, "connections": CONNECTIONS, "batch_connections": BATCH_CONNECTIONS,
            "cpus": os.cpu_count(),
        }
        print(f"single-event events/s: whole stack {middle['stack_events_per_s']:,}, bare ASGI "
              f"{middle['bare_events_per_s']:,}, ratio {ratio:.2f} (goal >= {GOALS['ratio']}: "
              f"{goal(ratio >= GOALS['ratio'])}; rounds {', '.join(f'{r:.2f}' for r in ratios)})")
        print(f"CPU per event: bare endpoint {middle['bare_cpu_us_per_request']} µs a request, whole stack "
              f"{middle['stack_cpu_us_per_event']['stack']} µs (its event loop "
              f"{middle['stack_cpu_us_per_event']['event_loop_thread']} µs): at equal CPU the ratio would be "
              f"{result['single_event']['cpu_ratio']:.2f} ({result['single_event']['event_loop_cpu_ratio']:.2f} for the "
              f"event loop alone); the event loop waited for a core {middle['event_loop_waiting_for_a_core_share']:.0%} "
              "of the time")
        if apart_ratios:
            print(f"context: a gateway in its own process, ratio {statistics.median(apart_ratios):.2f} "
                  f"(rounds {', '.join(f'{r:.2f}' for r in apart_ratios)})")
        print(f"batch events/s: {result['batch']['events_per_s']:,} ({BATCH_EVENTS} a request)")
        print(f"freshness 202 -> counted by the query API: p50 {freshness['p50_s']} s, p99 {freshness['p99_s']} s "
              f"over {freshness['markers']} markers (goal p99 <= {GOALS['freshness_p99_s']} s: "
              f"{goal(result['freshness']['met'])})")
        print(f"every event counted: {goal(counted)} - stored {stored:,}, gateway acknowledged {accepted:,}, wrk saw "
              f"{expected:,} acknowledged (+ up to {inflight:,} in flight when it stopped); {failed:,} requests "
              f"({late:,} events) answered 503, {result['counts']['answered_429_requests']:,} answered 429"
              + ("" if counted else "   <<< MISMATCH: acknowledged events missing or events counted twice"))
        if stored != accepted:
            print(f"  !!! stored != acknowledged: {stored - accepted:+,} events; events answered 503 that Kafka "
                  "took after the deadline are stored (once) although the client was told to retry")
        d = result["dashboard"]
        print(f"dashboard: {d['requests']} queries, p50 {d['latency_p50_ms']} ms, p99 {d['latency_p99_ms']} ms, "
              f"failures {d['failures'] or 'none'}")
        for title, part in (("single-event load", load), ("batch load", batch_load)):
            print(f"under {title}: CPU cores by process {part['cpu_cores_by_process']}; CPU per event "
                  f"{part['cpu_us_per_event']} µs; the event loop waited for a core "
                  f"{part['event_loop_waiting_for_a_core_share']:.0%} of the time")
            print(f"  threads of the analytics process {part['cpu_cores_by_thread_of_analytics']}")
            print(f"  PSS MB {part['pss_mb']}")
        write_result("pipeline", result)
        return result
    finally:
        for t in threads:
            t.stop.set()
        if apart is not None:
            apart.stop()
        if apart_data is not None:
            shutil.rmtree(apart_data, ignore_errors=True)
        bare.stop()
        stack.stop()


if __name__ == "__main__":
    main()
