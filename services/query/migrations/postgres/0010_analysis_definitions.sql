-- Definitions the query service owns per app (issue #20, Reports): goals, segments and saved funnels.
-- Each is read only together with its app_id (one tenant never sees another's); `spec` holds the
-- checked definition (services/query/goals.py, segments.py, saved funnels) as JSON.
CREATE TABLE query_goals (
    id          uuid PRIMARY KEY,
    app_id      text NOT NULL,
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('event', 'page')),
    match       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, name)
);
CREATE TABLE query_segments (
    id          uuid PRIMARY KEY,
    app_id      text NOT NULL,
    name        text NOT NULL,
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, name)
);
CREATE TABLE query_saved_funnels (
    id          uuid PRIMARY KEY,
    app_id      text NOT NULL,
    name        text NOT NULL,
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, name)
);
