-- A distributed run's processes each log metrics: a point carries the global rank that logged it, and the
-- resend key is per (run, attempt, rank, seq, key) since each rank has a records file of its own.
CREATE TABLE metrics_ranked (
    run_id   TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    rank     INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    key      TEXT NOT NULL,
    step     INTEGER NOT NULL,
    value    REAL,                        -- NULL stores NaN (SQLite turns NaN into NULL)
    ts       REAL NOT NULL,
    PRIMARY KEY (run_id, attempt, rank, seq, key)
) WITHOUT ROWID;
INSERT INTO metrics_ranked (run_id, attempt, rank, seq, key, step, value, ts)
    SELECT run_id, attempt, 0, seq, key, step, value, ts FROM metrics;
DROP TABLE metrics;
ALTER TABLE metrics_ranked RENAME TO metrics;
CREATE INDEX metrics_series ON metrics (run_id, key, step);
