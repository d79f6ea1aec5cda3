-- Decisions the head takes about nodes (autoscaler, quarantine), kept for `runyard nodes` and `runyard queue`.
CREATE TABLE cluster_events (
    id      INTEGER PRIMARY KEY,
    at      REAL NOT NULL,
    cluster TEXT NOT NULL,
    node    TEXT NOT NULL DEFAULT '',
    kind    TEXT NOT NULL,               -- autoscaler | quarantine
    detail  TEXT NOT NULL
);
CREATE INDEX cluster_events_cluster ON cluster_events (cluster, id);
-- Runs in a row this node failed with node-side errors; at the head's quarantine_after it is quarantined.
ALTER TABLE nodes ADD COLUMN failures_in_row INTEGER NOT NULL DEFAULT 0;
