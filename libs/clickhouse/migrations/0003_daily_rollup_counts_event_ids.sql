-- The events_daily rollup counted every row an insert carried (SimpleAggregateFunction(sum)), so an event
-- that reached the events table twice (a client retry with the same id in another batch, a batch cut
-- differently after a crash) was counted twice on whole past days, although every read of the events
-- table (FINAL) counts it once. Its event counts are now exact distinct counts of the event ids' 64-bit
-- hashes (uniqExact states): a copy adds nothing, whenever and however often it arrives.
--
-- Rebuilt from scratch: the new view starts first, then the backfill reads every stored event. An
-- event inserted in between may land in both, which is harmless for uniqExact and uniqCombined states
-- alike, so this migration may run twice or next to live traffic.
{# In a cluster (see 0002): the view and both tables go on every node; SYNC, so that the replicated
   events_daily_local leaves Keeper before it is created again under the same path. #}
DROP VIEW IF EXISTS events_daily_mv{{ schema.on_cluster }}{{ schema.sync }};
{% if schema.cluster %}
DROP TABLE IF EXISTS events_daily{{ schema.on_cluster }}{{ schema.sync }};
{% endif %}
DROP TABLE IF EXISTS {{ schema.local("events_daily") }}{{ schema.on_cluster }}{{ schema.sync }};

CREATE TABLE IF NOT EXISTS {{ schema.local("events_daily") }}{{ schema.on_cluster }}
(
    app_id       LowCardinality(String),
    day          Date,
    event_name   LowCardinality(String),
    device_type  LowCardinality(String),
    events       AggregateFunction(uniqExact, UInt64),
    visitors     AggregateFunction(uniqCombined64(15), UInt64)
)
ENGINE = {{ schema.engine("events_daily", "AggregatingMergeTree") }}
PARTITION BY toYYYYMM(day)
ORDER BY (app_id, day, event_name, device_type)
TTL day + INTERVAL {{ retention_days }} DAY;
{% if schema.cluster %}

{{ schema.create_distributed("events_daily", "cityHash64(app_id, day)") }};
{% endif %}

CREATE MATERIALIZED VIEW IF NOT EXISTS events_daily_mv{{ schema.on_cluster }} TO {{ schema.local("events_daily") }} AS
SELECT app_id, toDate(timestamp) AS day, event_name, device_type,
       uniqExactState(cityHash64(event_id)) AS events, uniqCombined64State(15)(visitor_id) AS visitors
FROM {{ schema.local("events") }}
GROUP BY app_id, day, event_name, device_type;

INSERT INTO events_daily
SELECT app_id, toDate(timestamp) AS day, event_name, device_type,
       uniqExactState(cityHash64(event_id)) AS events, uniqCombined64State(15)(visitor_id) AS visitors
FROM events
GROUP BY app_id, day, event_name, device_type;
