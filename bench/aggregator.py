"""Aggregator benchmark (issue #5), both numbers from one run.

1. Throughput: N enriched events (the gateway's shape, ~600 bytes) are produced to a fresh topic; one
   EventConsumer drains them into chDB (events/s from its partition assignment to the last insert).
   The baseline is chDB's own bulk insert of the same rows (the JSONEachRow lines the aggregator
   builds), in blocks of the aggregator's batch size, through the same adapter, into the same table
   (with the views that feed its rollups). Target: aggregator / chDB >= 0.5. Three rounds on fresh
   events; the median ratio is reported (the machine is shared: a single round is noisy).
   Then the same rounds with the other adapter: the aggregator writes through clickhouse-connect over
   ClickHouse's HTTP interface to the embedded server (`analytics infra`'s child process serving chDB
   on its own data dir), and the baseline is the bulk insert through that same adapter and server.
2. Freshness: the whole stack (engines, gateway+auth in one process, aggregator+query+notifier with
   chDB in another, as `analytics infra` + `analytics run --services` deploy it on one machine) takes
   RATE events/s for SECONDS s through `POST /api/analytics/collect` (batches of 100 events with
   client event ids); for a sample of events a poller measures the time from the gateway's 202 to
   `GET /api/analytics/events/{event_id}` finding it (`cache-control: no-cache`). Target: p99 <= 2 s.
   The rate the machine actually sustained is reported next to the target rate.
3. Freshness through the cached query API, under the same load: a dashboard sends one marker event at a
   time (`bench_mark`) and polls `GET /api/analytics/event-summary?event=bench_mark` with the cache on
   (one key for all its polls: between two writes of the app they are answered from the cache) from the
   marker's 202 until an answer counts it, then sends the next. Goal: p99 <= 1 s. The share of its polls
   answered from the cache (`X-Cache: HIT`) is reported.

`python -m bench aggregator`; BENCH_AGG_PARTS=throughput|freshness runs one part;
BENCH_AGG_ADAPTERS=chdb|clickhouse-http measures the throughput with one adapter;
BENCH_AGG_EVENTS, BENCH_AGG_RATE, BENCH_AGG_SECONDS change the sizes.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client import REGISTRY

from bench.common import Proc, env_for, percentile, register_app, write_result
from libs.embedded import EmbeddedStack
from libs.embedded.procs import free_port
from libs.settings import Settings

EVENTS = int(os.environ.get("BENCH_AGG_EVENTS", "200000"))
RATE = int(os.environ.get("BENCH_AGG_RATE", "5000"))
SECONDS = int(os.environ.get("BENCH_AGG_SECONDS", "60"))
ROUNDS = int(os.environ.get("BENCH_AGG_ROUNDS", "3"))
PARTS = os.environ.get("BENCH_AGG_PARTS", "throughput,freshness")  # for trying one part alone
ADAPTERS = os.environ.get("BENCH_AGG_ADAPTERS", "chdb,clickhouse-http").split(",")
PER_REQUEST = 100
SAMPLE_EVERY = 25  # one sampled event per 25 requests: 2 a second at 5,000 events/s, 120 in a minute
POLL_S = 0.1  # how often the pollers ask: part of every measured delay
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def enriched(app_id: str, i: int, now: str) -> bytes:
    """One event as the gateway publishes it."""
    return orjson.dumps({
        "schema_version": 1, "event_id": uuid.uuid4().hex, "app_id": app_id, "type": "page",
        "event_name": "page_view", "event_category": "", "source": "collect", "user_id": f"u{i % 5000}",
        "anonymous_id": f"a{i % 9000}", "session_id": f"s{i % 20000}",
        "url": f"https://shop.example/p/{i % 300}?utm_source=news", "path": f"/p/{i % 300}",
        "referrer": "https://www.google.com/", "referrer_host": "www.google.com", "utm_source": "news",
        "utm_medium": "", "utm_campaign": "spring", "utm_term": "", "utm_content": "",
        "device_type": "mobile" if i % 3 else "desktop", "browser": "Firefox", "os": "Linux",
        "screen_size": "1920x1080", "country": "DE", "ip": "203.0.113.0", "user_agent": UA,
        "properties": {"plan": "pro", "amount": i % 100}, "metric_value": None, "metric_unit": "",
        "timestamp": now, "received_at": now, "is_bot": False, "flags": [],
    })


def inserted_rows() -> float:
    return REGISTRY.get_sample_value("aggregator_rows_inserted_total", {"table": "events"}) or 0.0


# ---- 1. throughput ---------------------------------------------------------------------------------


# What each adapter's figures are called in the output and the result file.
ENGINE_NAME = {"chdb": "chDB", "clickhouse-http": "clickhouse-connect over HTTP"}


async def throughput(settings: Settings) -> dict[str, Any]:
    """ROUNDS rounds, each on fresh events: the aggregator drains them, then the bulk insert of the same
    rows through the same adapter (settings.clickhouse_url set: clickhouse-connect over HTTP, else chDB
    in this process). The machine is shared, so the ratio reported is the median of the rounds' ratios
    (each measured back to back under the same conditions); every round is in the result."""
    from libs.clickhouse import connect_clickhouse
    from libs.clickhouse.migrate import migrate_clickhouse
    from libs.kafka import make_producer
    from services.runner import tune_garbage_collector

    engine = ENGINE_NAME["clickhouse-http" if settings.clickhouse_url else "chdb"]
    ch = await connect_clickhouse(settings)
    await migrate_clickhouse(ch, settings)
    producer = make_producer(settings, linger_ms=5)
    await producer.start()
    tune_garbage_collector()  # as `analytics run` does once a service has started
    try:
        rounds = [await one_round(settings, ch, producer, r, engine) for r in range(ROUNDS)]
        stored = (await ch.query("SELECT count() AS n FROM events FINAL WHERE app_id = 'bench-app'"))[0]["n"]
    finally:
        await producer.stop()
        await ch.close()
    ratio = statistics.median(r["ratio"] for r in rounds)
    middle = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
    return {
        "adapter": ch.kind, "events_per_round": EVENTS, "rounds": rounds, "ratio": ratio, "target": 0.5,
        "aggregator_events_per_s": middle["aggregator_events_per_s"],
        "bulk_insert_events_per_s": middle["bulk_insert_events_per_s"],
        "batch_size_setting": settings.aggregator_batch_size, "partitions": settings.kafka_partitions,
        "rows_stored": stored, "rows_expected": EVENTS * ROUNDS,
    }


async def throughputs(settings: Settings, data: Path) -> dict[str, Any]:
    """The throughput with each adapter of ADAPTERS, keyed by adapter. clickhouse-http writes to the
    embedded ClickHouse HTTP server, started here on its own data dir (so both start from empty tables)."""
    moved: dict[str, Any] = {}
    for adapter in ADAPTERS:
        print(f"1. throughput, {ENGINE_NAME[adapter]} ({EVENTS:,} events, batches of {settings.aggregator_batch_size}):",
              flush=True)
        if adapter == "chdb":
            moved[adapter] = await throughput(settings)
        else:
            server = EmbeddedStack.start(Settings(analytics_data_dir=data / "ch-http", clickhouse_url=None), ["clickhouse"])
            try:
                moved[adapter] = await throughput(settings.model_copy(update={"clickhouse_url": server.settings.clickhouse_url}))
            finally:
                server.stop()
        print(f"ratio aggregator / bulk insert, {ENGINE_NAME[adapter]}: {moved[adapter]['ratio']:.2f} (target >= 0.5)",
              flush=True)
    return moved


async def one_round(settings: Settings, ch: Any, producer: Any, n: int, engine: str) -> dict[str, Any]:
    from libs.kafka import ensure_topics
    from services.aggregator.consumer import EventConsumer
    from services.aggregator.decode import decode

    topic = f"bench.aggregator.{uuid.uuid4().hex[:6]}"
    await ensure_topics(settings, (topic,))
    now = datetime.now(UTC).isoformat()
    values = [enriched("bench-app", i, now) for i in range(EVENTS)]
    t0 = time.perf_counter()
    futures = [await producer.send(topic, v, key=b"bench-app", partition=i % settings.kafka_partitions)
               for i, v in enumerate(values)]
    await asyncio.gather(*futures)
    print(f"  round {n + 1}: produced {EVENTS:,} events to {topic} in {time.perf_counter() - t0:.1f}s", flush=True)

    consumer = EventConsumer(settings, ch, producer, topic=topic, group_id=f"bench-{topic}")
    start_rows = inserted_rows()
    start_inserts = REGISTRY.get_sample_value("aggregator_batch_rows_count") or 0.0
    task = asyncio.create_task(consumer.run())
    while not (consumer.consumer and consumer.consumer.assignment()):  # noqa: ASYNC110 - polling someone else's state
        await asyncio.sleep(0.01)
    began = time.perf_counter()
    while inserted_rows() - start_rows < EVENTS:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    drained = time.perf_counter() - began
    consumer.stop()
    await task
    aggregator_rate = EVENTS / drained
    inserts = (REGISTRY.get_sample_value("aggregator_batch_rows_count") or 0.0) - start_inserts
    print(f"    {'one aggregator, Kafka -> ' + engine:<52} {aggregator_rate:>10,.0f} events/s ({drained:.1f}s)",
          flush=True)

    # The engine's own bulk insert of the very same rows into the same table (its rollup views included),
    # through the same adapter, in as many blocks as the aggregator made. ReplacingMergeTree folds the
    # second copy away (FINAL).
    rows = [decode(v)[1] for v in values]
    size = -(-EVENTS // max(1, int(inserts)))
    began = time.perf_counter()
    for i in range(0, len(rows), size):
        await ch.insert_rows("events", rows[i:i + size])
    baseline = time.perf_counter() - began
    bulk_rate = EVENTS / baseline
    print(f"    {'bulk insert, same rows, ' + engine:<52} {bulk_rate:>10,.0f} events/s ({baseline:.1f}s)", flush=True)
    return {
        "aggregator_events_per_s": round(aggregator_rate), "bulk_insert_events_per_s": round(bulk_rate),
        "ratio": round(aggregator_rate / bulk_rate, 3), "aggregator_inserts": int(inserts), "rows_per_insert": size,
    }


# ---- 2. freshness under load -------------------------------------------------------------------------


def make_app(front: str, back: str) -> dict[str, Any]:
    with httpx.Client(timeout=10) as http:
        app = register_app(http, front)
        # Warm-up: the key known on both sides, and one event through (the aggregator has joined its
        # consumer group, which takes a few seconds after a start), before the clock starts.
        deadline = time.monotonic() + 30
        sent = False
        while time.monotonic() < deadline:
            if not sent:
                sent = http.post(f"{front}/api/analytics/collect", json={"event": "warm_up"},
                                 headers={"x-api-key": app["write_key"]}).status_code == 202
            seen = http.get(f"{back}/api/analytics/events/count", params={"event_name": "warm_up"},
                            headers={"x-api-key": app["api_key"], "cache-control": "no-cache"})
            if sent and seen.status_code == 200 and seen.json()["count"] == 1:
                return app
            time.sleep(0.1)
    raise RuntimeError("the warm-up event never became visible")


def percentiles(delays: list[float]) -> dict[str, float | None]:
    """p50, p99, max and mean of the delays, in seconds."""
    if not delays:
        return {"p50_s": None, "p99_s": None, "max_s": None, "mean_s": None}
    return {"p50_s": round(percentile(delays, 50) or 0, 3), "p99_s": round(percentile(delays, 99) or 0, 3),
            "max_s": round(max(delays), 3), "mean_s": round(statistics.fmean(delays), 3)}


async def dashboard(http: httpx.AsyncClient, front: str, back: str, app: dict[str, Any], until: asyncio.Event,
                    failed: list[str]) -> dict[str, Any]:
    """Part 3: one marker event at a time, each followed by event-summary polls with the cache on until
    an answer counts it. The delays from each marker's 202, and how the polls were answered."""
    delays: list[float] = []
    polls = {"HIT": 0, "MISS": 0}
    summary = {"url": f"{back}/api/analytics/event-summary", "params": {"event": "bench_mark"},
               "headers": {"x-api-key": app["api_key"]}}
    lost = False
    while not until.is_set() and not lost:
        r = await http.post(f"{front}/api/analytics/collect", json={"event": "bench_mark"},
                            headers={"x-api-key": app["write_key"], "user-agent": UA})
        acked = time.monotonic()
        if r.status_code != 202:
            failed.append(f"collect answered {r.status_code}: {r.text[:200]}")
            continue
        while True:
            answer = await http.get(**summary)
            polls[answer.headers.get("x-cache", "MISS")] += 1
            if answer.status_code == 200 and answer.json()["count"] > len(delays):
                delays.append(time.monotonic() - acked)
                break
            lost = time.monotonic() - acked > 60
            if lost:  # the count can no longer tell which marker it saw: stop measuring
                failed.append("a marker event was not counted by event-summary within 60s")
                break
            await asyncio.sleep(POLL_S)
    return {
        "what": "202 -> first GET event-summary (cache on) that counts the event", "samples": len(delays),
        **percentiles(delays), "goal_p99_s": 1.0, "poll_interval_s": POLL_S,
        "polls_answered_from_cache": round(polls["HIT"] / max(1, sum(polls.values())), 3),
    }


def request_bodies(n: int) -> list[tuple[bytes, str]]:
    """(body, last event id) for `n` requests of PER_REQUEST events with client event ids, built before
    the clock starts so that the load generator spends its time sending."""
    bodies = []
    for r in range(n):
        events = [{"event": "bench_view", "url": f"https://shop.example/p/{i}", "device": "mobile",
                   "userId": f"u{(r * PER_REQUEST + i) % 5000}", "event_id": uuid.uuid4().hex,
                   "metadata": {"browser": "Firefox", "os": "Linux", "screenSize": "1920x1080"}}
                  for i in range(PER_REQUEST)]
        bodies.append((orjson.dumps({"events": events}), events[-1]["event_id"]))
    return bodies


async def freshness(front: str, back: str, app: dict[str, Any]) -> dict[str, Any]:
    requests = RATE * SECONDS // PER_REQUEST
    bodies = request_bodies(requests)
    interval = PER_REQUEST / RATE
    delays: list[float] = []
    timeline: list[tuple[float, float]] = []  # (seconds into the run, delay): where the slow ones were
    began = time.monotonic()
    accepted = [0]
    failed: list[str] = []
    pollers: list[asyncio.Task[None]] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:

        async def visible(event_id: str, acked: float) -> None:
            url = f"{back}/api/analytics/events/{event_id}"
            headers = {"x-api-key": app["api_key"], "cache-control": "no-cache"}
            while time.monotonic() - acked < 60:
                if (await http.get(url, headers=headers)).status_code == 200:
                    delays.append(time.monotonic() - acked)
                    timeline.append((round(acked - began, 1), round(delays[-1], 2)))
                    return
                await asyncio.sleep(POLL_S)
            failed.append(f"{event_id} not visible after 60s")

        async def send(n: int) -> None:
            body, last_id = bodies[n]
            r = await http.post(f"{front}/api/analytics/collect", content=body,
                                headers={"x-api-key": app["write_key"], "content-type": "application/json",
                                         "user-agent": UA})
            acked = time.monotonic()
            if r.status_code != 202:
                failed.append(f"collect answered {r.status_code}: {r.text[:200]}")
                return
            accepted[0] += r.json()["accepted"]
            if n % SAMPLE_EVERY == 0:
                pollers.append(asyncio.create_task(visible(last_id, acked)))

        senders: list[asyncio.Task[None]] = []
        load_over = asyncio.Event()
        watching = asyncio.create_task(dashboard(http, front, back, app, load_over, failed))
        began = time.monotonic()
        for n in range(requests):
            await asyncio.sleep(max(0.0, began + n * interval - time.monotonic()))
            senders.append(asyncio.create_task(send(n)))
        await asyncio.gather(*senders)
        took = time.monotonic() - began
        load_over.set()
        cached_api = await watching
        await asyncio.gather(*pollers)
        counted = 0
        deadline = time.monotonic() + 60
        while counted < accepted[0] and time.monotonic() < deadline:
            r = await http.get(f"{back}/api/analytics/events/count", params={"event_name": "bench_view"},
                               headers={"x-api-key": app["api_key"], "cache-control": "no-cache"})
            counted = r.json()["count"]
            await asyncio.sleep(0.5)
    if failed:
        print(f"  {len(failed)} failures, e.g. {failed[0]}", flush=True)
    if os.environ.get("BENCH_AGG_TIMELINE"):
        print("  (s into the run, delay s):", sorted(timeline), flush=True)
    return {
        "target_events_per_s": RATE, "seconds": SECONDS, "sustained_events_per_s": round(accepted[0] / took),
        "events_accepted": accepted[0], "events_counted_by_query": counted, "samples": len(delays),
        **percentiles(delays), "target_p99_s": 2.0, "failures": len(failed), "api_cached": cached_api,
        "deployment": "analytics infra engines + `run --services gateway,auth` + `run --services aggregator,query,notifier`",
    }


def main() -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="bench-agg-"))
    base_settings = Settings(analytics_data_dir=data, log_level="WARNING", ingest_rate_limit="10000000/second")
    print("aggregator benchmark: starting Kafka (Tansu), Postgres, Redis and the SMTP sink ...", flush=True)
    engines = EmbeddedStack.start(base_settings, ["kafka", "postgres", "redis", "smtp"])
    procs: list[Proc] = []
    try:
        moved: dict[str, Any] = {}
        if "throughput" in PARTS:
            moved = asyncio.run(throughputs(engines.settings, data))
        if "freshness" not in PARTS:
            return {"throughput": moved}

        # The stack as deployed on one machine without Docker: ingest and auth in one process, the
        # aggregator with the query service (they share chDB) in another, the engines beside them.
        p_front, p_back = free_port(), free_port()
        env = env_for(engines.settings, ANALYTICS_DATA_DIR=str(data / "stack"), INGEST_RATE_LIMIT="10000000/second")
        front = Proc.analytics(["run", "--services", "gateway,auth", "--port", str(p_front)], env,
                               f"http://127.0.0.1:{p_front}")
        back = Proc.analytics(["run", "--services", "aggregator,query,notifier", "--port", str(p_back)], env,
                              f"http://127.0.0.1:{p_back}")
        procs.extend([front, back])
        front.wait_ready()
        back.wait_ready()
        app = make_app(front.base, back.base)
        print(f"2. freshness: {RATE:,} events/s for {SECONDS}s through the whole stack ...", flush=True)
        fresh = asyncio.run(freshness(front.base, back.base, app))
        print(f"  sustained {fresh['sustained_events_per_s']:,} events/s; 202 -> visible: p50 {fresh['p50_s']}s, "
              f"p99 {fresh['p99_s']}s (target <= 2s); {fresh['events_counted_by_query']:,} of "
              f"{fresh['events_accepted']:,} counted", flush=True)
        api = fresh["api_cached"]
        print(f"3. 202 -> counted by event-summary with the cache on: p50 {api['p50_s']}s, p99 {api['p99_s']}s "
              f"(goal <= 1s) over {api['samples']} events; {api.get('polls_answered_from_cache', 0):.0%} of its "
              f"polls answered from the cache", flush=True)
        result = {"throughput": moved, "freshness": fresh, "cpus": os.cpu_count()}
        write_result("aggregator", result)
        return result
    finally:
        for proc in procs:
            proc.stop()
        engines.stop()


if __name__ == "__main__":
    main()
    sys.exit(0)
