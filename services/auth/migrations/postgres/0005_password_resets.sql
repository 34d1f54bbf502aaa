-- Password resets by email: one row per mailed one-time token, of which only the SHA-256 is stored.
-- A token works once (used_at) and until expires_at (an hour after it was mailed).
CREATE TABLE password_resets (
    token_hash  text PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX password_resets_user ON password_resets (user_id);

-- An account may have no password (signed up through an OpenID Connect provider).
ALTER TABLE users ALTER COLUMN password_hash DROP NOT NULL;
