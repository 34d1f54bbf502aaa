"""The README's one-process-per-service recipe, run as written (`analytics infra` and one
`analytics run --services <one>` per service, with infra's exports), then scaled out on the same
machine: more gateways and aggregators, one aggregator SIGKILLed mid-stream and one added while events
flow. Both tests share one infra and the recipe's five processes (module scope): each process start
costs seconds of CPU.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path

import httpx
import pytest
from aiokafka.partitioner import murmur2

from libs.kafka import AGGREGATOR_GROUP, EVENTS_TOPIC, group_backlog, group_reader
from libs.settings import Settings
from tests.e2e import analytics, clean_env, descendants, port, read_exports, stop_and_check_nothing_left, wait_ready
from tests.system.slice_http import PASSWORD, run_slice
from tests.system.test_readme import readme_block

pytestmark = pytest.mark.e2e

SERVICES = ("gateway", "auth", "query", "aggregator", "notifier")
PARTITIONS = 6
# A SIGKILLed aggregator keeps its partitions this long (a documented setting; 10 s by default).
SESSION_TIMEOUT_MS = 3000
RECIPE_QUERY_PORT = 8003  # where the recipe's query service (and dashboard) listens without --port


def recipe_commands() -> list[list[str]]:
    """The `analytics ...` commands of the README's recipe, in order, comments stripped."""
    block = readme_block("### Services in separate processes")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("analytics ")]


@dataclass
class Platform:
    """infra and the services' processes, each `analytics` as a user starts it."""

    dir: Path
    env: dict[str, str]
    exports: dict[str, str]
    infra: subprocess.Popen[str]
    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)

    def start(self, name: str, *args: str, at: int | None = None) -> str:
        """`analytics run *args --port P` as `name`, not waited for; returns its base URL. The port is
        the only addition to a README command: a fixed port could be taken on a shared machine."""
        p = at or port()
        self.procs[name] = analytics(*args, "--port", str(p), env=self.env, log=self.log(name))
        self.bases[name] = f"http://127.0.0.1:{p}"
        return self.bases[name]

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def wait_ready(self, *names: str, timeout: float = 90) -> None:
        for name in names:
            wait_ready(self.bases[name], self.procs[name], self.log(name), timeout)

    def kafka_settings(self) -> Settings:
        return Settings(kafka_bootstrap_servers=self.exports["KAFKA_BOOTSTRAP_SERVERS"])


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The README recipe: infra, then one process per service with infra's exports pasted."""
    commands = recipe_commands()
    assert commands[0] == ["analytics", "infra"], commands
    runs = commands[1:]
    assert all(c[:3] == ["analytics", "run", "--services"] and len(c) == 4 for c in runs), runs
    assert sorted(c[3] for c in runs) == sorted(SERVICES), "the recipe runs each service once, one per shell"

    tmp = tmp_path_factory.mktemp("recipe")
    data = tmp / "d"
    infra = analytics(*commands[0][1:], env=clean_env(data, KAFKA_PARTITIONS=str(PARTITIONS)), log=tmp / "infra.log")
    platform: Platform | None = None
    try:
        exports = read_exports(infra, tmp / "infra.log")
        assert {"KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL", "DATABASE_URL", "REDIS_URL", "SMTP_URL"} <= set(exports)
        ports = {c[3]: port() for c in runs}
        # The same edit in the exports: mail links point at the dashboard, on the recipe's query port.
        recipe_dashboard = f"http://127.0.0.1:{RECIPE_QUERY_PORT}"
        assert exports.get("PUBLIC_BASE_URL") == recipe_dashboard, f"infra exported {exports}"
        exports["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{ports['query']}"
        env = clean_env(data, **exports, AGGREGATOR_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS))
        env["LOG_LEVEL"] = "WARNING"
        platform = Platform(tmp, env, exports, infra)
        for command in runs:
            platform.start(command[3], *command[1:], at=ports[command[3]])
        platform.wait_ready(*(c[3] for c in runs))
        yield platform
        live = [name for name, proc in platform.procs.items() if proc.poll() is None]
        with ThreadPoolExecutor(len(live)) as pool:  # as Ctrl-C in every shell at once
            codes = list(pool.map(lambda name: stop_and_check_nothing_left(platform.procs[name], signal.SIGTERM), live))
        for name, code in zip(live, codes, strict=True):
            assert code == 0, f"{name} exited with {code}:\n{platform.log(name).read_text()[-3000:]}"
        assert stop_and_check_nothing_left(infra, signal.SIGINT) == 0
        said = infra.stdout.read() if infra.stdout else ""
        assert "nothing left in Kafka" in said, said
    finally:
        for proc in [*(platform.procs.values() if platform else ()), infra]:
            if proc.poll() is None:
                for child in descendants(proc.pid):
                    child.kill()
                proc.kill()


def test_readme_recipe_one_process_per_service_does_the_slice(platform: Platform) -> None:
    b = platform.bases
    done = run_slice(b["auth"], b["gateway"], b["query"])
    # A route belongs only to its own service's process.
    assert httpx.get(f"{b['gateway']}/api/analytics/event-summary").status_code == 404
    assert httpx.post(f"{b['query']}/api/analytics/collect", json={}).status_code in (404, 405)
    assert httpx.post(f"{b['aggregator']}/api/user/login", json={}).status_code in (404, 405)
    # The welcome mail went auth -> Kafka -> notifier -> the SMTP sink (files in the data dir).
    address = f"{done['username']}@example.com"
    mail_dir = Path(platform.env["ANALYTICS_DATA_DIR"]) / "mail"
    deadline = time.monotonic() + 20
    while not (welcome := welcome_mails(mail_dir, address)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert welcome, f"no welcome mail to {address} in {mail_dir} after 20s; notifier log:\n{platform.log('notifier').read_text()[-3000:]}"
    # Its link leads to the dashboard, though the notifier that wrote it runs apart from the query service.
    links = re.findall(r"https?://[^\s\"'<>]+/dashboard", welcome[0])
    assert links == [f"{b['query']}/dashboard"] * len(links) and links, welcome[0]
    assert httpx.get(links[0]).status_code == 200


def welcome_mails(mail_dir: Path, address: str) -> list[str]:
    """The plain-text bodies of the welcome mails to `address`."""
    mails = [message_from_bytes(path.read_bytes(), policy=policy.default) for path in mail_dir.glob("*.eml")]
    welcome = [m for m in mails if address in str(m["to"]) and "welcome" in str(m["subject"]).lower()]
    return [body.get_content() for m in welcome if (body := m.get_body(("plain",))) is not None]


# ---- scale-out on one machine ------------------------------------------------------------------


@dataclass
class Stream:
    """Events sent round-robin to every gateway for every app while `running`; only 202s count."""

    gateways: list[str]
    apps: list[dict[str, str]]
    acked: dict[str, int] = field(default_factory=dict)  # app id -> events acknowledged
    refused: list[str] = field(default_factory=list)  # answers other than 202 (retried)
    lost: list[str] = field(default_factory=list)  # batches never acknowledged
    per_gateway: dict[str, int] = field(default_factory=dict)
    running: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: bool = False

    @property
    def total(self) -> int:
        return sum(self.acked.values())

    async def send(self, http: httpx.AsyncClient, gateway: str, app: dict[str, str], events: list[dict[str, str]]) -> int:
        try:
            r = await http.post(f"{gateway}/api/analytics/collect", json={"events": events},
                                headers={"x-api-key": app["write_key"]})
        except httpx.HTTPError as exc:
            self.refused.append(f"{gateway}: {exc!r}")
            return 0
        if r.status_code == 202:
            accepted = int(r.json()["accepted"])
            self.acked[app["app_id"]] = self.acked.get(app["app_id"], 0) + accepted
            self.per_gateway[gateway] = self.per_gateway.get(gateway, 0) + accepted
        elif r.status_code != 401:  # 401: a new key has not reached this gateway yet
            self.refused.append(f"{gateway}: {r.status_code} {r.text[:200]}")
        return r.status_code

    async def worker(self, http: httpx.AsyncClient, offset: int) -> None:
        """Batches of 20; a batch refused (a 503 when Kafka is slow to acknowledge) is sent again with
        the same event ids, as the SDKs do, to the next gateway, until one acknowledges it."""
        pairs = [(g, a) for a in self.apps for g in self.gateways]
        i = offset
        while not self.stopped:
            await self.running.wait()
            if self.stopped:
                return
            app = pairs[i % len(pairs)][1]
            events = [scale_event(n) for n in range(20)]
            for attempt in range(10):
                if await self.send(http, pairs[(i + attempt) % len(pairs)][0], app, events) == 202:
                    break
                await asyncio.sleep(0.2)
            else:
                self.lost.append(f"app {app['app_id']}: 20 events never acknowledged in 10 tries")
            i += 1
            await asyncio.sleep(0.01)


def scale_event(n: int) -> dict[str, str]:
    return {"event": "scale", "event_id": uuid.uuid4().hex, "userId": f"u{n % 7}", "device": "desktop"}


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, message: Callable[[], str]) -> None:
    """Poll `check` until it is true; else fail with `message()` (it tells the state seen last)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:g}s: {message()}")
        await asyncio.sleep(0.25)


async def inserted(http: httpx.AsyncClient, base: str) -> float:
    """Rows this aggregator process inserted, from its /metrics."""
    text = (await http.get(f"{base}/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("aggregator_rows_inserted_total{"))


async def apps_on_every_partition(http: httpx.AsyncClient, auth: str) -> list[dict[str, str]]:
    """One account's apps, registered until their ids (the message key) cover every partition:
    events of one app stay on one partition, so one app would keep all but one aggregator idle."""
    name = f"scale{uuid.uuid4().hex[:8]}"
    r = await http.post(f"{auth}/api/user/signup", json={"username": name, "email": f"{name}@example.com", "password": PASSWORD})
    assert r.status_code == 201, r.text
    r = await http.post(f"{auth}/api/user/login", json={"username": name, "password": PASSWORD})
    bearer = {"authorization": f"Bearer {r.json()['access_token']}"}
    apps: dict[int, dict[str, str]] = {}
    for i in range(60):
        r = await http.post(f"{auth}/api/auth/register", json={"name": f"site {i}"}, headers=bearer)
        assert r.status_code == 201, r.text
        app = r.json()
        apps.setdefault((murmur2(app["app_id"].encode()) & 0x7FFFFFFF) % PARTITIONS, app)
        if len(apps) == PARTITIONS:
            return list(apps.values())
    raise AssertionError(f"60 apps covered only partitions {sorted(apps)}")


async def group_lag(settings: Settings) -> int:
    async with group_reader(settings, AGGREGATOR_GROUP) as reader:
        return await group_backlog(reader, EVENTS_TOPIC)


async def test_scale_out_two_gateways_aggregators_killed_and_added_count_every_acknowledged_event(
    platform: Platform,
) -> None:
    started = time.monotonic()
    kafka = platform.kafka_settings()
    # The recipe's gateway and aggregator are the first of each; more in more shells, each on its own port.
    for name, service in (("gateway-2", "gateway"), ("aggregator-2", "aggregator"), ("aggregator-3", "aggregator")):
        platform.start(name, "run", "--services", service)
    aggregators = ["aggregator", "aggregator-2", "aggregator-3"]
    async with httpx.AsyncClient(timeout=10) as http:
        before = await inserted(http, platform.bases["aggregator"])  # the first test's events
        apps = await apps_on_every_partition(http, platform.bases["auth"])
        await asyncio.to_thread(platform.wait_ready, "gateway-2", "aggregator-2", "aggregator-3")
        stream = Stream([platform.bases["gateway"], platform.bases["gateway-2"]], apps)

        async def every_key_accepted() -> bool:  # new keys reach each gateway over Kafka
            statuses = [await stream.send(http, g, a, [scale_event(0)]) for a in apps for g in stream.gateways]
            return all(s == 202 for s in statuses)

        await eventually(every_key_accepted, 15, lambda: "a gateway still refuses a new write key")
        workers = [asyncio.create_task(stream.worker(http, k)) for k in range(3)]
        stream.running.set()
        try:
            bases = {name: platform.bases[name] for name in aggregators}

            async def all_three_storing() -> bool:
                return all([await inserted(http, b) > 0 for b in bases.values()])

            await eventually(all_three_storing, 30, lambda: f"not every aggregator stored events: {aggregators}")
            print(f"three aggregators storing after {time.monotonic() - started:.1f}s, {stream.total} acked")

            # SIGKILL one mid-stream: no flush, no commit, no leaving the group.
            victim = platform.procs["aggregator-2"]
            by_victim = await inserted(http, platform.bases["aggregator-2"])  # at least this much
            victim.kill()
            victim.wait(10)
            killed_at = time.monotonic()
            left_at_kill = await group_lag(kafka)
            await asyncio.sleep(1)  # events keep arriving for the dead member's partitions
            stream.running.clear()
            assert left_at_kill > 0, "the kill landed when everything was committed; it proved nothing"

            # The others take its partitions over (after the session timeout) and store what it held.
            lag = [-1]

            async def caught_up() -> bool:
                lag[0] = await group_lag(kafka)
                return lag[0] == 0

            await eventually(caught_up, 30, lambda: f"the group's lag is {lag[0]} with two aggregators left")
            print(f"taken over {time.monotonic() - killed_at:.1f}s after the kill ({left_at_kill} uncommitted then)")

            # A fourth joins while events flow, and gets partitions of its own.
            stream.running.set()
            platform.start("aggregator-4", "run", "--services", "aggregator")
            await asyncio.to_thread(platform.wait_ready, "aggregator-4")
            fourth = platform.bases["aggregator-4"]

            async def fourth_storing() -> bool:
                return await inserted(http, fourth) > 0

            await eventually(fourth_storing, 30, lambda: "the fourth aggregator stored nothing")
            await asyncio.sleep(1)
        finally:
            stream.stopped = True
            stream.running.set()
            await asyncio.gather(*workers, return_exceptions=True)
        assert not stream.lost, f"{len(stream.lost)} batches lost, e.g. {stream.lost[:3]}; refusals: {stream.refused[:5]}"
        if stream.refused:
            print(f"{len(stream.refused)} requests refused and sent again, e.g. {stream.refused[:3]}")
        assert all(stream.per_gateway.get(g, 0) > 0 for g in stream.gateways), stream.per_gateway

        # Every acknowledged event is counted once, per app, and the group has nothing left.
        counts: dict[str, int] = {}

        async def all_counted() -> bool:
            for app in apps:
                r = await http.get(f"{platform.bases['query']}/api/analytics/events/count",
                                   headers={"x-api-key": app["api_key"], "cache-control": "no-cache"})
                assert r.status_code == 200, r.text
                counts[app["app_id"]] = int(r.json()["count"])
                assert counts[app["app_id"]] <= stream.acked[app["app_id"]], f"duplicates counted: {counts} > {stream.acked}"
            return counts == stream.acked

        await eventually(all_counted, 60, lambda: f"counted {counts}, acknowledged {stream.acked}")
        await eventually(caught_up, 30, lambda: f"the group's lag is {lag[0]}")
        # What an operator sees: `analytics status` on the three live aggregators.
        live = [platform.bases[n] for n in ("aggregator", "aggregator-3", "aggregator-4")]
        shown = [""]

        async def status_says_caught_up() -> bool:
            args = ["status", "--kafka", platform.exports["KAFKA_BOOTSTRAP_SERVERS"], "--group", AGGREGATOR_GROUP]
            for base in live:
                args += ["--url", base]
            done = await asyncio.to_thread(
                subprocess.run, [str(Path(sys.executable).parent / "analytics"), *args],
                env=platform.env, capture_output=True, text=True, timeout=60,
            )
            shown[0] = done.stdout + done.stderr
            return done.returncode == 0 and f"{AGGREGATOR_GROUP}: state Stable, 3 member(s), lag 0" in done.stdout

        await eventually(status_says_caught_up, 30, lambda: f"analytics status said:\n{shown[0]}")
        for app in apps:
            r = await http.get(f"{platform.bases['query']}/api/analytics/event-summary", params={"event": "scale"},
                               headers={"x-api-key": app["api_key"]})
            assert r.status_code == 200 and r.json()["count"] == stream.acked[app["app_id"]], r.text
        # More rows inserted than events: the survivors inserted again what the victim had stored but
        # not committed (and refused requests sent again), and the counts above show no copy.
        survivors = [await inserted(http, platform.bases[n]) for n in ("aggregator", "aggregator-3", "aggregator-4")]
        print(f"rows inserted by the aggregators: {sum(survivors) + by_victim - before:.0f} (the killed one: at least "
              f"{by_victim:.0f}) for {stream.total} events")
    print(f"scale-out: {stream.total} events acknowledged ({stream.per_gateway}), all counted, "
          f"in {time.monotonic() - started:.1f}s")
