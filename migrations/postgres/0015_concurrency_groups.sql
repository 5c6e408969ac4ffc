-- Builds of a trigger's concurrency group (`concurrency: {group, limit}`): at most
-- `concurrency_limit` builds of one `concurrency_group` are WORKING at once; the others wait
-- QUEUED, unclaimed. NULL for a build in no group.
ALTER TABLE builds ADD COLUMN concurrency_group TEXT;
ALTER TABLE builds ADD COLUMN concurrency_limit BIGINT;
-- The claim counts a group's WORKING builds.
CREATE INDEX builds_concurrency_group ON builds (concurrency_group, status)
    WHERE concurrency_group IS NOT NULL;
