-- Triggers and schedules created through the API (issue 16): kept here, not as files in one
-- server's directories, so that every server sharing the store serves and fires the same ones.
-- `body` is the YAML or JSON text as the API received it (and checked it). The files of
-- `--triggers` and `--schedules` stay the operator's and are not here.
CREATE TABLE api_resources (
    kind TEXT NOT NULL,            -- 'trigger' or 'schedule'
    name TEXT NOT NULL,
    body BLOB NOT NULL,
    update_time INTEGER NOT NULL,  -- unix ms
    PRIMARY KEY (kind, name)
);
