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
    create_time BIGINT NOT NULL,   -- unix ms
    size BIGINT NOT NULL,          -- bytes of the archive, compressed
    build_id TEXT
);
CREATE INDEX uploads_by_build ON uploads (build_id);
CREATE TABLE upload_chunks (
    upload_id TEXT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,           -- from 0; an empty archive has one empty chunk
    data BYTEA NOT NULL,
    PRIMARY KEY (upload_id, seq)
);

-- Processes sharing the store are told of changes as they commit (LISTEN/NOTIFY), rather than
-- finding them on a poll: `builder_queued` (payload: the pool) when a build is queued or queued
-- again, for the workers; `builder_build` (payload: the build's id) when a build's status or a
-- step's changes or log lines are added, for the log's followers. Made by triggers so that every
-- statement that queues or moves a build tells, whichever code path runs it; a lease's renewal
-- (every second, for each running build) changes neither, and tells nothing. PostgreSQL delivers
-- a notification once its transaction commits, and folds duplicates within one.
CREATE FUNCTION builder_notify_build() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'QUEUED' THEN
        PERFORM pg_notify('builder_queued', NEW.pool);
    END IF;
    PERFORM pg_notify('builder_build', NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER builds_notify AFTER INSERT OR UPDATE OF status ON builds
    FOR EACH ROW EXECUTE FUNCTION builder_notify_build();

CREATE FUNCTION builder_notify_build_part() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('builder_build', NEW.build_id);
    RETURN NULL;
END $$;
CREATE TRIGGER steps_notify AFTER UPDATE ON steps
    FOR EACH ROW EXECUTE FUNCTION builder_notify_build_part();
CREATE TRIGGER log_chunks_notify AFTER INSERT ON log_chunks
    FOR EACH ROW EXECUTE FUNCTION builder_notify_build_part();
