"""`analytics status` and `GET /status`, run as an operator runs them (a subprocess) against services
served on real ports and the real broker: the groups' members, partitions, offsets, lag and owners;
each service's readiness; a group with lag and no member, a service not ready and a URL nothing
answers on are reported and make the exit code 1. In process (the session's stack and stacks of
their own), and end to end against `analytics run` as a user starts it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition

from libs.embedded.procs import free_port
from libs.kafka import (
    AGGREGATOR_GROUP,
    EMAIL_TOPIC,
    EVENTS_TOPIC,
    REPORT_RUNS_TOPIC,
    REPORT_SUBSCRIPTIONS_TOPIC,
    ensure_topics,
    group_reader,
)
from libs.runtime import Stack
from libs.settings import Settings
from services import aggregator, auth, gateway
from tests.conftest import eventually, register_app, serving, signup_login
from tests.e2e import clean_env, port, running, stop_and_check_nothing_left
from tests.services.aggregator.test_aggregator import enriched, wait_count

ROOT = Path(__file__).resolve().parents[2]


async def status(
    settings: Settings, *urls: str, as_json: bool = False, groups: tuple[str, ...] = (), kafka: bool = True
) -> tuple[int, str]:
    """`analytics status [--kafka ...] --url ... [--group ...] [--json]` as a subprocess, with
    KAFKA_BOOTSTRAP_SERVERS unset: (exit code, stdout)."""
    args = ["status", "--kafka", settings.kafka_bootstrap_servers or ""] if kafka else ["status"]
    args += [a for url in urls for a in ("--url", url)] + [a for g in groups for a in ("--group", g)]
    args += ["--json"] if as_json else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    assert not err.strip() or proc.returncode, err.decode()
    return proc.returncode, out.decode()


def lines(text: str) -> list[str]:
    """The output's lines, runs of spaces (table padding) made one."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def group(report: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [g for g in report["groups"] if g["group"] == name]
    return found


@pytest.fixture
async def served(stack: Stack) -> AsyncIterator[str]:
    async with serving(stack.app()) as url:
        yield url


@pytest.fixture
async def own_topic(stack: Stack) -> str:
    topic = f"test.status.{uuid.uuid4().hex[:8]}"
    await ensure_topics(stack.settings.model_copy(update={"kafka_partitions": 2}), (topic,))
    return topic


@pytest.mark.engines
async def test_a_group_with_lag_and_no_member_then_its_aggregator_shows_members_owners_and_lag_back_to_0(
    client: httpx.AsyncClient, stack: Stack, served: str, own_topic: str
) -> None:
    settings, topic, own_group = stack.settings, own_topic, f"g-{own_topic}"
    app = await register_app(client, await signup_login(client), "status-test")
    producer = await stack.runtime.producer()
    for _ in range(5):
        sent = await producer.send_and_wait(topic, enriched(app["app_id"]), key=app["app_id"].encode())
    busy, idle = sent.partition, 1 - sent.partition
    # A group that once committed (offset 0) and has no member now: what a stopped aggregator leaves.
    async with group_reader(settings, own_group) as reader:
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        reader.assign(tps)
        await reader.commit(dict.fromkeys(tps, 0))

    code, out = await status(settings, served)
    assert code == 1, out
    shown = lines(out)
    assert f"{own_group}: state Empty, 0 member(s), lag 5" in shown, out
    assert f"{topic} {busy} 5 0 5 none known" in shown, out
    assert f"{topic} {idle} 0 0 0 none known" in shown, out
    assert f"group {own_group}: 5 messages wait and no member reads them: start its consumer" in shown, out

    agg = Stack(settings, [aggregator.service(topic, own_group)])
    async with agg, serving(agg.app()) as agg_url:
        await wait_count(client, app["api_key"], 5, timeout=30)

        async def caught_up() -> bool:
            code, out = await status(settings, served, agg_url, as_json=True, groups=(own_group,))
            report = json.loads(out)
            assert [g["group"] for g in report["groups"]] == [own_group], out  # only the group asked for
            return code == 0 and group(report, own_group)["lag"] == 0

        await eventually(caught_up, 30, "the group's lag never came back to 0")
        code, out = await status(settings, served, agg_url)
        assert code == 0, out
        report = json.loads((await status(settings, served, agg_url, as_json=True))[1])

    shown = lines(out)
    (member,) = group(report, own_group)["members"]
    member_id = member["member_id"]
    assert member == {"member_id": member_id, "where": f"aggregator at {agg_url}",
                      "partitions": [f"{topic}[0]", f"{topic}[1]"]}
    assert f"{own_group}: state Stable, 1 member(s), lag 0" in shown, out
    assert f"member {member_id}: aggregator at {agg_url}" in shown, out
    assert f"{topic} {busy} 5 5 0 aggregator at {agg_url}" in shown, out
    assert f"{topic} {idle} 0 0 0 aggregator at {agg_url}" in shown, out
    # The whole stack's aggregator: one member, reported by the stack's URL, owning every partition.
    ours = group(report, AGGREGATOR_GROUP)
    assert [p["partition"] for p in ours["partitions"]] == [0, 1, 2]
    assert {(p["topic"], p["where"]) for p in ours["partitions"]} == {(EVENTS_TOPIC, f"aggregator at {served}")}
    # (Exactly one member, unless an earlier test's member of it is still listed: Tansu keeps one a while.)
    assert f"aggregator at {served}" in [m["where"] for m in ours["members"]]
    assert f"{served} auth, gateway, query, aggregator, notifier ready" in shown, out
    assert f"{agg_url} aggregator ready" in shown, out
    assert f"{topic} group {own_group}: partitions 0 (lag 0), 1 (lag 0)" in shown, out
    assert "Problems" not in out
    (agg_status,) = [s for s in report["services"] if s["url"] == agg_url]
    assert agg_status["consumers"] == [{
        "service": "aggregator", "topic": topic, "group": own_group, "member_id": member_id,
        "partitions": [{"partition": 0, "lag": 0}, {"partition": 1, "lag": 0}], "paused": False,
    }]


@pytest.mark.engines
async def test_a_service_not_ready_and_a_url_nothing_answers_on_are_problems(engines: Settings, stack: Stack) -> None:
    nowhere = f"redis://127.0.0.1:{free_port(16379)}/0"  # nothing listens there
    dead = f"http://127.0.0.1:{free_port()}"
    async with Stack(engines.model_copy(update={"redis_url": nowhere}), [auth.SERVICE]) as lone, \
            serving(lone.app()) as url:
        code, out = await status(engines, url, dead)
    assert code == 1, out
    shown = lines(out)
    assert f"{url} auth not ready (failing: redis)" in shown, out
    assert any(line.startswith(f"{dead} unreachable (ConnectError") for line in shown), out
    assert f"{url} (auth) is not ready: failing redis" in shown, out


@pytest.mark.engines
async def test_nothing_answering_and_no_broker_says_what_to_pass(engines: Settings) -> None:
    closed = f"127.0.0.1:{free_port()}"
    code, out = await status(engines.model_copy(update={"kafka_bootstrap_servers": closed}), f"http://{closed}")
    assert code == 1, out
    shown = lines(out)
    assert f"Consumer groups (Kafka at {closed})" in shown, out
    assert "not read: see Problems below" in shown, out
    (problem,) = [line for line in shown if line.startswith(f"Kafka at {closed}: ")]
    assert problem.startswith(f"Kafka at {closed}: could not read the consumer groups (KafkaConnectionError: Unable to bootstrap"), out
    assert problem.endswith("); is the broker up, and is this its address?"), out
    assert f"http://{closed}: unreachable (ConnectError: All connection attempts failed)" in shown, out


@pytest.mark.engines
async def test_without_kafka_given_it_asks_the_broker_the_services_use(engines: Settings, stack: Stack) -> None:
    # The same broker under another name than the test's own settings (and than the fallback) give.
    spelled = (engines.kafka_bootstrap_servers or "").replace("127.0.0.1", "localhost")
    async with Stack(engines.model_copy(update={"kafka_bootstrap_servers": spelled}), [gateway.SERVICE]) as lone, \
            serving(lone.app()) as url:
        code, out = await status(engines, url, kafka=False, groups=(AGGREGATOR_GROUP,))
    assert code == 0, out
    shown = lines(out)
    assert f"Consumer groups (Kafka at {spelled})" in shown, out
    assert f"{url} gateway ready" in shown, out
    assert [line for line in shown if line.startswith(f"{EVENTS_TOPIC} ")], out  # the group's partitions were read


@pytest.mark.e2e
def test_status_of_analytics_run_as_a_user_starts_it(tmp_path: Path) -> None:
    """`analytics run` on a fresh machine (embedded engines), then `analytics status --url` with
    nothing else set: the broker is the one the service says it uses, every group has its one member
    owning all six partitions (KAFKA_PARTITIONS' default), and the service is ready."""
    p = port()
    base = f"http://127.0.0.1:{p}"
    env = clean_env(tmp_path / "d")
    with running("run", "--port", str(p), env=env, log=tmp_path / "run.log", base=base) as proc:
        done = subprocess.run([sys.executable, "-m", "services.cli", "status", "--url", base], cwd=ROOT,
                              env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
        assert stop_and_check_nothing_left(proc, signal.SIGINT) == 0
    assert done.returncode == 0, done.stdout + done.stderr
    shown = lines(done.stdout)
    kafka = [line for line in shown if line.startswith("Consumer groups (Kafka at 127.0.0.1:")]
    assert kafka, done.stdout
    for name, topic, service in [("aggregator", EVENTS_TOPIC, "aggregator"), ("notifier", EMAIL_TOPIC, "notifier"),
                                 ("auth-report-runs", REPORT_RUNS_TOPIC, "auth"),
                                 ("query-report-subscriptions", REPORT_SUBSCRIPTIONS_TOPIC, "query")]:
        assert f"{name}: state Stable, 1 member(s), lag 0" in shown, done.stdout
        owned = [line for line in shown if line.startswith(f"{topic} ") and line.endswith(f" {service} at {base}")]
        assert len(owned) == 6, done.stdout
    assert f"{base} auth, gateway, query, aggregator, notifier ready" in shown, done.stdout
    assert "Problems" not in done.stdout
