-- Who runs a started build, until when their claim lasts unless renewed (unix milliseconds), and
-- whether a cancel was asked for: the queue's protocol between processes and machines.
ALTER TABLE builds ADD COLUMN holder TEXT;
ALTER TABLE builds ADD COLUMN lease_until INTEGER;
ALTER TABLE builds ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
