-- The queue loop looks for pending deliveries after every accepted one: without this index that
-- is a scan of every delivery ever received.
CREATE INDEX deliveries_pending ON deliveries (seq) WHERE state = 'PENDING';
