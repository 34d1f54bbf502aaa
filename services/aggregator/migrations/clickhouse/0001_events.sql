-- Every event of both seeds and of Segment's calls, one row each.
--
-- Exactly once in effect (see services/aggregator/writer.py for the whole argument):
-- * the aggregator inserts each Kafka batch with an insert_deduplication_token built from its
--   partition and offsets, so a batch retried after a failed commit is dropped by ClickHouse;
-- * ReplacingMergeTree keyed on event_id removes any copy that still gets in (a client retry with the
--   same event id, a batch cut differently after a crash); reads use FINAL so no copy is ever counted.
{#
  Cluster mode (CLICKHOUSE_CLUSTER; libs/clickhouse/schema.py renders the names and engines): the rows
  live in events_local / metrics_local on each node, ReplicatedReplacingMergeTree tables per shard, and
  `events` / `metrics` are Distributed tables over them, so the writer and the queries keep their
  names. Both are sharded by (app_id, event_id): every copy of an event lands on the same shard, where
  the version column, FINAL (run on each shard) and the deduplication window work as on one server.
  Without CLICKHOUSE_CLUSTER this file renders exactly the single-server SQL it always did.
#}
CREATE TABLE IF NOT EXISTS {{ schema.local("events") }}{{ schema.on_cluster }}
(
    app_id          LowCardinality(String),
    event_id        String,
    type            LowCardinality(String),
    event_name      LowCardinality(String),
    event_category  LowCardinality(String),
    source          LowCardinality(String),
    user_id         String,
    anonymous_id    String,
    session_id      String,
    url             String,
    path            String,
    referrer        String,
    referrer_host   LowCardinality(String),
    utm_source      LowCardinality(String),
    utm_medium      LowCardinality(String),
    utm_campaign    LowCardinality(String),
    utm_term        LowCardinality(String),
    utm_content     LowCardinality(String),
    device_type     LowCardinality(String),
    browser         LowCardinality(String),
    os              LowCardinality(String),
    screen_size     LowCardinality(String),
    country         LowCardinality(String),
    ip              String,
    user_agent      String,
    properties      JSON,
    timestamp       DateTime64(3, 'UTC'),
    received_at     DateTime64(3, 'UTC'),
    is_bot          Bool,
    flags           Array(LowCardinality(String)),
    schema_version  UInt8,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {{ schema.engine("events", "ReplacingMergeTree", "inserted_at") }}
PARTITION BY toYYYYMM(timestamp)
ORDER BY (app_id, toDate(timestamp), event_id)
TTL toDateTime(timestamp) + INTERVAL {{ retention_days }} DAY
SETTINGS {{ schema.dedup_window }} = 10000;
{% if schema.cluster %}

{{ schema.create_distributed("events", "cityHash64(app_id, event_id)") }};
{% endif %}

-- Custom metrics (POST /api/analytics/metrics).
CREATE TABLE IF NOT EXISTS {{ schema.local("metrics") }}{{ schema.on_cluster }}
(
    app_id       LowCardinality(String),
    event_id     String,
    metric_name  LowCardinality(String),
    value        Float64,
    unit         LowCardinality(String),
    tags         Map(String, String),
    timestamp    DateTime64(3, 'UTC'),
    received_at  DateTime64(3, 'UTC'),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {{ schema.engine("metrics", "ReplacingMergeTree", "inserted_at") }}
PARTITION BY toYYYYMM(timestamp)
ORDER BY (app_id, metric_name, toDate(timestamp), event_id)
TTL toDateTime(timestamp) + INTERVAL {{ retention_days }} DAY
SETTINGS {{ schema.dedup_window }} = 10000;
{#- The dashes keep the single-server rendering's end exactly as it was (no newline after the last `;`). #}
{%- if schema.cluster %}


{{ schema.create_distributed("metrics", "cityHash64(app_id, event_id)") }};
{%- endif %}
