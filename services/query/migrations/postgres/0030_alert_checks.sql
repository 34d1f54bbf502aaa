-- The query service's copy of the alerts, folded from `auth.alerts.v1` (the definition as auth last
-- published it), and the state of each, which is the query service's own: whether its condition held
-- at the last check (an alert fires when that turns true, once per breach).
CREATE TABLE query_alerts (
    id               uuid PRIMARY KEY,
    app_id           text NOT NULL,
    metric           text NOT NULL,
    metric_name      text,
    custom_stat      text,
    filters          jsonb NOT NULL DEFAULT '{}',
    window_s         integer NOT NULL,
    condition        text NOT NULL,
    threshold        double precision NOT NULL,
    breached         boolean NOT NULL DEFAULT false,
    last_value       double precision,
    last_checked_at  timestamptz
);
