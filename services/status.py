"""`analytics status`: what an operator looks at before scaling, for a running deployment.

From Kafka: every consumer group the broker lists and the platform's own (libs.kafka.GROUP_TOPICS),
each with its state, its members and, per partition of the topics it reads, the end offset, the
group's committed offset, the lag between them and the member that owns the partition. From each
service URL: its `GET /status` (readiness with every check, and the Kafka consumers of that process:
group, member id, partitions owned, and their lag as the consumer itself sees it).

A partition's owner comes from the broker's description of the group when it gives one (Kafka does;
the embedded broker, Tansu, sends no assignment), else from the services' /status answers, matched
by member id. A member the broker lists that no service reported is shown as such: it runs in a
process that was not asked (another host: pass its --url), or it has left and the broker has not
noticed yet (Tansu keeps a stopped member listed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from libs.kafka import (
    AGGREGATOR_GROUP,
    APP_DELETIONS_GROUP,
    GROUP_TOPICS,
    NOTIFIER_GROUP,
    REPORT_RUNS_GROUP,
    REPORT_SUBSCRIPTIONS_GROUP,
    GroupDescription,
    committed_offsets,
    describe_groups,
    end_offsets,
    group_reader,
    topic_partitions,
)
from libs.settings import Settings

# The service whose members make up each of the platform's groups (what to start when one has none).
GROUP_SERVICES = {
    AGGREGATOR_GROUP: "aggregator",
    NOTIFIER_GROUP: "notifier",
    REPORT_RUNS_GROUP: "auth",
    REPORT_SUBSCRIPTIONS_GROUP: "query",
    APP_DELETIONS_GROUP: "query",
}


@dataclass
class ServiceStatus:
    """One URL's answer to GET /status."""

    url: str
    reachable: bool
    error: str | None = None  # why it could not be read
    services: list[str] = field(default_factory=list)
    ready: bool = False
    failing: list[str] = field(default_factory=list)  # the readiness checks that failed
    kafka: str | None = None  # the bootstrap servers it uses
    consumers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def problem(self) -> str | None:
        if not self.reachable:
            return f"{self.url}: {self.error}"
        if not self.ready:
            return f"{self.url} ({', '.join(self.services)}) is not ready: failing {', '.join(self.failing) or 'checks'}"
        return None


@dataclass
class PartitionStatus:
    topic: str
    partition: int
    end: int  # the offset the next message will get
    committed: int | None  # the group's committed offset; None: never committed
    lag: int  # messages before `end` the group has not committed
    owner: str | None  # member id of the member that owns it, when known
    where: str | None  # the service and URL that reported that member


@dataclass
class MemberStatus:
    member_id: str
    where: str | None  # "aggregator at http://...": the service and URL that reported it; None: none did
    partitions: list[str]  # "topic[p]" it owns, when known


@dataclass
class GroupStatus:
    group: str
    state: str
    members: list[MemberStatus]
    partitions: list[PartitionStatus]
    lag: int
    problem: str | None = None


@dataclass
class Report:
    kafka: str
    kafka_error: str | None
    groups: list[GroupStatus]
    services: list[ServiceStatus]

    @property
    def problems(self) -> list[str]:
        found = [f"Kafka at {self.kafka}: {self.kafka_error}"] if self.kafka_error else []
        found += [f"group {g.group}: {g.problem}" for g in self.groups if g.problem]
        found += [p for s in self.services if (p := s.problem)]
        return found

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "problems": self.problems}


async def read_service(http: httpx.AsyncClient, url: str) -> ServiceStatus:
    """GET `url`/status; an unreachable or unreadable service is said so, never raised."""
    try:
        response = await http.get(f"{url}/status")
    except httpx.HTTPError as exc:
        return ServiceStatus(url, reachable=False, error=f"unreachable ({_described(exc)})")
    if response.status_code != 200:
        return ServiceStatus(url, reachable=False,
                             error=f"GET /status answered {response.status_code}; is this an analytics service?")
    try:
        body = response.json()
        checks: dict[str, bool] = body["checks"]
        return ServiceStatus(
            url, reachable=True, services=list(body["services"]), ready=body["status"] == "ready",
            failing=[name for name, ok in checks.items() if not ok], consumers=list(body["consumers"]),
            kafka=body.get("kafka"),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return ServiceStatus(url, reachable=False, error="GET /status did not answer as an analytics service does")


async def read_services(urls: Sequence[str], skip_unreachable: bool, timeout: float = 5) -> list[ServiceStatus]:
    """Each URL's /status, in order; with `skip_unreachable`, the URLs nothing answers on are left out
    (the default ports probed on localhost)."""
    async with httpx.AsyncClient(timeout=timeout) as http:
        found = await asyncio.gather(*(read_service(http, url.rstrip("/")) for url in urls))
    return [s for s in found if not (skip_unreachable and s.error and s.error.startswith("unreachable"))]


async def read_group(settings: Settings, described: GroupDescription, services: list[ServiceStatus]) -> GroupStatus:
    """Offsets, lag and owners of one group's partitions, from the broker and the services' reports."""
    group = described.group
    reported = {  # member id -> (where, consumer report) from the services' /status
        c["member_id"]: (f"{c['service']} at {s.url}", c)
        for s in services for c in s.consumers if c.get("group") == group and c.get("member_id")
    }
    owners: dict[tuple[str, int], str] = {}
    topics = {GROUP_TOPICS[group]} if group in GROUP_TOPICS else set()
    for member in described.members:
        topics.update(member.topics, member.assignment)
        for topic, parts in member.assignment.items():
            owners.update({(topic, p): member.member_id for p in parts})
    for member_id, (_, consumer) in reported.items():
        topics.add(consumer["topic"])
        for p in consumer["partitions"]:
            owners.setdefault((consumer["topic"], p["partition"]), member_id)
    partitions: list[PartitionStatus] = []
    async with group_reader(settings, group) as reader:
        tps: list[TopicPartition] = []
        for topic in sorted(topics):
            tps += await topic_partitions(reader, topic)
        if not topics:  # a group of someone else's, no member says what it reads: where it committed
            tps = await _committed_somewhere(reader)
        if tps:
            ends = await end_offsets(reader, tps)
            starts = await reader.beginning_offsets(tps)
            done = await committed_offsets(reader, tps)
            for tp in tps:
                owner = owners.get((tp.topic, tp.partition))
                partitions.append(PartitionStatus(
                    tp.topic, tp.partition, ends[tp], done[tp], max(0, ends[tp] - max(done[tp] or 0, starts.get(tp, 0))),
                    owner, reported[owner][0] if owner in reported else None,
                ))
    members = [
        MemberStatus(m.member_id, reported[m.member_id][0] if m.member_id in reported else None,
                     [f"{p.topic}[{p.partition}]" for p in partitions if p.owner == m.member_id])
        for m in described.members
    ]
    lag = sum(p.lag for p in partitions)
    status = GroupStatus(group, described.state, members, partitions, lag)
    if lag and not members:
        who = f"the {GROUP_SERVICES[group]} service" if group in GROUP_SERVICES else "its consumer"
        status.problem = f"{lag} messages wait and no member reads them: start {who}"
    return status


async def _committed_somewhere(reader: AIOKafkaConsumer) -> list[TopicPartition]:
    """The partitions of every topic the reader's group committed an offset on, in one of them."""
    found = []
    for topic in sorted(await reader.topics()):
        tps = await topic_partitions(reader, topic)
        if any(offset is not None for offset in (await committed_offsets(reader, tps)).values()):
            found += tps
    return found


async def gather(
    settings: Settings, urls: Sequence[str], skip_unreachable: bool, groups: Sequence[str] = (), fallback_kafka: str = ""
) -> Report:
    """The whole report: the services first (their reports name the members), then the groups:
    `groups`, or when none are named, the platform's and every group the broker lists. Kafka is
    `settings`'s, else the one the first service answering uses, else `fallback_kafka`."""
    services = await read_services(urls, skip_unreachable)
    used = [s.kafka for s in services if s.kafka]
    kafka = settings.kafka_bootstrap_servers or (used[0] if used else fallback_kafka)
    settings = settings.model_copy(update={"kafka_bootstrap_servers": kafka})
    try:
        described = await describe_groups(settings, groups or GROUP_TOPICS, listed=not groups)
        read = [await read_group(settings, d, services) for d in described]
    except Exception as exc:  # noqa: BLE001 - the services' part of the report still stands
        why = f"could not read the consumer groups ({_described(exc)}); is the broker up, and is this its address?"
        return Report(kafka, why, [], services)
    return Report(kafka, None, read, services)


def _described(exc: BaseException) -> str:
    """`Name: text` of an exception (aiokafka's errors already start with their name)."""
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text or 'no answer'}"


def render(report: Report, console: Console) -> None:
    """The report as tables: groups, then services, then the problems found."""
    console.print(f"[bold]Consumer groups[/bold] (Kafka at {escape(report.kafka)})")
    if report.kafka_error:
        console.print("  [red]not read: see Problems below[/red]")
    for g in report.groups:
        console.print(f"\n[bold]{escape(g.group)}[/bold]: state {escape(g.state)}, {len(g.members)} member(s), lag {g.lag}")
        for m in g.members:
            where = escape(m.where) if m.where else "[yellow]not reported by any service asked[/yellow]"
            console.print(f"  member {escape(m.member_id)}: {where}")
        if g.partitions:
            table = Table("topic", "partition", "end", "committed", "lag", "owner", box=None, padding=(0, 2))
            for p in g.partitions:
                owner = p.where or p.owner or "[yellow]none known[/yellow]"
                committed = "-" if p.committed is None else str(p.committed)
                table.add_row(p.topic, str(p.partition), str(p.end), committed, str(p.lag), owner)
            console.print(table)
    console.print("\n[bold]Services[/bold]")
    if not report.services:
        console.print("  none answered (pass --url http://HOST:PORT for each service process)")
    for s in report.services:
        if not s.reachable:
            console.print(f"  {escape(s.url)}  [red]{escape(s.error or '')}[/red]")
            continue
        state = "[green]ready[/green]" if s.ready else f"[red]not ready[/red] (failing: {escape(', '.join(s.failing))})"
        console.print(f"  {escape(s.url)}  {escape(', '.join(s.services))}  {state}")
        for c in s.consumers:
            owned = ", ".join(f"{p['partition']} (lag {'?' if p['lag'] is None else p['lag']})" for p in c["partitions"])
            console.print(f"    {escape(c['topic'])} group {escape(str(c['group'] or '(none: reads every partition)'))}: "
                          f"partitions {escape(owned or 'none')}")
    if report.problems:
        console.print("\n[bold red]Problems[/bold red]")
        for problem in report.problems:
            console.print(f"  {escape(problem)}")
