-- A run ends, whatever kills it. Safe to apply twice.
-- While a stage works on a run, its process holds a session advisory lock on the run and names the
-- stage here; a process killed outright (SIGKILL, OOM) loses its connection and so its lock, and the
-- next command marks such a run 'failed' with failure_kind 'abandoned'.
ALTER TABLE pipeline.training_runs ADD COLUMN IF NOT EXISTS active_stage text;   -- NULL between stages
ALTER TABLE pipeline.training_runs ADD COLUMN IF NOT EXISTS owner text;          -- host:pid of the stage's process
ALTER TABLE pipeline.training_runs ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz;  -- last stage start or end

-- Why a failed run failed: 'data' (the rows, the contract or the config: its arrivals are consumed),
-- 'infrastructure' (database, disk, artifact store) or 'abandoned' (the process died): those leave
-- their arrivals to signal again.
ALTER TABLE pipeline.training_runs ADD COLUMN IF NOT EXISTS failure_kind text;
ALTER TABLE pipeline.training_runs DROP CONSTRAINT IF EXISTS training_runs_failure_kind_check;
ALTER TABLE pipeline.training_runs ADD CONSTRAINT training_runs_failure_kind_check
    CHECK (failure_kind IN ('data', 'infrastructure', 'abandoned'));

CREATE INDEX IF NOT EXISTS training_runs_running_idx ON pipeline.training_runs (model) WHERE status = 'running';
