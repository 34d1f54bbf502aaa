-- Scheduled summary emails: an app owner subscribes to a daily or weekly report of one app.
-- The query service's report scheduler claims due rows (FOR UPDATE SKIP LOCKED), mails the numbers
-- of the period ending at next_run_at, and moves next_run_at to the next period's end.
CREATE TABLE report_subscriptions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id        uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    frequency     text NOT NULL CHECK (frequency IN ('daily', 'weekly')),
    next_run_at   timestamptz NOT NULL,
    last_sent_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX report_subscriptions_once ON report_subscriptions (app_id, user_id, frequency);
CREATE INDEX report_subscriptions_due ON report_subscriptions (next_run_at);
