-- Webhooks of an app (each with its signing secret), their deliveries and every attempt of each;
-- alerts on an app's metrics; the cities whose weather is pulled into an app's custom metrics.
CREATE TABLE webhooks (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id      uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    url         text NOT NULL,
    events      text[] NOT NULL,
    secret      text NOT NULL,
    created_by  uuid REFERENCES users(id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_app ON webhooks (app_id);

-- One row per (webhook, event): an event read twice is delivered once. `body` is the exact JSON
-- sent (and signed) on every attempt; the dispatcher claims due rows with FOR UPDATE SKIP LOCKED.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    webhook_id       uuid NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id         text NOT NULL,
    event_type       text NOT NULL,
    body             text NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (webhook_id, event_id);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    delivery_id  uuid NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    status_code  integer,
    error        text,
    duration_ms  integer NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

CREATE TABLE alerts (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id         uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    user_id        uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name           text NOT NULL,
    metric         text NOT NULL,
    metric_name    text,
    custom_stat    text,
    filters        jsonb NOT NULL DEFAULT '{}',
    window_s       integer NOT NULL,
    condition      text NOT NULL CHECK (condition IN ('above', 'below', 'spike')),
    threshold      double precision NOT NULL,
    channels       text[] NOT NULL,
    firing         boolean NOT NULL DEFAULT false,
    last_fired_at  timestamptz,
    last_value     double precision,
    last_checked_at timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_app ON alerts (app_id);

CREATE TABLE app_weather_cities (
    app_id      uuid PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    cities      text[] NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
