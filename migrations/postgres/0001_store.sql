-- The store on PostgreSQL, for servers and machines that share it: the same tables as SQLite's
-- migrations 0001 to 0010 build up, in one step. Times are unix milliseconds and structured values
-- JSON text, as on SQLite, so that both dialects read their rows with the same code; the one
-- query into a JSON value (a build's branch) is served by an expression index. Ids sort by their
-- bytes (COLLATE "C"), as on SQLite: a prefix of an id is a range of the primary key, and lists
-- page in the same order on both.
CREATE TABLE builds (
    id               TEXT COLLATE "C" PRIMARY KEY,
    status           TEXT NOT NULL,
    create_time      BIGINT NOT NULL,
    start_time       BIGINT,
    finish_time      BIGINT,
    source           TEXT NOT NULL,
    substitutions    TEXT NOT NULL,
    plan             TEXT NOT NULL,
    images           TEXT NOT NULL DEFAULT '[]',
    templates        TEXT NOT NULL DEFAULT '[]',
    failure          TEXT,
    -- A build queued by the service carries what to run until it runs; `builder submit`'s none.
    trigger_name     TEXT,
    delivery_id      TEXT,
    request          TEXT,
    schedule_name    TEXT,
    -- Who runs a started build, until when their claim lasts unless renewed, and whether a cancel
    -- was asked for: the queue's protocol between processes and machines.
    holder           TEXT,
    lease_until      BIGINT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
);
-- The queue's claim reads the oldest queued build from here, skipping rows other claimers hold.
CREATE INDEX builds_queued ON builds (status, create_time, id) WHERE request IS NOT NULL;
-- The builds list pages newest first under any one filter, each from an index in that order.
CREATE INDEX builds_by_time ON builds (create_time, id);
CREATE INDEX builds_by_status ON builds (status, create_time, id);
CREATE INDEX builds_by_trigger ON builds (trigger_name, create_time, id);
CREATE INDEX builds_by_schedule ON builds (schedule_name, create_time, id);
CREATE INDEX builds_by_branch ON builds (((substitutions::jsonb) ->> 'BRANCH_NAME'), create_time, id);

CREATE TABLE steps (
    build_id     TEXT COLLATE "C" NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    idx          BIGINT NOT NULL,
    step_id      TEXT,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    exit_code    BIGINT,
    start_time   BIGINT,
    finish_time  BIGINT,
    image_digest TEXT,
    detail       TEXT,
    output       BYTEA,
    PRIMARY KEY (build_id, idx)
);

-- A build's log as compressed chunks of consecutive lines (`core::logs::encode_chunk`): the chunk
-- at `first_seq` holds lines first_seq .. first_seq + lines - 1 (SQLite's migration 0009). There
-- is no `log_lines`: no PostgreSQL store ever kept a row per line.
CREATE TABLE log_chunks (
    build_id  TEXT COLLATE "C" NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    first_seq BIGINT NOT NULL,
    lines     BIGINT NOT NULL,
    data      BYTEA NOT NULL,
    PRIMARY KEY (build_id, first_seq)
);

-- Deliveries as received. Verified ones are unique by id and by body (replays); rejected ones
-- are a sample of the newest, counted in `counters`.
CREATE TABLE deliveries (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT NOT NULL,
    event        TEXT NOT NULL,
    receive_time BIGINT NOT NULL,
    verified     BOOLEAN NOT NULL,
    digest       TEXT,
    summary      TEXT NOT NULL,
    -- PENDING: some triggers wait for the push's changed files; DONE: every trigger decided.
    state        TEXT NOT NULL,
    payload      BYTEA,
    results      TEXT NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX deliveries_verified_id ON deliveries (id) WHERE verified;
CREATE UNIQUE INDEX deliveries_verified_digest ON deliveries (digest) WHERE verified;
CREATE INDEX deliveries_pending ON deliveries (seq) WHERE state = 'PENDING';
CREATE INDEX deliveries_rejected ON deliveries (seq) WHERE NOT verified;
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

-- Schedules: a run is claimed by moving next_run on, only if it still holds the value the
-- scheduler read, in the transaction that queues the run's build.
CREATE TABLE schedules (
    name           TEXT PRIMARY KEY,
    spec           TEXT NOT NULL,
    next_run       BIGINT NOT NULL,
    last_scheduled BIGINT,
    last_build_id  TEXT,
    paused         BOOLEAN NOT NULL DEFAULT FALSE,
    last_error     TEXT
);
CREATE TABLE skipped_runs (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schedule    TEXT NOT NULL,
    first_time  BIGINT NOT NULL,
    last_time   BIGINT NOT NULL,
    count       BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    record_time BIGINT NOT NULL
);
CREATE INDEX skipped_runs_by_schedule ON skipped_runs (schedule, seq);
