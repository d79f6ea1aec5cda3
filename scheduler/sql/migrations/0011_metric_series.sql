-- Metric points stored in series order: the table is clustered on (run, key, rank, step, ts), so one series (a
-- chart, a summary) is one range scan instead of an index probe per point. A resent record is known by its row
-- in `metric_records` (one per record line that held points, not one per point): its points are not stored again.
CREATE TABLE metrics_new (
    run_id   TEXT NOT NULL,
    key      TEXT NOT NULL,
    rank     INTEGER NOT NULL,
    step     INTEGER NOT NULL,
    ts       REAL NOT NULL,
    attempt  INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    value    REAL,                        -- NULL stores NaN (SQLite turns NaN into NULL)
    PRIMARY KEY (run_id, key, rank, step, ts, attempt, seq)
) WITHOUT ROWID;
INSERT OR IGNORE INTO metrics_new (run_id, key, rank, step, ts, attempt, seq, value)
    SELECT run_id, key, rank, step, ts, attempt, seq, value FROM metrics;
CREATE TABLE metric_records (
    run_id   TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    rank     INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (run_id, attempt, rank, seq)
) WITHOUT ROWID;
INSERT OR IGNORE INTO metric_records (run_id, attempt, rank, seq) SELECT run_id, attempt, rank, seq FROM metrics;
DROP TABLE metrics;
ALTER TABLE metrics_new RENAME TO metrics;
