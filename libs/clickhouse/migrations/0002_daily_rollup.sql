-- Read speed for the query service's summaries (issue #6).
--
-- visitor_id: who an event counts as (user id, else anonymous id, else session id, else ip + user
-- agent), hashed once at insert instead of on every read. For parts written before this migration it
-- is computed on read from the same expression, so old and new rows agree.
{# In a cluster, on events_local and on the Distributed `events` too: a Distributed table reads only the
   columns it declares, and never sends a MATERIALIZED one (each shard computes it). #}
{% for table in schema.declaring("events") %}
ALTER TABLE {{ table }}{{ schema.on_cluster }} ADD COLUMN IF NOT EXISTS visitor_id UInt64
    MATERIALIZED cityHash64(if(user_id != '', user_id, if(anonymous_id != '', anonymous_id,
                            if(session_id != '', session_id, concat(ip, '|', user_agent)))));
{% endfor %}

-- Events and visitors per UTC day, event name and device, kept by a materialized view on every insert
-- into events. Whole days of event-summary and daily series are read from here (partial days from
-- events). Visitors are uniqCombined64(15) states: exact for small sets, about 0.6 % error beyond some
-- thousands of visitors per day, and mergeable across days.
-- Kept in step by the query service: deleting a user's events rebuilds the days they touched.
{# In a cluster: events_daily_local per shard, filled by the view from the shard's own events_local rows,
   and a Distributed events_daily whose reads merge the shards' states (exact: an event lives on one
   shard, and uniq states merge anyway). Its sharding key only places rows inserted through it (the
   backfills, the query service's rebuild of a day): any key is right, the day keeps them together. #}
CREATE TABLE IF NOT EXISTS {{ schema.local("events_daily") }}{{ schema.on_cluster }}
(
    app_id       LowCardinality(String),
    day          Date,
    event_name   LowCardinality(String),
    device_type  LowCardinality(String),
    events       SimpleAggregateFunction(sum, UInt64),
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
       count() AS events, uniqCombined64State(15)(visitor_id) AS visitors
FROM {{ schema.local("events") }}
GROUP BY app_id, day, event_name, device_type;

-- Backfill what was stored before the view existed (runs once, with this migration). Not idempotent:
-- when upgrading a deployment that already holds events, apply migrations from one place first
-- (`analytics migrate`, the Kubernetes migrate Job); two processes applying 0002 at the same moment
-- would both backfill. On a new install there is nothing to backfill.
{# In a cluster the same statement is valid (Distributed in and out; the scalar subquery runs once, on the
   migrating node), and there is nothing to backfill: cluster mode starts from an empty database, and
   0003 rebuilds the rollup from every stored event right after. #}
INSERT INTO events_daily
SELECT app_id, toDate(timestamp) AS day, event_name, device_type,
       count() AS events, uniqCombined64State(15)(visitor_id) AS visitors
FROM events FINAL
WHERE inserted_at < (SELECT min(metadata_modification_time) FROM system.tables
                     WHERE database = currentDatabase() AND name = 'events_daily_mv')
GROUP BY app_id, day, event_name, device_type;
