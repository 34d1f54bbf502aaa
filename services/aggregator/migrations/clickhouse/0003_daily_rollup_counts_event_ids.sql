-- The events_daily rollup counted every row an insert carried (SimpleAggregateFunction(sum)), so an event
-- that reached the events table twice (a client retry with the same id in another batch, a batch cut
-- differently after a crash) was counted twice on whole past days, although every read of the events
-- table (FINAL) counts it once. Its event counts are now exact distinct counts of the event ids' 64-bit
-- hashes (uniqExact states): a copy adds nothing, whenever and however often it arrives.
--
-- Rebuilt from scratch: the new view starts first, then the backfill reads every stored event. An
-- event inserted in between may land in both, which is harmless for uniqExact and uniqCombined states
-- alike, so this migration may run twice or next to live traffic.
DROP VIEW IF EXISTS events_daily_mv;
DROP TABLE IF EXISTS events_daily;

CREATE TABLE IF NOT EXISTS events_daily
(
    app_id       LowCardinality(String),
    day          Date,
    event_name   LowCardinality(String),
    device_type  LowCardinality(String),
    events       AggregateFunction(uniqExact, UInt64),
    visitors     AggregateFunction(uniqCombined64(15), UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (app_id, day, event_name, device_type)
TTL day + INTERVAL {{ retention_days }} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_daily_mv TO events_daily AS
SELECT app_id, toDate(timestamp) AS day, event_name, device_type,
       uniqExactState(cityHash64(event_id)) AS events, uniqCombined64State(15)(visitor_id) AS visitors
FROM events
GROUP BY app_id, day, event_name, device_type;

INSERT INTO events_daily
SELECT app_id, toDate(timestamp) AS day, event_name, device_type,
       uniqExactState(cityHash64(event_id)) AS events, uniqCombined64State(15)(visitor_id) AS visitors
FROM events
GROUP BY app_id, day, event_name, device_type;
