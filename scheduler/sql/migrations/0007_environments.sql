-- A run records the registered environment it runs in at its exact version (the spec and its hash are in `spec`).
ALTER TABLE runs ADD COLUMN env_name TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN env_version TEXT NOT NULL DEFAULT '';
-- Registered environments, per workspace; a version never changes once created.
CREATE TABLE environments (
    workspace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    tags        TEXT NOT NULL DEFAULT '{}',
    spec        TEXT NOT NULL,            -- JSON of the normalized spec
    created_at  REAL NOT NULL,
    created_by  TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (workspace, name, version)
) WITHOUT ROWID;
