-- The pool of workers a queued build waits for (`options.pool.name`'s last part); '' is the
-- default pool (not NULL, so that a claim's `pool = $1` can use the index in both dialects).
-- Claims take the oldest queued build of their pool.
ALTER TABLE builds ADD COLUMN pool TEXT NOT NULL DEFAULT '';
CREATE INDEX builds_queued_by_pool ON builds (pool, create_time, id) WHERE status = 'QUEUED';
