-- Events stored exactly as sent, and what kind of client sent them.
--
-- properties_json: the event's properties as the JSON text the aggregator received. The `properties`
-- JSON column cannot hold a null (it drops `{"a": null}` and `{"b": {"c": null}}` paths, and empty
-- objects), so every read that returns an event returns this text; `properties` stays for queries on
-- property paths. Rows stored before this migration have '' here and are read from `properties`.
--
-- source_kind: browser | server | mobile (libs/events.py). '' on rows stored before this migration.
{# In a cluster, on events_local and on the Distributed `events` (see 0002). #}
{% for table in schema.declaring("events") %}
ALTER TABLE {{ table }}{{ schema.on_cluster }}
    ADD COLUMN IF NOT EXISTS properties_json String AFTER properties,
    ADD COLUMN IF NOT EXISTS source_kind LowCardinality(String) AFTER source;
{% endfor %}
