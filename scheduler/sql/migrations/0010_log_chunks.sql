-- A log row holds a run of records of one (rank, stream) with consecutive sequence numbers (`store/records.py`):
-- ingesting a batch of lines writes a few rows, not one per line. Every existing row is a run of one record.
CREATE TABLE logs_chunked (
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
INSERT INTO logs_chunked (id, run_id, attempt, rank, stream, seq, ts, flags, lines, meta, data)
    SELECT id, run_id, attempt, rank, stream, seq, ts, flags, 1, NULL, data FROM logs;
DROP TABLE logs;
ALTER TABLE logs_chunked RENAME TO logs;
CREATE UNIQUE INDEX logs_key ON logs (run_id, attempt, rank, stream, seq);
CREATE INDEX logs_run ON logs (run_id, id);
