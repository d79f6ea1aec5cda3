-- What admins allow on a node: active, cordoned (no new runs) or draining (no new runs; shown Drained once empty).
ALTER TABLE nodes ADD COLUMN schedule TEXT NOT NULL DEFAULT 'active';
