"""Batch writer: the batches of several partitions (each a contiguous offset range of one partition),
inserted in one block per table.

Why each event ends up stored once, whatever happens (SIGKILL mid-batch, rebalance, client retry):

1. Offsets are committed only after the insert of every message before them succeeded, so a crash
   can only make Kafka deliver a message again, never skip one (at-least-once delivery).
2. An insert carries the token `<table>:<hash of the topic, each batch's partition and offset range,
   and the rows>`. When the same batches are inserted again (a retry after ClickHouse refused or
   timed out, a commit lost after a successful insert), ClickHouse recognises the token and drops the
   block: the common redelivery costs nothing. The rows are part of the hash because offsets alone
   are not unique over time: the embedded broker keeps messages in memory, so after a restart offsets
   begin at 0 again while ClickHouse still remembers the old tokens, and a token made of offsets only
   would make ClickHouse silently drop new events as "duplicates".
   One insert for all the partitions that have something (rather than one per partition) keeps the
   number of parts, and so of background merges, low under load: fewer, larger blocks.
3. A redelivered range can be cut differently (the batch closed by time at another offset), and a
   client can retry an event with the same id through the gateway. Those copies do get in, so the
   table is a ReplacingMergeTree keyed by event id, and every read uses FINAL: a copy is never
   counted, even before a background merge removes it.

Token-only deduplication (the ClickHouse Kafka Connect sink's way) needs the batch boundaries to be
kept in shared state so that a replay re-forms identical batches; the table engine gives the same
result for any boundaries, so it is the guarantee, and the token is the cheap fast path.

Rollups: a materialized view over events (the events_daily rollup) sees every insert, copies
included, so it cannot count rows: it keeps exact distinct counts of event-id hashes (migration 0003),
to which a copy adds nothing, and the query service freezes closed days into plain exact counts
(migration 0004, services/query/frozen.py). A lookup of the batch's event ids before each insert was
tried instead and cost a large share of the throughput, more as a day's events grow.

In cluster mode (CLICKHOUSE_CLUSTER, libs/clickhouse/schema.py) the same inserts go to Distributed
tables, and the client sends every query with `distributed_foreground_insert=1`: the insert returns
only when each shard has stored its share of the rows, so offsets are still committed only for stored
events (not for events queued on one node's disk), and each shard receives its share in the same
INSERT, with the same insert_deduplication_token. A repeated batch is split the same way (the sharding
key, cityHash64(app_id, event_id), depends on the rows only), so every shard drops its repeat by the
token; a shard that failed while another succeeded gets its share on the retry. The sharding key keeps
every copy of an event on one shard, so the ReplacingMergeTree guarantee above holds shard by shard.

The one gap of the table engine: copies are merged only when they share the sorting key
(app_id, toDate(timestamp), event_id) and the month partition. A client retry gets the same
timestamp when the client sends one (the SDKs do); an event without a client timestamp is stamped
with its arrival time, so a retry of it that arrives on the next UTC day is a second row.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

from libs.clickhouse import ClickHouse
from libs.kafka import EVENTS_TOPIC

INSERTED = Counter("aggregator_rows_inserted_total", "Rows inserted into ClickHouse", ["table"])
BATCH_SIZE = Histogram(
    "aggregator_batch_rows", "Rows per insert", buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000)
)
INSERT_LATENCY = Histogram(
    "aggregator_insert_seconds", "ClickHouse insert latency",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


@dataclass(eq=False)  # compared by identity: two batches are never "the same" batch
class PartitionBatch:
    """Messages of one partition, from `first_offset` to `last_offset`, grouped by table, and for each
    app with rows in it the time of its oldest event (epoch seconds: what the data versions need)."""

    partition: int
    first_offset: int
    topic: str = EVENTS_TOPIC
    last_offset: int = -1
    rows: dict[str, list[bytes]] = field(default_factory=dict)
    created: float = field(default_factory=time.monotonic)
    messages: int = 0
    written: bool = False
    oldest: dict[str, float] = field(default_factory=dict)

    def add(self, offset: int, table: str | None, row: bytes | None, app_id: str | None = None, at: float = 0.0) -> None:
        self.last_offset = offset
        self.messages += 1
        if table is not None and row is not None:
            self.rows.setdefault(table, []).append(row)
            if app_id is not None:
                seen = self.oldest.get(app_id)
                if seen is None or at < seen:
                    self.oldest[app_id] = at

    @property
    def age(self) -> float:
        return time.monotonic() - self.created


def dedup_token(table: str, batches: list[PartitionBatch], rows: list[bytes]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for batch in batches:
        digest.update(f"{batch.topic}/{batch.partition}/{batch.first_offset}-{batch.last_offset};".encode())
    for row in rows:
        digest.update(row)
    return f"{table}:{digest.hexdigest()}"


async def write_batches(ch: ClickHouse, batches: list[PartitionBatch]) -> None:
    """One bulk insert per table for all `batches`. Raises ClickHouseError; safe to call again with
    the same batches (a table that already took them drops the repeat by its token)."""
    tables: dict[str, list[bytes]] = {}
    for batch in batches:
        for table, batch_rows in batch.rows.items():
            tables.setdefault(table, []).extend(batch_rows)
    for table, rows in tables.items():
        if not rows:
            continue
        token = dedup_token(table, batches, rows)
        start = time.perf_counter()
        await ch.insert_rows(table, rows, dedup_token=token)
        INSERT_LATENCY.observe(time.perf_counter() - start)
        BATCH_SIZE.observe(len(rows))
        INSERTED.labels(table).inc(len(rows))
