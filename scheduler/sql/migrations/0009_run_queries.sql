-- `runyard runs` filters by submitter, experiment, state and node in SQL, newest first, and `runyard experiments`
-- counts the runs of each experiment: each filter walks an index of its own rather than every run of the
-- workspace.
CREATE INDEX runs_workspace_submitter ON runs (workspace, submitter, created_at);
CREATE INDEX runs_workspace_experiment ON runs (workspace, experiment, created_at);
CREATE INDEX runs_workspace_state ON runs (workspace, state, created_at);
CREATE INDEX runs_node ON runs (node_id, created_at) WHERE node_id IS NOT NULL;
