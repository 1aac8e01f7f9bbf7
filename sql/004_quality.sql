-- Data quality: raw and clean snapshots, row counts that reconcile, quarantined rows with reasons.
-- Safe to apply twice.
ALTER TABLE pipeline.snapshots ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'raw';   -- raw | clean
ALTER TABLE pipeline.snapshots ADD COLUMN IF NOT EXISTS parent_hash text;                   -- clean -> its raw snapshot

ALTER TABLE pipeline.validation_results ADD COLUMN IF NOT EXISTS rows_read integer;
ALTER TABLE pipeline.validation_results ADD COLUMN IF NOT EXISTS rows_valid integer;
ALTER TABLE pipeline.validation_results ADD COLUMN IF NOT EXISTS rows_quarantined integer;
ALTER TABLE pipeline.validation_results ADD COLUMN IF NOT EXISTS reason_counts jsonb;
ALTER TABLE pipeline.validation_results ADD COLUMN IF NOT EXISTS normalisations jsonb;
ALTER TABLE pipeline.validation_results ADD COLUMN IF NOT EXISTS clean_snapshot_hash text;
ALTER TABLE pipeline.validation_results ADD COLUMN IF NOT EXISTS report_path text;

DO $$ BEGIN
    ALTER TABLE pipeline.validation_results ADD CONSTRAINT validation_rows_reconcile
        CHECK (rows_read IS NULL OR rows_read = rows_valid + rows_quarantined);
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE TABLE IF NOT EXISTS pipeline.quarantine (
    run_id         text NOT NULL,
    snapshot_hash  text NOT NULL REFERENCES pipeline.snapshots,
    row_number     integer NOT NULL,          -- position in the raw snapshot
    source_id      text,                      -- the row's id in the source table
    reasons        jsonb NOT NULL,            -- [{code, column, rule, value}]
    original       jsonb NOT NULL,            -- the row as read, before any normalisation
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, row_number)
);
CREATE INDEX IF NOT EXISTS quarantine_source_id_idx ON pipeline.quarantine (source_id);
