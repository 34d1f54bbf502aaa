"""Where the ClickHouse tables live: one server (the default, and always chDB), or a cluster.

`CLICKHOUSE_CLUSTER` empty: every table is what its name says (`events`, `metrics`, `events_daily`,
plain *MergeTree tables) and the SQL is exactly the single-server SQL, byte for byte.

`CLICKHOUSE_CLUSTER=<name>` (a cluster of `<remote_servers>` in the servers' config, with Keeper):

* every DDL statement carries `ON CLUSTER '<name>'`, so one `analytics migrate` builds the schema on
  every node (the database too);
* the rows of a table `T` live in `T_local` on each node, a Replicated*MergeTree whose Keeper path
  names the shard (`/clickhouse/tables/{shard}/{database}/T_local`): the replicas of a shard hold the
  same rows, shards hold different ones;
* `T` becomes a Distributed table over `T_local`, so the aggregator's inserts and every query of the
  query service keep their table names: an INSERT is split over the shards by the sharding key, a
  SELECT runs on one replica of each shard and the initiator merges the partial results.

Why reads stay exact: copies of an event (a client retry, a Kafka redelivery cut into another
batch) carry the same app id and event id, and `events` is sharded by `cityHash64(app_id, event_id)`,
so every copy lands on the same shard, where ReplacingMergeTree (and `FINAL`, which a Distributed
table forwards to each shard) removes it exactly as on one server. An event then lives on one shard
only, so counts add up across shards, and distinct counts (uniqExact, uniqCombined states) merge.
The daily rollup is kept per shard by the materialized view on `events_local` (each shard aggregates
the rows it stores); its states merge across shards on read, like the rollups of several days.

Mutations (`ALTER ... DELETE/UPDATE`) and `OPTIMIZE` cannot run on a Distributed table: they go to
`local(T)` with `on_cluster`; `alter(T)` gives that prefix, so the SQL stays in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_identifier(name: str) -> str:
    """Table, column, database and cluster names come only from code and settings; refuse anything else."""
    if not _IDENT_RE.match(name):
        raise ValueError(f"not an identifier: {name!r}")
    return name


@dataclass(frozen=True)
class Schema:
    database: str = "analytics"
    cluster: str = ""  # empty: one server

    def __post_init__(self) -> None:
        check_identifier(self.database)
        if self.cluster:
            check_identifier(self.cluster)

    @property
    def on_cluster(self) -> str:
        """` ON CLUSTER '<name>'` after the table name of a DDL statement, or nothing."""
        return f" ON CLUSTER '{self.cluster}'" if self.cluster else ""

    @property
    def sync(self) -> str:
        """After DROP: a replicated table must leave Keeper before one with the same path is created again
        (Atomic databases otherwise drop it minutes later)."""
        return " SYNC" if self.cluster else ""

    @property
    def dedup_window(self) -> str:
        """The MergeTree setting that keeps the insert deduplication tokens of the last N blocks."""
        return "replicated_deduplication_window" if self.cluster else "non_replicated_deduplication_window"

    def local(self, table: str) -> str:
        """The table that stores the rows of `table` (what mutations and materialized views work on)."""
        return f"{check_identifier(table)}_local" if self.cluster else check_identifier(table)

    def declaring(self, table: str) -> list[str]:
        """Every table that declares the columns of `table`: the local table, then the Distributed one
        (a column added to the rows must be added to the Distributed table too, or reads cannot see it)."""
        return [self.local(table), table] if self.cluster else [table]

    def alter(self, table: str) -> str:
        """`ALTER TABLE <the table storing the rows>[ ON CLUSTER ...]`, for DELETE, UPDATE and the like."""
        return f"ALTER TABLE {self.local(table)}{self.on_cluster}"

    def engine(self, table: str, kind: str, *args: str, sharded: bool = True) -> str:
        """`kind(args)` on one server; its Replicated variant in a cluster. `sharded=False` makes one
        replica of the table on every node of the cluster (same rows everywhere: schema_migrations)."""
        if not self.cluster:
            return f"{kind}({', '.join(args)})" if args else kind
        if sharded:
            path, replica = f"/clickhouse/tables/{{shard}}/{{database}}/{self.local(table)}", "{replica}"
        else:
            # One Keeper path for the whole cluster; {shard}-{replica} is unique even where replica
            # names repeat from shard to shard.
            path, replica = f"/clickhouse/tables/{{database}}/{check_identifier(table)}", "{shard}-{replica}"
        quoted = [f"'{path}'", f"'{replica}'", *args]
        return f"Replicated{kind}({', '.join(quoted)})"

    def create_distributed(self, table: str, sharding_key: str) -> str:
        """The Distributed table `table` over `local(table)`, with its columns (defaults and MATERIALIZED
        ones included) copied from it. The database is named: `currentDatabase()` in an ON CLUSTER
        statement would be evaluated by each node's DDL worker, not in the migrating session."""
        local = self.local(table)
        return (
            f"CREATE TABLE IF NOT EXISTS {check_identifier(table)}{self.on_cluster} AS {local}\n"
            f"ENGINE = Distributed('{self.cluster}', '{self.database}', '{local}', {sharding_key})"
        )

    @property
    def session_settings(self) -> dict[str, Any]:
        """Settings for every query of a cluster-mode client.

        * `distributed_foreground_insert`: an INSERT into a Distributed table returns only once each
          shard has stored its rows (committed to Keeper on one replica), instead of once they are queued
          on the receiving node's disk. The aggregator commits Kafka offsets after the insert returns,
          so this is what makes "committed" mean "stored on the shards". It also sends each shard its
          part of the block in the same INSERT with the client's settings, insert_deduplication_token
          included: a repeated batch splits the same way (the sharding key depends on the rows only) and
          each shard drops its part by the token. In the background mode the queued blocks may be
          batched with others, which loses the token's meaning.
        * `distributed_product_mode = 'global'`: an IN or JOIN over a Distributed table inside a query
          over another one is computed once on the initiator (GLOBAL) rather than refused.
        """
        if not self.cluster:
            return {}
        return {"distributed_foreground_insert": 1, "distributed_product_mode": "global"}
