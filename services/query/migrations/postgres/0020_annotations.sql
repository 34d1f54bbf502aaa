-- Annotations on an app's time series (issue #20): a note on a day (an all-day one, `day`) or at a
-- moment (`at`), shown as markers on the dashboard's charts. Written with the admin role, read with
-- viewer; the query service's own table, as query_report_subscriptions.
CREATE TABLE query_annotations (
    id          uuid PRIMARY KEY,
    app_id      text NOT NULL,
    day         date,
    at          timestamptz,
    text        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((day IS NULL) <> (at IS NULL))
);
CREATE INDEX query_annotations_app ON query_annotations (app_id);
