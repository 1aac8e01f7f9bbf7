-- The team artifact store (PIPELINE_ARTIFACT_STORE=postgres): every stored file's bytes as a
-- PostgreSQL large object, indexed by the SHA-256 of those bytes, so a worker on another machine
-- can read what one worker wrote. Safe to apply twice. Rows are append-only: a digest's bytes are
-- written once, in the transaction that inserts its row, and never replaced.
CREATE TABLE IF NOT EXISTS pipeline.artifact_objects (
    digest      text PRIMARY KEY CHECK (digest ~ '^[0-9a-f]{64}$'),  -- SHA-256 of the bytes
    kind        text NOT NULL,                                        -- snapshots, models, reports, cards, ...
    suffix      text NOT NULL,                                        -- the file name's ending: .parquet, .joblib
    size_bytes  bigint NOT NULL CHECK (size_bytes >= 0),
    oid         oid NOT NULL UNIQUE,                                  -- the large object holding the bytes
    stored_at   timestamptz NOT NULL DEFAULT now()
);

DROP TRIGGER IF EXISTS artifact_objects_append_only ON pipeline.artifact_objects;
CREATE TRIGGER artifact_objects_append_only
    BEFORE UPDATE OR DELETE ON pipeline.artifact_objects
    FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change();

DROP TRIGGER IF EXISTS artifact_objects_no_truncate ON pipeline.artifact_objects;
CREATE TRIGGER artifact_objects_no_truncate
    BEFORE TRUNCATE ON pipeline.artifact_objects
    FOR EACH STATEMENT EXECUTE FUNCTION pipeline.refuse_truncate();
