-- A metric series (run, key, rank) is named once, in `metric_series`, and its points carry its integer id: a
-- point's row no longer repeats the run id and the key, so it is written (and read) at a fraction of the cost.
-- The view `metrics` keeps the old row shape for reads; points are written to `metric_points`.
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
INSERT INTO metric_series (run_id, key, rank) SELECT DISTINCT run_id, key, rank FROM metrics ORDER BY run_id, key, rank;
INSERT INTO metric_points (series, step, ts, attempt, seq, value)
    SELECT s.id, m.step, m.ts, m.attempt, m.seq, m.value FROM metrics AS m
    JOIN metric_series AS s ON s.run_id = m.run_id AND s.key = m.key AND s.rank = m.rank;
DROP TABLE metrics;
CREATE VIEW metrics AS
    SELECT s.run_id, s.key, s.rank, p.step, p.ts, p.attempt, p.seq, p.value
    FROM metric_series AS s JOIN metric_points AS p ON p.series = s.id;
