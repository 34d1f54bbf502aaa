"""Cluster mode (CLICKHOUSE_CLUSTER, issue #5): the same migrations on a sharded, replicated ClickHouse.

Offline, everywhere: the migrations rendered for a cluster (ON CLUSTER on every DDL statement,
Replicated local tables with their Keeper paths, Distributed tables under the usual names, the
rollup's view on the local tables), the single-server rendering unchanged byte for byte (what chDB and
every existing deployment run and recorded), the settings and the compose example.

Under Docker only (ANALYTICS_TEST_DOCKER=1 and a Docker engine; skipped with the reason otherwise): two
ClickHouse servers as two shards, with Keeper embedded in the first, configured by the files of
deploy/clickhouse/; the migrations applied through the real clickhouse-connect adapter; batches
written by the aggregator's writer (a repeated batch, copies of events in another batch) and counted
by the query service's functions, each event once.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from pydantic import ValidationError

from libs.clickhouse import ClickHouse, ClickHouseError, Schema, connect_clickhouse
from libs.clickhouse.migrate import MIGRATIONS
from libs.migrations import Migration, apply_clickhouse, load
from libs.runtime import Stack
from libs.settings import Settings
from services.aggregator.decode import decode
from services.aggregator.writer import PartitionBatch, write_batches
from tests.containers import docker_available
from tests.system.test_deploy import COMPOSE, ENV_EXAMPLE, read_env_file, referenced_variables, schema_errors

ROOT = Path(__file__).resolve().parents[3]
CLUSTER_CONFIG = ROOT / "deploy" / "clickhouse"
CLUSTER = "analytics"
ON_CLUSTER = f" ON CLUSTER '{CLUSTER}'"

# SHA-256 of the single-server rendering (retention 730 days) of the migrations as released. Deployments
# recorded these checksums in schema_migrations, and chDB runs exactly this SQL: cluster mode must not
# change a byte of it. A new migration gets no entry here; an old one is never edited.
SINGLE_SERVER_SHA256 = {
    "0001_events": "78a04caeeb35180f721d3fe5c5a8262a1490db69299ad9ff162061dd77e464ed",
    "0002_daily_rollup": "8571b52944a037e3dd548e9fa4c27f6cfddef54013e69c508bbf1169c5b89ad5",
    "0003_daily_rollup_counts_event_ids": "23423fbafe397bc8a0b1517a007c44f7229db14f39f5bdd987a1563099b29c11",
}


def rendered(schema: Schema) -> dict[str, Migration]:
    return {f"{m.version:04d}_{m.name}": m for m in load(MIGRATIONS, {"retention_days": 730, "schema": schema})}


def without_comments(statement: str) -> str:
    return "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--")).strip()


def cluster_statements(name: str) -> list[str]:
    return [without_comments(s) for s in rendered(Schema("analytics", CLUSTER))[name].statements()]


# ------------------------------------------------------------------------ offline: rendering


@pytest.mark.parametrize("name", sorted(SINGLE_SERVER_SHA256))
def test_without_a_cluster_the_migrations_render_exactly_as_released(name: str) -> None:
    migration = rendered(Schema())[name]
    assert hashlib.sha256(migration.sql.encode()).hexdigest() == SINGLE_SERVER_SHA256[name], (
        f"{name} renders differently for a single server: cluster branches must leave no trace "
        "(block tags on lines of their own, {# comments #})"
    )
    assert "_local" not in migration.sql and "ON CLUSTER" not in migration.sql


@pytest.mark.parametrize("name", sorted(rendered(Schema())))
def test_every_migration_is_cluster_ready(name: str) -> None:
    """Every migration, present and future: in a cluster each DDL statement runs ON CLUSTER, rows live only
    in Replicated tables named *_local, and views read those (a view over a Distributed table would see
    only the inserts that pass through the node it was created on)."""
    hint = "write it with schema.local(), schema.on_cluster, schema.engine() (libs/clickhouse/schema.py)"
    for statement in cluster_statements(name):
        if re.match(r"(CREATE|ALTER|DROP|RENAME|TRUNCATE)\b", statement):
            assert ON_CLUSTER in statement.splitlines()[0], f"{name}: DDL without ON CLUSTER, {hint}:\n{statement}"
        for table, engine in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+).*?\nENGINE = (\w+)", statement, re.S):
            if engine == "Distributed":
                assert not table.endswith("_local"), statement
            else:
                assert engine.startswith("Replicated") and table.endswith("_local"), f"{name}: {hint}:\n{statement}"
        if statement.startswith("CREATE MATERIALIZED VIEW"):
            sources = re.findall(r"\bFROM (\w+)", statement)
            target = re.search(r"\bTO (\w+)", statement)
            assert sources and all(s.endswith("_local") for s in sources), f"{name}: view over {sources}, {hint}"
            assert target and target.group(1).endswith("_local"), f"{name}: view into {target}, {hint}"


@pytest.mark.engines
@pytest.mark.parametrize("name", sorted(rendered(Schema())))
async def test_every_cluster_statement_parses_in_the_clickhouse_engine(stack: Stack, name: str) -> None:
    """The ClickHouse engine itself (formatQuery: parsed, not run) reads every statement the cluster
    rendering produces: no syntax error can wait for the first deployment on a real cluster."""
    ch = await stack.runtime.clickhouse()
    for statement in cluster_statements(name):
        try:
            await ch.query("SELECT formatQuery({q:String}) AS q", {"q": statement})
        except ClickHouseError as exc:
            pytest.fail(f"{name}: ClickHouse cannot parse\n{statement}\n{exc}")


def test_the_cluster_schema_shards_events_by_app_and_event_id_and_keeps_the_usual_names() -> None:
    events = cluster_statements("0001_events")
    assert [s.split("\n")[0] for s in events] == [
        f"CREATE TABLE IF NOT EXISTS events_local{ON_CLUSTER}",
        f"CREATE TABLE IF NOT EXISTS events{ON_CLUSTER} AS events_local",
        f"CREATE TABLE IF NOT EXISTS metrics_local{ON_CLUSTER}",
        f"CREATE TABLE IF NOT EXISTS metrics{ON_CLUSTER} AS metrics_local",
    ]
    assert ("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/events_local', '{replica}', "
            "inserted_at)") in events[0]
    assert "SETTINGS replicated_deduplication_window = 10000" in events[0]
    assert "non_replicated" not in "\n".join(events)
    # Every copy of an event (same app, same id) on one shard: ReplacingMergeTree and FINAL work per shard.
    assert events[1].endswith("ENGINE = Distributed('analytics', 'analytics', 'events_local', cityHash64(app_id, event_id))")
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/metrics_local', '{replica}', inserted_at)" in events[2]
    assert events[3].endswith("ENGINE = Distributed('analytics', 'analytics', 'metrics_local', cityHash64(app_id, event_id))")


def test_the_rollup_is_kept_per_shard_and_read_through_a_distributed_table() -> None:
    rollup = cluster_statements("0002_daily_rollup")
    assert rollup[0].startswith(f"ALTER TABLE events_local{ON_CLUSTER} ADD COLUMN IF NOT EXISTS visitor_id UInt64")
    assert rollup[1].startswith(f"ALTER TABLE events{ON_CLUSTER} ADD COLUMN IF NOT EXISTS visitor_id UInt64")
    assert rollup[0].split("UInt64", 1)[1] == rollup[1].split("UInt64", 1)[1]  # the same MATERIALIZED expression
    rebuilt = cluster_statements("0003_daily_rollup_counts_event_ids")
    assert rebuilt[:3] == [
        f"DROP VIEW IF EXISTS events_daily_mv{ON_CLUSTER} SYNC",
        f"DROP TABLE IF EXISTS events_daily{ON_CLUSTER} SYNC",
        f"DROP TABLE IF EXISTS events_daily_local{ON_CLUSTER} SYNC",
    ]
    for statements in (rollup[2:], rebuilt[3:]):
        create_local, create_distributed, view, backfill = statements[0], statements[1], statements[2], statements[-1]
        assert ("ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/events_daily_local', "
                "'{replica}')") in create_local
        assert create_distributed == (
            f"CREATE TABLE IF NOT EXISTS events_daily{ON_CLUSTER} AS events_daily_local\n"
            "ENGINE = Distributed('analytics', 'analytics', 'events_daily_local', cityHash64(app_id, day))"
        )
        assert view.startswith(f"CREATE MATERIALIZED VIEW IF NOT EXISTS events_daily_mv{ON_CLUSTER} TO events_daily_local AS")
        assert "FROM events_local\n" in view
        # Backfills go through the Distributed tables: every shard's events, rows placed by the sharding key.
        assert backfill.startswith("INSERT INTO events_daily\n") and "ON CLUSTER" not in backfill
        assert re.search(r"FROM events( FINAL)?\n", backfill)


def test_schema_gives_the_table_holding_the_rows_and_the_cluster_clause() -> None:
    single, cluster = Schema("analytics"), Schema("analytics", CLUSTER)
    assert single.alter("events") == "ALTER TABLE events"
    assert cluster.alter("events") == f"ALTER TABLE events_local{ON_CLUSTER}"
    assert cluster.alter("events_daily") == f"ALTER TABLE events_daily_local{ON_CLUSTER}"
    assert single.engine("schema_migrations", "ReplacingMergeTree", sharded=False) == "ReplacingMergeTree"
    # schema_migrations: one replicated table spanning every node, so any node knows what was applied.
    assert cluster.engine("schema_migrations", "ReplacingMergeTree", sharded=False) == (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{database}/schema_migrations', '{shard}-{replica}')"
    )
    assert single.session_settings == {}
    assert cluster.session_settings["distributed_foreground_insert"] == 1  # offsets commit after the shards stored
    for bad in ("my-cluster", "c'; DROP TABLE events; --", "1c"):
        with pytest.raises(ValueError, match="identifier"):
            Schema("analytics", bad)


def test_the_cluster_setting_is_an_identifier_and_needs_a_server() -> None:
    assert Settings.model_fields["clickhouse_cluster"].default == ""  # one server unless asked
    url = "http://u:p@clickhouse:8123/analytics"
    assert Settings(analytics_env="test", clickhouse_url=url, clickhouse_cluster="analytics").clickhouse_cluster == "analytics"
    with pytest.raises(ValidationError, match="clickhouse_cluster"):
        Settings(analytics_env="test", clickhouse_url=url, clickhouse_cluster="x' ON CLUSTER y")
    with pytest.raises(ValidationError, match="needs CLICKHOUSE_URL"):
        Settings(analytics_env="test", clickhouse_url=None, clickhouse_cluster="analytics")


# ------------------------------------------------------------------------ offline: the compose example


def test_the_compose_cluster_example_matches_the_cluster_config() -> None:
    override_path = CLUSTER_CONFIG / "docker-compose.cluster.yml"
    override = yaml.safe_load(override_path.read_text())
    assert schema_errors(override) == []
    assert referenced_variables(override_path.read_text()) <= set(read_env_file(ENV_EXAMPLE))
    assert "CLICKHOUSE_CLUSTER" in read_env_file(ENV_EXAMPLE)
    base = yaml.safe_load(COMPOSE.read_text())
    assert override["services"]["clickhouse-2"]["image"] == base["services"]["clickhouse"]["image"]

    config = ET.parse(CLUSTER_CONFIG / "cluster.xml").getroot()
    shards = config.findall(f"remote_servers/{CLUSTER}/shard")
    hosts = [[r.findtext("host") for r in shard.findall("replica")] for shard in shards]
    assert all(shard.findtext("internal_replication") == "true" for shard in shards)
    nodes = {name: service for name, service in override["services"].items() if name.startswith("clickhouse")}
    for shard_num, replicas in enumerate(hosts, start=1):
        for host in replicas:
            env = nodes[host]["environment"]
            assert (env["CLICKHOUSE_SHARD"], env["CLICKHOUSE_REPLICA"]) == (str(shard_num), host)
            assert "./deploy/clickhouse/cluster.xml:/etc/clickhouse-server/config.d/cluster.xml:ro" in nodes[host]["volumes"]
    assert sorted(h for replicas in hosts for h in replicas) == sorted(nodes)
    keepers = [name for name, service in nodes.items() if any("keeper.xml" in v for v in service["volumes"])]
    assert keepers == [config.findtext("zookeeper/node/host")]


# ------------------------------------------------------------------------ Docker: two shards for real

IMAGE = "clickhouse/clickhouse-server:25.8"  # as in docker-compose.yml
NODES = [("clickhouse", 1), ("clickhouse-2", 2)]  # the hosts of deploy/clickhouse/cluster.xml


def _ask(url: str, password: str, sql: str) -> str:
    r = httpx.post(url, content=sql, headers={"X-ClickHouse-User": "analytics", "X-ClickHouse-Key": password}, timeout=10)
    r.raise_for_status()
    return r.text.strip()


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """Two ClickHouse servers on a private network, configured as the compose example configures them."""
    ok, reason = docker_available()
    if not ok:
        pytest.skip(reason)
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

    password = secrets.token_hex(16)
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(Network())
        urls = []
        for host, shard in NODES:
            node = (
                DockerContainer(IMAGE)
                .with_network(network)
                .with_network_aliases(host)
                .with_kwargs(hostname=host)
                .with_envs(CLICKHOUSE_USER="analytics", CLICKHOUSE_PASSWORD=password, CLICKHOUSE_DB="analytics",
                           CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT="1", CLICKHOUSE_SHARD=str(shard), CLICKHOUSE_REPLICA=host)
                .with_exposed_ports(8123)
                .with_copy_into_container(CLUSTER_CONFIG / "cluster.xml", "/etc/clickhouse-server/config.d/cluster.xml")
            )
            if shard == 1:  # Keeper lives in the first node, as in the compose example
                node = node.with_copy_into_container(CLUSTER_CONFIG / "keeper.xml", "/etc/clickhouse-server/config.d/keeper.xml")
            stack.enter_context(node)
            urls.append(f"http://{node.get_container_host_ip()}:{node.get_exposed_port(8123)}/")
        # Ready: every node answers, sees both shards of the cluster, and reaches Keeper.
        deadline = time.monotonic() + 180
        pending = list(urls)
        while pending:
            try:
                if (_ask(pending[0], password, f"SELECT count() FROM system.clusters WHERE cluster = '{CLUSTER}'") == "2"
                        and _ask(pending[0], password, "SELECT count() > 0 FROM system.zookeeper WHERE path = '/'") == "1"):
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the ClickHouse cluster did not come up: {pending[0]} not ready")
            time.sleep(1)
        yield {"urls": [f"http://analytics:{password}@{u.split('://', 1)[1]}analytics" for u in urls]}


def _event(app_id: str, n: int, day: datetime, **extra: Any) -> bytes:
    ts = (day + timedelta(minutes=n % 1000)).isoformat()
    event = {"event_id": f"e{n}", "app_id": app_id, "type": "track", "event_name": "signup", "source": "test",
             "user_id": f"u{n % 20}", "device_type": "mobile" if n % 2 else "desktop", "timestamp": ts, "received_at": ts,
             **extra}
    return orjson.dumps(event)


def _batch(partition: int, raws: list[bytes]) -> PartitionBatch:
    batch = PartitionBatch(partition=partition, first_offset=0)
    for offset, raw in enumerate(raws):
        batch.add(offset, *decode(raw))
    return batch


async def _scalar(ch: ClickHouse, sql: str, params: dict[str, Any] | None = None) -> int:
    return int((await ch.query(sql, params))[0]["n"])


@pytest.mark.docker
async def test_two_shards_store_and_count_each_event_once(cluster: dict[str, Any]) -> None:
    from services.query import privacy
    from services.query import queries as q

    first = Settings(analytics_env="test", clickhouse_url=cluster["urls"][0], clickhouse_cluster=CLUSTER)
    ch = await connect_clickhouse(first)
    ch2 = await connect_clickhouse(first.model_copy(update={"clickhouse_url": cluster["urls"][1]}))
    try:
        # The migrations, ON CLUSTER, through the clickhouse-connect adapter; then the schema on both nodes.
        expected = [f"{m.version:04d}_{m.name}" for m in load(MIGRATIONS)]
        assert await apply_clickhouse(ch, "analytics", MIGRATIONS, {"retention_days": 730}) == expected
        for node in (ch, ch2):
            engines = {r["name"]: r["engine"] for r in await node.query(
                "SELECT name, engine FROM system.tables WHERE database = currentDatabase()")}
            assert engines["events_local"] == "ReplicatedReplacingMergeTree"
            assert engines["metrics_local"] == "ReplicatedReplacingMergeTree"
            assert engines["events_daily_local"] == "ReplicatedAggregatingMergeTree"
            assert engines["events"] == engines["metrics"] == engines["events_daily"] == "Distributed"
            assert engines["events_daily_mv"] == "MaterializedView"
            assert engines["schema_migrations"] == "ReplicatedReplacingMergeTree"
        # schema_migrations is replicated to every node: the second node knows nothing is left to apply.
        deadline = time.monotonic() + 30
        while await _scalar(ch2, "SELECT count() AS n FROM schema_migrations FINAL") < len(expected):
            assert time.monotonic() < deadline, "schema_migrations did not reach the second node"
            await ch2.command("SYSTEM SYNC REPLICA schema_migrations")
        assert await apply_clickhouse(ch2, "analytics", MIGRATIONS, {"retention_days": 730}) == []

        app = f"cluster-{secrets.token_hex(4)}"
        day1 = (datetime.now(UTC) - timedelta(days=5)).replace(hour=0, minute=0, second=0, microsecond=0)
        day2 = day1 + timedelta(days=1)
        first_batch = [_event(app, n, day1 if n < 100 else day2) for n in range(200)]
        metric = [orjson.dumps({"event_id": f"m{n}", "app_id": app, "type": "metric", "event_name": "load_time",
                                "metric_value": float(n), "metric_unit": "ms", "timestamp": day1.isoformat(),
                                "received_at": day1.isoformat()}) for n in range(4)]
        # Another partition's batch: copies of e0..e9 and m0 (a client retry) and five new events.
        second_batch = first_batch[:10] + metric[:1] + [_event(app, n, day2) for n in range(200, 205)]

        # Merges stopped, so that the raw row count shows what the inserts stored.
        await ch.command(f"SYSTEM STOP MERGES{ON_CLUSTER} analytics.events_local")
        batch_a = _batch(0, first_batch + metric)
        await write_batches(ch, [batch_a])
        await write_batches(ch, [batch_a])  # redelivered: the same token, dropped by every shard
        await write_batches(ch, [_batch(1, second_batch)])
        where_app = {"app": app}
        # 200 + 15 rows: the repeat was dropped on each shard (through the Distributed insert), the copies got in.
        assert await _scalar(ch, "SELECT count() AS n FROM events WHERE app_id = {app:String}", where_app) == 215
        shards = await ch.query("SELECT _shard_num AS s, count() AS n FROM events WHERE app_id = {app:String} GROUP BY s", where_app)
        assert len(shards) == 2, shards  # both shards hold events
        assert await ch.query(  # every copy of an event sits on the shard of its original
            "SELECT event_id FROM events WHERE app_id = {app:String} GROUP BY event_id HAVING uniqExact(_shard_num) > 1",
            where_app) == []
        await ch.command(f"SYSTEM START MERGES{ON_CLUSTER} analytics.events_local")

        # The query service's reads count each event once, from either node.
        start, end = day1 - timedelta(hours=12), day2 + timedelta(days=1, hours=12)
        for node in (ch, ch2):
            assert await q.count(node, q.Where(app, start, end)) == 205
            summary = await q.event_summary(node, q.Where(app, start, end).equals("event_name", "event", "signup"))
            assert summary == {"count": 205, "uniqueUsers": 20, "deviceData": {"desktop": 103, "mobile": 102}}
            assert [(g["key"], g["count"]) for g in await q.grouped(node, q.Where(app, start, end), "event_name", 10)] == [
                ("signup", 205)]
            assert (await q.get_event(node, app, "e7") or {}).get("event_id") == "e7"
            metrics = await q.metric_summary(node, app, None, start, end)
            assert [(m["metric_name"], m["count"], m["sum"]) for m in metrics] == [("load_time", 4, 6.0)]

        # A privacy deletion: mutations ON CLUSTER on the local tables, the rollup's days rebuilt.
        assert await privacy.delete_user(ch, app, "u0") == 11  # e0, e20, ..., e200
        for node in (ch, ch2):
            assert await q.count(node, q.Where(app, start, end)) == 194
            summary = await q.event_summary(node, q.Where(app, start, end).equals("event_name", "event", "signup"))
            assert (summary["count"], summary["uniqueUsers"]) == (194, 19)
    finally:
        with contextlib.suppress(Exception):
            await ch.command(f"SYSTEM START MERGES{ON_CLUSTER} analytics.events_local")
        await ch.close()
        await ch2.close()
