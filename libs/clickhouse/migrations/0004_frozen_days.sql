-- Frozen days (issue #6): whole-day summaries read plain exact counts instead of merging millions of
-- event-id hashes (the uniqExact states of events_daily) on every request. services/query/frozen.py
-- writes and reads these tables; the reasoning is written there.

-- A day's change counter: rollup rows ever written for (app, UTC day), plus one for every privacy
-- deletion that touched the day (services/query/privacy.py). It only grows, so "the same number as when
-- the day was frozen" means "nothing inserted or deleted since". Its view reads events_daily, not
-- events: each insert reaches it after the rollup stored its rows, which is what a freeze relies on
-- (a migration that rebuilds events_daily under the same name keeps this view working). Days whose
-- rollup rows were all written before this view existed have no row: their counter reads 0 until
-- something new arrives. last_change: when the day last changed (with replicas, only days quiet for
-- some minutes are frozen).
{# In a cluster (see 0002): events_day_changes_local per shard, counted by the view from the shard's own
   events_daily_local rows, and a Distributed events_day_changes whose reads add the shards' counters up
   (each only grows, so their sum does too). #}
CREATE TABLE IF NOT EXISTS {{ schema.local("events_day_changes") }}{{ schema.on_cluster }}
(
    app_id       LowCardinality(String),
    day          Date,
    changes      SimpleAggregateFunction(sum, UInt64),
    last_change  SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = {{ schema.engine("events_day_changes", "AggregatingMergeTree") }}
PARTITION BY toYYYYMM(day)
ORDER BY (app_id, day)
TTL day + INTERVAL {{ retention_days }} DAY;
{% if schema.cluster %}

{{ schema.create_distributed("events_day_changes", "cityHash64(app_id, day)") }};
{% endif %}

CREATE MATERIALIZED VIEW IF NOT EXISTS events_day_changes_mv{{ schema.on_cluster }} TO {{ schema.local("events_day_changes") }} AS
SELECT app_id, day, count() AS changes, now64(3) AS last_change
FROM {{ schema.local("events_daily") }}
GROUP BY app_id, day;

-- Exact counts of closed days: distinct event ids per (app, day, event name, device), the day's
-- events_daily states merged once, plus that group's visitor state. `version` is the day's change
-- counter read before the counts were computed: the rows are trusted only while the counter still
-- reads that number. A day frozen again replaces its older rows at merges (ReplacingMergeTree on
-- version); until then reads pick the day's newest version. Sorted by event name first and in small
-- granules: a summary of one event reads few of the (large) visitor states of other events and days.
{# In a cluster: written by the query service through the Distributed table, sharded by day, so that a
   day's versions meet on one shard, where they replace each other. #}
CREATE TABLE IF NOT EXISTS {{ schema.local("events_daily_frozen") }}{{ schema.on_cluster }}
(
    app_id       LowCardinality(String),
    day          Date,
    version      UInt64,
    event_name   LowCardinality(String),
    device_type  LowCardinality(String),
    events       UInt64,
    visitors     AggregateFunction(uniqCombined64(15), UInt64)
)
ENGINE = {{ schema.engine("events_daily_frozen", "ReplacingMergeTree", "version") }}
PARTITION BY toYYYYMM(day)
ORDER BY (app_id, event_name, day, device_type)
TTL day + INTERVAL {{ retention_days }} DAY
SETTINGS index_granularity = 64;
{%- if schema.cluster %}


{{ schema.create_distributed("events_daily_frozen", "cityHash64(app_id, day)") }};
{%- endif %}
