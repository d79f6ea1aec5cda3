-- The schema of a fresh database. Migrations must end at exactly this schema (tests/test_migrations.py).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE workspaces (
    name       TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);

CREATE TABLE tokens (
    sha256     TEXT PRIMARY KEY,          -- sha256 of the token; the token itself is never stored
    workspace  TEXT NOT NULL REFERENCES workspaces(name),
    role       TEXT NOT NULL,             -- admin | user
    created_at REAL NOT NULL
, id TEXT NOT NULL DEFAULT '', name TEXT NOT NULL DEFAULT '', expires_at REAL NOT NULL DEFAULT 0, revoked_at REAL NOT NULL DEFAULT 0, created_by TEXT NOT NULL DEFAULT '');
CREATE UNIQUE INDEX tokens_id ON tokens (id);

CREATE TABLE join_tokens (
    id         TEXT PRIMARY KEY,
    sha256     TEXT NOT NULL UNIQUE,
    uses_left  INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL DEFAULT ''
);

CREATE TABLE experiments (
    workspace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (workspace, name)
);

CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    workspace       TEXT NOT NULL,
    experiment      TEXT NOT NULL,
    parent_id       TEXT,
    display_name    TEXT NOT NULL,
    state           TEXT NOT NULL,
    desired_state   TEXT NOT NULL DEFAULT 'run',
    reason          TEXT NOT NULL DEFAULT '',
    exit_code       INTEGER,
    pending_reason  TEXT NOT NULL DEFAULT '',
    attempt         INTEGER NOT NULL DEFAULT 0,
    node_id         TEXT,
    gpu_indices     TEXT NOT NULL DEFAULT '[]',
    spec            TEXT NOT NULL,        -- JSON of the run spec
    snapshot_sha256 TEXT NOT NULL,
    outputs_sha256  TEXT NOT NULL DEFAULT '',
    tags            TEXT NOT NULL DEFAULT '{}',
    properties      TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT,
    created_at      REAL NOT NULL,
    started_at      REAL,
    ended_at        REAL
, priority INTEGER NOT NULL DEFAULT 200, agent_error_node TEXT NOT NULL DEFAULT '', pending_kind TEXT NOT NULL DEFAULT 'scheduler', submitter TEXT NOT NULL DEFAULT '', env_name TEXT NOT NULL DEFAULT '', env_version TEXT NOT NULL DEFAULT '');
CREATE UNIQUE INDEX runs_idempotency ON runs (workspace, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_workspace_created ON runs (workspace, created_at);
CREATE INDEX runs_live ON runs (state) WHERE state IN ('Queued', 'Preparing', 'Running', 'Finalizing');
CREATE INDEX runs_parent ON runs (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX runs_queue ON runs (priority DESC, created_at, id) WHERE state = 'Queued';
CREATE INDEX runs_workspace_submitter ON runs (workspace, submitter, created_at);
CREATE INDEX runs_workspace_experiment ON runs (workspace, experiment, created_at);
CREATE INDEX runs_workspace_state ON runs (workspace, state, created_at);
CREATE INDEX runs_node ON runs (node_id, created_at) WHERE node_id IS NOT NULL;
CREATE INDEX runs_gpu_held ON runs (ended_at) WHERE gpu_indices != '[]';

CREATE TABLE run_events (
    id         INTEGER PRIMARY KEY,
    run_id     TEXT NOT NULL,
    at         REAL NOT NULL,
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    event      TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX run_events_run ON run_events (run_id, id);

CREATE TABLE nodes (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    key_sha256  TEXT NOT NULL,
    cluster    TEXT NOT NULL,
    labels     TEXT NOT NULL DEFAULT '{}',
    capacity   TEXT NOT NULL DEFAULT '{}',
    state      TEXT NOT NULL,
    last_seen  REAL NOT NULL,
    joined_at  REAL NOT NULL
, schedule TEXT NOT NULL DEFAULT 'active', failures_in_row INTEGER NOT NULL DEFAULT 0, cert_serial TEXT NOT NULL DEFAULT '', approved INTEGER NOT NULL DEFAULT 1);

CREATE TABLE node_events (
    id         INTEGER PRIMARY KEY,
    node_id    TEXT NOT NULL,
    at         REAL NOT NULL,
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    event      TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX node_events_node ON node_events (node_id, id);

CREATE TABLE cluster_events (
    id      INTEGER PRIMARY KEY,
    at      REAL NOT NULL,
    cluster TEXT NOT NULL,
    node    TEXT NOT NULL DEFAULT '',
    kind    TEXT NOT NULL,               -- autoscaler | quarantine
    detail  TEXT NOT NULL
);
CREATE INDEX cluster_events_cluster ON cluster_events (cluster, id);

-- A run of records of one (rank, stream) with consecutive sequence numbers per row (`store/records.py`);
-- (run, attempt, rank, stream, seq) keeps chunks apart, and an append stores only the records not held yet.
CREATE TABLE "logs" (
    id        INTEGER PRIMARY KEY,
    run_id    TEXT NOT NULL,
    attempt   INTEGER NOT NULL,
    rank      INTEGER NOT NULL,
    stream    INTEGER NOT NULL,
    seq       INTEGER NOT NULL,           -- the first record's; the others' follow it, one by one
    ts        REAL NOT NULL,              -- the first record's
    flags     INTEGER NOT NULL,           -- the first record's: 1 = continued on the next record, 2 = gap record
    lines     INTEGER NOT NULL,           -- how many records the row holds (before the blobs: read without them)
    meta      BLOB,                       -- NULL for one record; else each one's length, flags and time, packed
    data      BLOB NOT NULL               -- the records' bytes, one after the other
);
CREATE UNIQUE INDEX logs_key ON logs (run_id, attempt, rank, stream, seq);
CREATE INDEX logs_run ON logs (run_id, id);

CREATE TABLE metric_series (
    id       INTEGER PRIMARY KEY,
    run_id   TEXT NOT NULL,
    key      TEXT NOT NULL,
    rank     INTEGER NOT NULL,
    UNIQUE (run_id, key, rank)
);
CREATE TABLE metric_points (
    series   INTEGER NOT NULL,            -- metric_series.id
    step     INTEGER NOT NULL,
    ts       REAL NOT NULL,
    attempt  INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    value    REAL,                        -- NULL stores NaN (SQLite turns NaN into NULL)
    PRIMARY KEY (series, step, ts, attempt, seq)
) WITHOUT ROWID;
-- Points in the shape reads want: one series (a chart, a summary) is one range scan of metric_points.
CREATE VIEW metrics AS
    SELECT s.run_id, s.key, s.rank, p.step, p.ts, p.attempt, p.seq, p.value
    FROM metric_series AS s JOIN metric_points AS p ON p.series = s.id;
CREATE TABLE metric_records (
    run_id   TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    rank     INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (run_id, attempt, rank, seq)
) WITHOUT ROWID;

-- The agents' samples of each attempt's use of its node (CPU, memory, GPUs: `system/...` keys), kept apart from
-- the runs' own metrics. One row per (run, key, attempt, sample): a resent sample is stored once.
CREATE TABLE system_metrics (
    run_id   TEXT NOT NULL,
    key      TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    ts       REAL NOT NULL,
    value    REAL,
    PRIMARY KEY (run_id, key, attempt, seq)
) WITHOUT ROWID;

CREATE TABLE params (
    run_id TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;

CREATE TABLE snapshot_workspaces (
    sha256    TEXT NOT NULL,
    workspace TEXT NOT NULL,
    PRIMARY KEY (sha256, workspace)
) WITHOUT ROWID;

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
