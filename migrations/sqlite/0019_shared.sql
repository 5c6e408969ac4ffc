-- What every process sharing the store must see, not one machine's disk (issue 16).
--
-- The source archives `builder submit --server` uploads: the process that runs the build, on
-- whatever machine, unpacks it from here. An archive is kept as chunks (`upload_chunks`), so that
-- neither side holds more than a chunk of a big one at a time in a statement, and PostgreSQL's
-- 1 GB cap on one value is never reached. `build_id` is the first build submitted over it (a
-- retry names the same upload): the retention's purge removes an upload with its builds, or by
-- its age when no build used it.
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    create_time INTEGER NOT NULL,  -- unix ms
    size INTEGER NOT NULL,         -- bytes of the archive, compressed
    build_id TEXT
);
CREATE INDEX uploads_by_build ON uploads (build_id);
CREATE TABLE upload_chunks (
    upload_id TEXT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,          -- from 0; an empty archive has one empty chunk
    data BLOB NOT NULL,
    PRIMARY KEY (upload_id, seq)
);
