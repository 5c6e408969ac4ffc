-- What each retention pass removed (issue 18), for the console: the newest passes are kept (see
-- store::retention), older ones go with the pass that records a new one.
CREATE TABLE retention_passes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    finish_time INTEGER NOT NULL,
    took_ms     INTEGER NOT NULL,
    builds      INTEGER NOT NULL,
    deliveries  INTEGER NOT NULL,
    uploads     INTEGER NOT NULL,
    workspaces  INTEGER NOT NULL,
    mirrors     INTEGER NOT NULL,
    -- What stopped the pass short, if something did.
    error       TEXT
);
