-- What `builder serve` adds: GitHub deliveries, and builds queued from them.

-- One row per delivery received. Verified deliveries are unique by their X-GitHub-Delivery id, so
-- a redelivery finds its row and queues nothing; rejected ones are kept for the record only.
CREATE TABLE deliveries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL,
    event        TEXT NOT NULL,
    receive_time INTEGER NOT NULL,
    verified     INTEGER NOT NULL,
    -- Why it was rejected, or what it is ("push of branch main to acme/app").
    summary      TEXT NOT NULL,
    -- PENDING: some triggers wait for the push's changed files; DONE: every trigger decided.
    state        TEXT NOT NULL,
    -- The verified body, kept while PENDING so a restart can finish deciding.
    payload      BLOB,
    -- For each trigger considered: {"trigger", "buildId"} or {"trigger", "reason"}.
    results      TEXT NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX deliveries_verified_id ON deliveries (id) WHERE verified = 1;

-- A build queued by the service carries what to run until it runs (the trigger, the commit, the
-- built-ins); builds that `builder submit` runs at once have none.
ALTER TABLE builds ADD COLUMN trigger_name TEXT;
ALTER TABLE builds ADD COLUMN delivery_id TEXT;
ALTER TABLE builds ADD COLUMN request TEXT;
CREATE INDEX builds_queued ON builds (status, create_time) WHERE request IS NOT NULL;
