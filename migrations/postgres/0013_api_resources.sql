-- Triggers and schedules created through the API (issue 16): kept here, not as files in one
-- server's directories, so that every server sharing the store serves and fires the same ones.
-- `body` is the YAML or JSON text as the API received it (and checked it). The files of
-- `--triggers` and `--schedules` stay the operator's and are not here.
CREATE TABLE api_resources (
    kind TEXT NOT NULL,            -- 'trigger' or 'schedule'
    name TEXT NOT NULL,
    body BYTEA NOT NULL,
    update_time BIGINT NOT NULL,   -- unix ms
    PRIMARY KEY (kind, name)
);

-- Every process reads them again when one is created, replaced or deleted (`builder_resources`,
-- no payload: a process reads them all, and PostgreSQL folds duplicates within a transaction),
-- as 0010's triggers tell of builds.
CREATE FUNCTION builder_notify_resources() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('builder_resources', '');
    RETURN NULL;
END $$;
CREATE TRIGGER api_resources_notify AFTER INSERT OR UPDATE OR DELETE ON api_resources
    FOR EACH ROW EXECUTE FUNCTION builder_notify_resources();
