-- When auth published a key's "expired" state on auth.api-keys.v1 (once per key).
ALTER TABLE api_keys ADD COLUMN expired_announced_at timestamptz;
CREATE INDEX api_keys_expiry_pending ON api_keys (expires_at)
    WHERE revoked_at IS NULL AND expires_at IS NOT NULL AND expired_announced_at IS NULL;
