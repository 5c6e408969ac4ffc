-- A build's log as chunks of consecutive lines, compressed (`core::logs::encode_chunk`): the chunk
-- at `first_seq` holds lines first_seq .. first_seq + lines - 1. One row per line cost ~23× the
-- log's bytes and an INSERT per line (issue 22); a chunk of 128 KiB costs about its compressed
-- size. The logs of builds recorded before stay in log_lines, read as they were.
CREATE TABLE log_chunks (
    build_id  TEXT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    first_seq INTEGER NOT NULL,
    lines     INTEGER NOT NULL,
    data      BLOB NOT NULL,
    PRIMARY KEY (build_id, first_seq)
);
