-- The node state table: every node transition (state or schedule) is an appended node event.
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
UPDATE nodes SET state = 'Joining' WHERE state = 'Joined';
-- The node on which a run's earlier attempt failed on the agent's side; failing the same way on another node
-- fails the run instead of bouncing it around the cluster.
ALTER TABLE runs ADD COLUMN agent_error_node TEXT NOT NULL DEFAULT '';
-- The kind of a queued run's pending reason (scheduler, capacity, no_node, unfit, behind, quota, requeued).
ALTER TABLE runs ADD COLUMN pending_kind TEXT NOT NULL DEFAULT 'scheduler';
UPDATE runs SET pending_kind = '' WHERE state != 'Queued';
