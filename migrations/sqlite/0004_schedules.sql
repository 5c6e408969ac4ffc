-- Schedules (`builder serve --schedules DIR`): what the scheduler keeps of each schedule between
-- evaluations and restarts, the runs it skipped, and which schedule started a build.

CREATE TABLE schedules (
    name           TEXT PRIMARY KEY,
    -- The expression and time zone next_run was computed for: a changed file starts afresh.
    spec           TEXT NOT NULL,
    -- The next run's time (unix ms). A run is claimed by moving it on, only if it still holds the
    -- value the scheduler read, in the transaction that queues the run's build: a run starts once
    -- however many schedulers share the store.
    next_run       INTEGER NOT NULL,
    -- The run started last: the time it was scheduled for, and its build.
    last_scheduled INTEGER,
    last_build_id  TEXT,
    -- Paused through the API (a file's `suspend` is read from the file).
    paused         INTEGER NOT NULL DEFAULT 0,
    -- Why the last attempt to start the due run failed.
    last_error     TEXT
);

-- Runs that did not start, and why: `count` runs scheduled from first_time to last_time.
CREATE TABLE skipped_runs (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule    TEXT NOT NULL,
    first_time  INTEGER NOT NULL,
    last_time   INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    record_time INTEGER NOT NULL
);
CREATE INDEX skipped_runs_by_schedule ON skipped_runs (schedule, seq);

ALTER TABLE builds ADD COLUMN schedule_name TEXT;
