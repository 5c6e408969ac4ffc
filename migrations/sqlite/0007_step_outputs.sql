-- What each step wrote to `$BUILDER_OUTPUT/output` (its first 50 KiB): Cloud Build's
-- `results.buildStepOutputs`.
ALTER TABLE steps ADD COLUMN output BLOB;
