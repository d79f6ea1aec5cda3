-- Fair share reads the attempts that held GPUs since a time (live ones, or ended after it): a partial index on
-- when they ended holds only the runs that had GPUs, so that read walks those of the window, not every run ever
-- stored (a full scan of the runs, at every start and every few seconds, grew with the history).
CREATE INDEX runs_gpu_held ON runs (ended_at) WHERE gpu_indices != '[]';
