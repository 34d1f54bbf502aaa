-- The query service's copy of the report subscriptions, folded from `auth.report-subscriptions.v1`
-- (recipient and app name as auth last published them), and the schedule, which is the query
-- service's own: the report scheduler claims due rows (FOR UPDATE SKIP LOCKED), mails the numbers of
-- the period ending at next_run_at, and moves next_run_at to the next period's end.
CREATE TABLE query_report_subscriptions (
    id            uuid PRIMARY KEY,
    app_id        uuid NOT NULL,
    app_name      text NOT NULL,
    user_id       uuid NOT NULL,
    username      text NOT NULL,
    email         text NOT NULL,
    frequency     text NOT NULL CHECK (frequency IN ('daily', 'weekly')),
    next_run_at   timestamptz NOT NULL,
    last_sent_at  timestamptz
);
CREATE INDEX query_report_subscriptions_due ON query_report_subscriptions (next_run_at);
