-- Every event of both seeds and of Segment's calls, one row each.
--
-- Exactly once in effect (see services/aggregator/writer.py for the whole argument):
-- * the aggregator inserts each Kafka batch with an insert_deduplication_token built from its
--   partition and offsets, so a batch retried after a failed commit is dropped by ClickHouse;
-- * ReplacingMergeTree keyed on event_id removes any copy that still gets in (a client retry with the
--   same event id, a batch cut differently after a crash); reads use FINAL so no copy is ever counted.
CREATE TABLE IF NOT EXISTS events
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
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (app_id, toDate(timestamp), event_id)
TTL toDateTime(timestamp) + INTERVAL {{ retention_days }} DAY
SETTINGS non_replicated_deduplication_window = 10000;

-- Custom metrics (POST /api/analytics/metrics).
CREATE TABLE IF NOT EXISTS metrics
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
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (app_id, metric_name, toDate(timestamp), event_id)
TTL toDateTime(timestamp) + INTERVAL {{ retention_days }} DAY
SETTINGS non_replicated_deduplication_window = 10000;
