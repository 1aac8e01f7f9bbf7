-- Encryption at rest for the records a scoring run refused (issue 30): a refusal keeps in plain its run, the
-- record's id (the CRM's own key, as in pipeline.predictions, so the CRM can find and fix the record) and its
-- reasons' codes, columns and rules; the values that broke the contract are in `sealed` (AES-256-GCM under
-- `key_ref`, one data key per scoring run; the row's identity bound as associated data). Safe to apply twice.
ALTER TABLE pipeline.scoring_refusals ADD COLUMN IF NOT EXISTS key_ref text;
ALTER TABLE pipeline.scoring_refusals ADD COLUMN IF NOT EXISTS sealed bytea;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'scoring_refusals_sealed_or_plain') THEN
        ALTER TABLE pipeline.scoring_refusals ADD CONSTRAINT scoring_refusals_sealed_or_plain
            CHECK ((sealed IS NULL) = (key_ref IS NULL));
    END IF;
END $$;
COMMENT ON COLUMN pipeline.scoring_refusals.sealed IS
    'reasons with the values that broke the contract: sealed (pipeline.store.crypto.seal_value) under key_ref';
