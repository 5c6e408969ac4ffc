-- When a queued build expires (`queueTtl` after it was queued, in milliseconds since the epoch),
-- if it is still QUEUED then; NULL: it waits as long as it takes. Known when the build is queued
-- with its config (a submission) or handed back to the queue for its pool (a trigger's config,
-- read from its commit), so that a build whose pool has no live worker expires all the same.
ALTER TABLE builds ADD COLUMN queue_deadline BIGINT;
CREATE INDEX builds_queue_deadlines ON builds (queue_deadline) WHERE status = 'QUEUED' AND queue_deadline IS NOT NULL;
