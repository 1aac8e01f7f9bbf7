-- Several models in one database, and the rows a snapshot leaves out. Safe to apply twice.
-- Every registry row names its model (`model:` in the config). Rows from before this file belong
-- to the default model, diabetes_progression; the default is then dropped, so new rows must say.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['training_runs', 'model_versions', 'champion', 'promotion_events',
                             'arrival_signals', 'drift_reports'] LOOP
        EXECUTE format('ALTER TABLE pipeline.%I ADD COLUMN IF NOT EXISTS model text NOT NULL '
                       'DEFAULT ''diabetes_progression''', t);
        EXECUTE format('ALTER TABLE pipeline.%I ALTER COLUMN model DROP DEFAULT', t);
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pipeline.%I (model)', t || '_model_idx', t);
    END LOOP;
END $$;

-- One champion per model.
ALTER TABLE pipeline.champion DROP CONSTRAINT IF EXISTS champion_slot_check;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'champion_model_slot_pkey') THEN
        ALTER TABLE pipeline.champion DROP CONSTRAINT IF EXISTS champion_pkey;
        ALTER TABLE pipeline.champion ADD CONSTRAINT champion_model_slot_pkey PRIMARY KEY (model, slot);
        ALTER TABLE pipeline.champion ADD CONSTRAINT champion_slot_check CHECK (slot = 'production');
    END IF;
END $$;

-- Rows recorded up to the watermark whose outcome is not known yet: counted, and checked.
ALTER TABLE pipeline.snapshots ADD COLUMN IF NOT EXISTS unlabelled_rows integer;           -- left out of training
ALTER TABLE pipeline.validation_results ADD COLUMN IF NOT EXISTS rows_unlabelled integer;
ALTER TABLE pipeline.validation_results ADD COLUMN IF NOT EXISTS unlabelled_faulty integer;
ALTER TABLE pipeline.validation_results ADD COLUMN IF NOT EXISTS unlabelled_reason_counts jsonb;

-- A quarantined row is either labelled (left out of training) or awaiting its outcome (reported
-- so a data steward can fix it before the outcome lands); its number is its position in its snapshot.
ALTER TABLE pipeline.quarantine ADD COLUMN IF NOT EXISTS labelled boolean NOT NULL DEFAULT true;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'quarantine_run_snapshot_row_pkey') THEN
        ALTER TABLE pipeline.quarantine DROP CONSTRAINT IF EXISTS quarantine_pkey;
        ALTER TABLE pipeline.quarantine
            ADD CONSTRAINT quarantine_run_snapshot_row_pkey PRIMARY KEY (run_id, snapshot_hash, row_number);
    END IF;
END $$;

-- Recent rows a drift check left out because a cell did not read by the contract (never reinterpreted).
ALTER TABLE pipeline.drift_reports ADD COLUMN IF NOT EXISTS unreadable_rows integer NOT NULL DEFAULT 0;

-- Which schema files a database has had, so any command can bring an older database up to date.
CREATE TABLE IF NOT EXISTS pipeline.schema_files (
    name        text PRIMARY KEY,
    sha256      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
