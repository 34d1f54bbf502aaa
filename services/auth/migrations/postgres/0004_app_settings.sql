-- Site settings of an app, published with the app's state on auth.apps.v1 (gateways and the query
-- service follow it): its time zone (day boundaries), the client addresses whose events are dropped,
-- the browser origins its write key accepts; and the version of that state.
ALTER TABLE apps
    ADD COLUMN timezone        text   NOT NULL DEFAULT 'UTC',
    ADD COLUMN excluded_ips    text[] NOT NULL DEFAULT '{}',
    ADD COLUMN allowed_origins text[] NOT NULL DEFAULT '{}',
    -- microseconds since the epoch of the last change: consumers of auth.apps.v1 keep the newest
    ADD COLUMN version         bigint NOT NULL DEFAULT 0;
