-- Drift is judged on the rows training would take (issue 32): the window's rows that the contract
-- quarantines are left out of the comparison and recorded here as a data-quality signal, never as drift.
-- Safe to apply twice.
ALTER TABLE pipeline.drift_reports ADD COLUMN IF NOT EXISTS quarantined_rows integer NOT NULL DEFAULT 0;
ALTER TABLE pipeline.drift_reports ADD COLUMN IF NOT EXISTS quarantine_reasons jsonb NOT NULL DEFAULT '{}'::jsonb;
COMMENT ON COLUMN pipeline.drift_reports.quarantined_rows IS
    'rows of the window the contract quarantined (left out of the comparison: a quality signal, not drift)';
COMMENT ON COLUMN pipeline.drift_reports.quarantine_reasons IS 'reason code -> rows of the window carrying it';
