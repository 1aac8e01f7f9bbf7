-- Airflow task logs, uploaded by the worker when a task's try ends (plugins/task_log_store.py, Airflow's remote
-- logging) and read by the API server, which cannot see a worker's log folder. Keyed by the log's path relative
-- to the log folder (one path per try: a retry writes a new path). While a try runs, its lines are also sent in
-- chunks as they are written (complete = false), so the log of a try whose worker was lost is still there.
-- Append-only: a try uploaded again (a deferred task resumes into the same file) adds a row, and readers take
-- the newest complete one, else the chunks in order. Safe to apply twice.
CREATE TABLE IF NOT EXISTS pipeline.task_logs (
    id             bigserial PRIMARY KEY,
    relative_path  text NOT NULL CHECK (relative_path <> '' AND relative_path NOT LIKE '/%'),
    content        text NOT NULL,
    complete       boolean NOT NULL,                         -- the whole file at the try's end, or a chunk of lines
    size_bytes     bigint NOT NULL CHECK (size_bytes >= 0),  -- of the file as uploaded
    hostname       text NOT NULL,                            -- the worker that wrote it
    uploaded_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS task_logs_by_path ON pipeline.task_logs (relative_path, complete, id);

DROP TRIGGER IF EXISTS task_logs_append_only ON pipeline.task_logs;
CREATE TRIGGER task_logs_append_only
    BEFORE UPDATE OR DELETE ON pipeline.task_logs
    FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change();

DROP TRIGGER IF EXISTS task_logs_no_truncate ON pipeline.task_logs;
CREATE TRIGGER task_logs_no_truncate
    BEFORE TRUNCATE ON pipeline.task_logs
    FOR EACH STATEMENT EXECUTE FUNCTION pipeline.refuse_truncate();
