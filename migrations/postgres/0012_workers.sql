-- The processes that run builds (`builder worker`, `builder serve` with its own worker), each
-- under its holder id (the one its builds' leases name): where it runs, the pool it claims from
-- and how many builds it runs at once. It writes its heartbeat (milliseconds since the epoch)
-- as it renews its leases, and `expires` (the heartbeat plus its lease): past that it is not
-- live. A worker that stops removes its row; a dead one's row stays, stale, until it is a day
-- without a heartbeat. Its running builds are read from `builds` by their holder.
CREATE TABLE workers (
    id         TEXT COLLATE "C" PRIMARY KEY,
    host       TEXT NOT NULL,
    pool       TEXT NOT NULL,
    capacity   BIGINT NOT NULL,
    start_time BIGINT NOT NULL,
    heartbeat  BIGINT NOT NULL,
    expires    BIGINT NOT NULL
);
CREATE INDEX workers_by_heartbeat ON workers (heartbeat);
