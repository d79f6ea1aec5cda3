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
