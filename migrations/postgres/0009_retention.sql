-- SQLite's migration 0018, in this dialect: what each retention pass removed (issue 18).
CREATE TABLE retention_passes (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    finish_time BIGINT NOT NULL,
    took_ms     BIGINT NOT NULL,
    builds      BIGINT NOT NULL,
    deliveries  BIGINT NOT NULL,
    uploads     BIGINT NOT NULL,
    workspaces  BIGINT NOT NULL,
    mirrors     BIGINT NOT NULL,
    error       TEXT
);
