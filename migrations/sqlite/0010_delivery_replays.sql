-- A verified delivery is taken once by its body too: X-GitHub-Delivery is not covered by the
-- signature, so a replay of a signed body can carry a new id. Rows from before have no digest.
ALTER TABLE deliveries ADD COLUMN digest TEXT;
CREATE UNIQUE INDEX deliveries_verified_digest ON deliveries (digest) WHERE verified = 1;

-- Rejected deliveries are a sample (the newest are kept, see store::deliveries) and a count, so
-- that strangers cannot fill the disk one forged request at a time.
CREATE INDEX deliveries_rejected ON deliveries (seq) WHERE verified = 0;
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
