-- Read-only links to an app's stats that need no account. Only the SHA-256 of a link's token is
-- stored (and published on auth.apps.v1); the token is shown once. Revoking deletes the row.
CREATE TABLE shared_links (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id        uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    token_hash    text NOT NULL UNIQUE,
    prefix        text NOT NULL,
    password_hash text,
    created_by    uuid REFERENCES users(id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shared_links_app ON shared_links (app_id);
