-- Users' tokens: an id to list and revoke them by, the name of the user they stand for, an expiry, a revocation.
ALTER TABLE tokens ADD COLUMN id TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN expires_at REAL NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN revoked_at REAL NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
UPDATE tokens SET id = 'tok-' || substr(sha256, 1, 12), name = role WHERE id = '';
CREATE UNIQUE INDEX tokens_id ON tokens (id);
-- Join tokens: each buys at most `uses_left` node enrollments until it expires.
CREATE TABLE join_tokens (
    id         TEXT PRIMARY KEY,
    sha256     TEXT NOT NULL UNIQUE,
    uses_left  INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL DEFAULT ''
);
-- A node is bound to the key of its first enrollment; the bearer node tokens are gone (nodes enroll again).
ALTER TABLE nodes RENAME COLUMN token_sha TO key_sha256;
UPDATE nodes SET key_sha256 = '';
ALTER TABLE nodes ADD COLUMN cert_serial TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN approved INTEGER NOT NULL DEFAULT 1;
-- Who submitted each run: the name of the token.
ALTER TABLE runs ADD COLUMN submitter TEXT NOT NULL DEFAULT '';
-- Storage stays content-addressed; a snapshot is visible to the workspaces that uploaded it.
CREATE TABLE snapshot_workspaces (
    sha256    TEXT NOT NULL,
    workspace TEXT NOT NULL,
    PRIMARY KEY (sha256, workspace)
) WITHOUT ROWID;
INSERT OR IGNORE INTO snapshot_workspaces (sha256, workspace) SELECT DISTINCT snapshot_sha256, workspace FROM runs;
-- Every mutating call, appended: who, what, on what, from where, and how it ended.
CREATE TABLE audit (
    id        INTEGER PRIMARY KEY,
    at        REAL NOT NULL,
    user      TEXT NOT NULL,
    workspace TEXT NOT NULL,
    method    TEXT NOT NULL,
    target    TEXT NOT NULL,
    peer      TEXT NOT NULL,
    code      TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at);
