-- Airflow task logs, uploaded by the worker when a task's try ends (plugins/task_log_store.py, Airflow's remote
-- logging) and read by the API server, which cannot see a worker's log folder. Keyed by the log's path relative
-- to the log folder (one path per try: a retry writes a new path). Append-only: a try uploaded again (a deferred
-- task resumes into the same file) adds a row, and readers take the newest. Safe to apply twice.
CREATE TABLE IF NOT EXISTS pipeline.task_logs (
    id             bigserial PRIMARY KEY,
    relative_path  text NOT NULL CHECK (relative_path <> '' AND relative_path NOT LIKE '/%'),
    content        text NOT NULL,
    size_bytes     bigint NOT NULL CHECK (size_bytes >= 0),  -- of the file as uploaded
    hostname       text NOT NULL,                            -- the worker that wrote it
    uploaded_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS task_logs_by_path ON pipeline.task_logs (relative_path, id DESC);

DROP TRIGGER IF EXISTS task_logs_append_only ON pipeline.task_logs;
CREATE TRIGGER task_logs_append_only
    BEFORE UPDATE OR DELETE ON pipeline.task_logs
    FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change();

DROP TRIGGER IF EXISTS task_logs_no_truncate ON pipeline.task_logs;
CREATE TRIGGER task_logs_no_truncate
    BEFORE TRUNCATE ON pipeline.task_logs
    FOR EACH STATEMENT EXECUTE FUNCTION pipeline.refuse_truncate();
