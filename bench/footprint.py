"""Footprint benchmark (issue #21): the memory of the whole `make run` stack as a user runs it on a laptop.

`analytics run` with every engine embedded (bench/stack.py); memory is PSS (shared pages split between
the processes that map them, so the total counts each page once), by process name:

1. idle: after a few dashboard reads, IDLE_SETTLE_S seconds after the last one. Goal: total <= 300 MB.
2. under load: collect traffic (wrk on `POST /api/analytics/collect`) and dashboard reads (httpx, one
   after another) for LOAD_S seconds; the highest total sampled once a second is reported.

The Python process is split into file-backed pages (mapped code: chDB's `_chdb.abi3.so` is most of it)
and anonymous PSS (heaps, stacks), from /proc/<pid>/smaps_rollup. The goal is checked on the total as a
lone user sees it (`total_alone_mb`): chDB's code pages counted whole, even when another process on the
machine (a second stack, a test run) maps the same library and PSS splits them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import register_app, write_result
from bench.stack import Stack
from bench.wrk import run_wrk, wrk_available

GOAL_IDLE_MB = 300
# Past the 30 s without a query after which chDB hands its code pages back (libs/clickhouse/embedded.py).
IDLE_SETTLE_S = int(os.environ.get("BENCH_FOOTPRINT_SETTLE", "45"))
LOAD_S = int(os.environ.get("BENCH_FOOTPRINT_LOAD", "20"))
CONNECTIONS = 16
EVENT = {"event": "page_view", "url": "https://shop.example/p/1?utm_source=news", "device": "mobile",
         "userId": "u-1", "metadata": {"browser": "Firefox", "os": "Linux", "screenSize": "1920x1080"}}
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
# What a dashboard shows on opening: the realtime tile, the summary, the time series, a breakdown.
DASHBOARD = [
    ("/api/analytics/stats/realtime", {}),
    ("/api/analytics/event-summary", {"event": "page_view"}),
    ("/api/analytics/events/timeseries", {"interval": "day", "days": 7}),
    ("/api/analytics/events/grouped", {"by": "event_name"}),
    ("/api/analytics/stats/breakdown", {"property": "source", "period": "7d",
                                        "metrics": "visitors,visits,pageviews,bounce_rate"}),
]


def rollup(pid: int) -> dict[str, float]:
    """File-backed and anonymous PSS of one process, MB (smaps_rollup)."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts[0] in ("Pss_File:", "Pss_Anon:", "Pss_Shmem:", "Rss:"):
            fields[parts[0][:-1].lower()] = round(int(parts[1]) / 1024, 1)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            fields["rss_file"] = round(int(line.split()[1]) / 1024, 1)
    return fields


def alone_total(memory: dict[str, float], split: dict[str, float]) -> float:
    """The total as on a laptop running one stack: the analytics process's file-backed pages counted
    whole (RSS). PSS splits chDB's code pages with any other process mapping the same `_chdb.abi3.so`
    (another stack, a test run), which makes the PSS total look smaller than a lone user's."""
    return round(memory["total"] - memory.get("analytics", 0.0) + split["rss_file"] + split["pss_anon"]
                 + split.get("pss_shmem", 0.0), 1)


def snapshot(stack: Stack) -> dict[str, Any]:
    assert stack.proc.popen is not None
    memory = stack.memory()
    split = rollup(stack.proc.popen.pid)
    threads = sum(p.num_threads() for p in stack.processes())
    return {"pss_mb": memory, "total_alone_mb": alone_total(memory, split), "analytics_memory_mb": split,
            "threads": threads}


def dashboard_reads(http: httpx.Client, base: str, key: str, fresh: bool = True) -> int:
    """One dashboard opening; uncached (no-cache) so ClickHouse computes each answer. Returns failures."""
    headers = {"x-api-key": key, **({"cache-control": "no-cache"} if fresh else {})}
    failed = 0
    for path, params in DASHBOARD:
        r = http.get(base + path, params=params, headers=headers)
        failed += r.status_code != 200
    return failed


def wait_for_key(http: httpx.Client, base: str, app: dict[str, Any]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        collect = http.post(f"{base}/api/analytics/collect", json=EVENT, headers={"x-api-key": app["write_key"]})
        read = http.get(f"{base}/api/analytics/stats/realtime", headers={"x-api-key": app["api_key"]})
        if collect.status_code == 202 and read.status_code == 200:
            return
        time.sleep(0.2)
    raise RuntimeError("the stack never accepted the new app's keys")


def show(label: str, snap: dict[str, Any]) -> None:
    pss = snap["pss_mb"]
    total = snap["total_alone_mb"]
    parts = ", ".join(f"{name} {mb:.0f}" for name, mb in pss.items() if name != "total")
    split = snap["analytics_memory_mb"]
    goal = f" (goal idle <= {GOAL_IDLE_MB} MB: {'met' if total <= GOAL_IDLE_MB else 'NOT met'})" if label == "idle" else ""
    print(f"  {label:<11} total {total:7.1f} MB as alone (PSS {pss['total']:.1f} MB){goal}\n"
          f"              PSS by process: {parts}\n"
          f"              analytics: file-backed RSS {split['rss_file']:.0f} MB (PSS {split['pss_file']:.0f}), "
          f"anonymous {split['pss_anon']:.0f} MB; "
          f"{snap['threads']} threads in the stack", flush=True)


def private_chdb() -> tuple[dict[str, str], Path | None]:
    """BENCH_FOOTPRINT_PRIVATE_CHDB=1: the stack imports chDB from a copy of its files, so its pages are
    its own, as on a laptop: on a machine where other processes map the installed `_chdb.abi3.so`, PSS
    splits those pages and the kernel keeps them resident for the others (MADV_PAGEOUT leaves shared
    pages alone). Returns the environment for the stack and the copy's dir (removed when done)."""
    if os.environ.get("BENCH_FOOTPRINT_PRIVATE_CHDB") != "1":
        return {}, None
    import chdb

    site = Path(chdb.__file__).resolve().parent.parent
    copy = Path(tempfile.mkdtemp(prefix="bench-chdb-"))
    for name in ("chdb", "chdb_core.libs"):
        shutil.copytree(site / name, copy / name)
    for info in site.glob("chdb*.dist-info"):
        shutil.copytree(info, copy / info.name)
    print(f"  chDB imported from a private copy in {copy}", flush=True)
    return {"PYTHONPATH": os.pathsep.join([str(copy), os.environ.get("PYTHONPATH", "")])}, copy


def main() -> dict[str, Any]:
    if wrk_available() is None:
        raise RuntimeError("wrk is not installed: `apt-get install wrk` (make bench does it when run as root)")
    print("footprint benchmark: starting `analytics run` with every engine embedded ...", flush=True)
    started = time.monotonic()
    env, copy = private_chdb()
    try:
        stack = Stack.start(INGEST_RATE_LIMIT="10000000/second", **env)
    except BaseException:
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)
        raise
    try:
        ready_s = time.monotonic() - started
        at_ready = snapshot(stack)
        show("at ready", at_ready)
        with httpx.Client(timeout=60) as http:
            app = register_app(http, stack.base)
            wait_for_key(http, stack.base, app)
            for _ in range(3):
                failed = dashboard_reads(http, stack.base, app["api_key"])
                if failed:
                    raise RuntimeError(f"{failed} dashboard reads failed; the numbers would not mean anything")
            time.sleep(IDLE_SETTLE_S)
            idle = snapshot(stack)
            show("idle", idle)

            stop = threading.Event()
            samples: list[dict[str, Any]] = []
            reads = [0, 0]  # done, failed

            def sample() -> None:
                while not stop.wait(1.0):
                    samples.append(snapshot(stack))

            def read_loop() -> None:
                with httpx.Client(timeout=60) as reader:
                    while not stop.is_set():
                        reads[1] += dashboard_reads(reader, stack.base, app["api_key"])
                        reads[0] += len(DASHBOARD)

            threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=read_loop, daemon=True)]
            for t in threads:
                t.start()
            result = run_wrk(f"{stack.base}/api/analytics/collect", orjson.dumps(EVENT),
                             {"content-type": "application/json", "user-agent": UA, "x-api-key": app["write_key"]},
                             LOAD_S, CONNECTIONS)
            stop.set()
            for t in threads:
                t.join(120)
            loaded = max(samples, key=lambda s: s["total_alone_mb"])
            show("under load", loaded)
            print(f"              load: {result.requests_per_s:,.0f} collect requests/s over {LOAD_S}s "
                  f"({result.non_2xx + result.errors} failed), {reads[0]} dashboard reads ({reads[1]} failed)",
                  flush=True)
            time.sleep(IDLE_SETTLE_S)
            after = snapshot(stack)
            show("after load", after)
        out = {
            "goal": {"idle_total_alone_mb": idle["total_alone_mb"], "goal_mb": GOAL_IDLE_MB,
                     "met": idle["total_alone_mb"] <= GOAL_IDLE_MB},
            "ready_s": round(ready_s, 1),
            "at_ready": at_ready,
            "idle": {**idle, "settle_s": IDLE_SETTLE_S, "goal_mb": GOAL_IDLE_MB},
            "under_load": {**loaded, "seconds": LOAD_S, "collect_requests_per_s": round(result.requests_per_s),
                           "collect_failed": result.non_2xx + result.errors, "dashboard_reads": reads[0],
                           "dashboard_reads_failed": reads[1], "wrk_connections": CONNECTIONS},
            "idle_after_load": after,
            "measured": "PSS (shared pages split between the processes mapping them) of `analytics run` and every "
                        "process it started; total_alone_mb counts the analytics process's file-backed pages whole "
                        "(RSS), as on a laptop where no other process maps chDB; under load: the highest total "
                        "sampled once a second",
            "private_chdb_copy": os.environ.get("BENCH_FOOTPRINT_PRIVATE_CHDB") == "1",
            "cpus": os.cpu_count(),
        }
        write_result("footprint", out)
        return out
    finally:
        stack.stop()
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    main()
