-- The builds list pages newest first (create_time, then id, descending) under any one filter:
-- each filter has an index in that order, so a page, and the page after a given build, reads its
-- own rows and no others however many builds the store keeps.
DROP INDEX builds_by_create_time;
CREATE INDEX builds_by_time ON builds (create_time, id);
CREATE INDEX builds_by_status ON builds (status, create_time, id);
CREATE INDEX builds_by_trigger ON builds (trigger_name, create_time, id);
CREATE INDEX builds_by_schedule ON builds (schedule_name, create_time, id);
CREATE INDEX builds_by_branch ON builds (json_extract(substitutions, '$.BRANCH_NAME'), create_time, id);
