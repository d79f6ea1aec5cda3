-- Metric points stored in series order: the table is clustered on (run, key, rank, step, ts), so one series (a
-- chart, a summary) is one range scan instead of an index probe per point. The resend key stays unique on
-- (run, attempt, rank, seq, key): a resent point is still ignored.
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
INSERT INTO metrics_new (run_id, key, rank, step, ts, attempt, seq, value)
    SELECT run_id, key, rank, step, ts, attempt, seq, value FROM metrics;
DROP TABLE metrics;
ALTER TABLE metrics_new RENAME TO metrics;
CREATE UNIQUE INDEX metrics_sent ON metrics (run_id, attempt, rank, seq, key);
