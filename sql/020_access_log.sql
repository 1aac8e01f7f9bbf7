-- Who saw what (issue 30): every read of patient-level data appends one row here. Safe to apply twice.
-- Append-only, like the promotion history: UPDATE, DELETE and TRUNCATE are refused by the same functions.
-- No row names a patient: `what` is the resource and its filters, never the ids read, so an erasure
-- never has to touch this log.
CREATE TABLE IF NOT EXISTS pipeline.access_log (
    entry_id   bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    principal  text NOT NULL,                 -- who: cli:<user>, the API token's name, the Airflow user
    channel    text NOT NULL CHECK (channel IN ('cli', 'rest', 'view')),
    what       text NOT NULL,                 -- the resource read: quarantine, predict, quarantine.csv, ...
    model      text,
    rows       integer NOT NULL CHECK (rows >= 0),
    request    text NOT NULL                  -- the command line, or the HTTP method, path and request id
);
CREATE INDEX IF NOT EXISTS access_log_at_idx ON pipeline.access_log (at);
CREATE INDEX IF NOT EXISTS access_log_principal_idx ON pipeline.access_log (principal, at);

DROP TRIGGER IF EXISTS access_log_append_only ON pipeline.access_log;
CREATE TRIGGER access_log_append_only
    BEFORE UPDATE OR DELETE ON pipeline.access_log
    FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change();

DROP TRIGGER IF EXISTS access_log_no_truncate ON pipeline.access_log;
CREATE TRIGGER access_log_no_truncate
    BEFORE TRUNCATE ON pipeline.access_log
    FOR EACH STATEMENT EXECUTE FUNCTION pipeline.refuse_truncate();
