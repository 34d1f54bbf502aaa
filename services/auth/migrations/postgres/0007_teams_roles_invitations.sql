-- Teams: their members (each with a role) and the invitations by email that make members.
-- An app with a team_id belongs to the team: its members' roles decide who may do what with it.
CREATE TABLE teams (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE team_members (
    team_id     uuid NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role        text NOT NULL CHECK (role IN ('viewer', 'admin', 'owner')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user ON team_members (user_id);

-- Only the SHA-256 of an invitation's token is stored; the token is mailed once. Single use.
CREATE TABLE team_invitations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    team_id     uuid NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    email       text NOT NULL,
    role        text NOT NULL CHECK (role IN ('viewer', 'admin', 'owner')),
    token_hash  text NOT NULL UNIQUE,
    invited_by  uuid REFERENCES users(id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz,
    accepted_by uuid REFERENCES users(id) ON DELETE SET NULL
);
CREATE INDEX team_invitations_team ON team_invitations (team_id);

ALTER TABLE apps ADD COLUMN team_id uuid REFERENCES teams(id) ON DELETE RESTRICT;
CREATE INDEX apps_team ON apps (team_id);
