-- Builds, their steps and their log lines. Times are unix milliseconds; structured values are JSON.
CREATE TABLE builds (
    id            TEXT PRIMARY KEY,
    status        TEXT NOT NULL,
    create_time   INTEGER NOT NULL,
    start_time    INTEGER,
    finish_time   INTEGER,
    -- Where the source came from, e.g. {"kind":"upload","dir":"/src","files":3,"bytes":143}.
    source        TEXT NOT NULL,
    substitutions TEXT NOT NULL,
    -- The resolved build that ran (steps, images, options).
    plan          TEXT NOT NULL,
    images        TEXT NOT NULL DEFAULT '[]',
    failure       TEXT
);
CREATE INDEX builds_by_create_time ON builds (create_time DESC);

CREATE TABLE steps (
    build_id     TEXT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    idx          INTEGER NOT NULL,
    step_id      TEXT,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    exit_code    INTEGER,
    start_time   INTEGER,
    finish_time  INTEGER,
    image_digest TEXT,
    detail       TEXT,
    PRIMARY KEY (build_id, idx)
);

CREATE TABLE log_lines (
    build_id TEXT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    step     INTEGER NOT NULL,
    stream   TEXT NOT NULL,
    text     TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
);
