-- SQLite's migration 0016, in this dialect.
-- What GitHub was told of each triggered build (issue 19), a row per build queued while status
-- reporting is on, written in the transaction that queues the build: the reporter's durable
-- work list, so that a restart still reports what was left to report (the end of a build above
-- all). `reported` is the build status GitHub last accepted; `failing` the status whose report
-- failed `attempts` times, the last with `error`, tried again at `next_attempt` (unix ms) unless
-- the failure is `lasting`; `done` once the build's end is reported or given up.
CREATE TABLE github_reports (
    build_id     TEXT COLLATE "C" PRIMARY KEY REFERENCES builds (id) ON DELETE CASCADE,
    reported     TEXT,
    check_run_id BIGINT,
    failing      TEXT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    error        TEXT,
    lasting      BOOLEAN NOT NULL DEFAULT FALSE,
    next_attempt BIGINT NOT NULL DEFAULT 0,
    done         BOOLEAN NOT NULL DEFAULT FALSE
);
-- The reporter reads the open rows on every tick.
CREATE INDEX github_reports_open ON github_reports (next_attempt) WHERE NOT done;
