-- Queue priority: low 100, medium 200 (default), high 300; admins may set any integer.
ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 200;
CREATE INDEX runs_queue ON runs (priority DESC, created_at, id) WHERE state = 'Queued';
