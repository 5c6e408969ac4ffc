-- Notifications (issue 20). Cloud Build publishes every change of a build's status; so does
-- builder, from `build_events`: a row per status a build takes, in order, written by triggers so
-- that every statement that queues or moves a build publishes, whichever code path and process
-- runs it. The notifier (`service::notifications`) claims events (`claimed_until`, unix ms),
-- turns each into the notifications its filters select and removes it, in one transaction.
CREATE TABLE build_events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id      TEXT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    status        TEXT NOT NULL,
    claimed_until INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX build_events_by_build ON build_events (build_id);
CREATE TRIGGER build_events_of_new_builds AFTER INSERT ON builds
BEGIN
    INSERT INTO build_events (build_id, status) VALUES (NEW.id, NEW.status);
END;
CREATE TRIGGER build_events_of_moves AFTER UPDATE OF status ON builds
WHEN NEW.status IS NOT OLD.status
BEGIN
    INSERT INTO build_events (build_id, status) VALUES (NEW.id, NEW.status);
END;

-- A message for one notifier about one status of a build: `message` is the Pub/Sub message,
-- the same bytes on every attempt; `next_attempt` (unix ms) is when it is due, moved to a claim's
-- end while a notifier sends it; `done` once delivered or given up, `delivered` if delivered;
-- `error` the last attempt's failure (or the filter's, for a notification never sent).
CREATE TABLE notifications (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id     TEXT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    status       TEXT NOT NULL,
    notifier     TEXT NOT NULL,
    message      TEXT NOT NULL,
    create_time  INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL DEFAULT 0,
    done         BOOLEAN NOT NULL DEFAULT FALSE,
    delivered    BOOLEAN NOT NULL DEFAULT FALSE,
    error        TEXT
);
CREATE INDEX notifications_due ON notifications (next_attempt) WHERE NOT done;
CREATE INDEX notifications_by_time ON notifications (create_time DESC, id DESC);
CREATE INDEX notifications_by_build ON notifications (build_id);
-- Every attempt at a notification: when, and its failure (NULL: delivered).
CREATE TABLE notification_attempts (
    notification_id INTEGER NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    attempt         INTEGER NOT NULL,
    time            INTEGER NOT NULL,
    error           TEXT,
    PRIMARY KEY (notification_id, attempt)
);
