-- When each outcome became known. In the CRM an outcome arrives about a year after the visit, as an
-- UPDATE that fills in progression_12m of a row recorded long before. The contract's
-- label_timestamp_column (here label_recorded_at) lets the watcher count such outcomes, lets a
-- snapshot be read again "as known at its watermark", and makes the holdout the most recently
-- labelled rows. Safe to apply twice.
ALTER TABLE public.patient_records ADD COLUMN IF NOT EXISTS label_recorded_at timestamptz;

-- Rows labelled before this column existed: their outcome was known when they were recorded.
UPDATE public.patient_records SET label_recorded_at = recorded_at
 WHERE progression_12m IS NOT NULL AND label_recorded_at IS NULL;

CREATE INDEX IF NOT EXISTS patient_records_label_recorded_at_idx
    ON public.patient_records (label_recorded_at);

-- A row inserted with its outcome: known when recorded, unless the writer says when.
CREATE OR REPLACE FUNCTION pipeline.stamp_outcome_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.label_recorded_at := NEW.recorded_at;
    RETURN NEW;
END $$;

-- An outcome filled in (or corrected, or withdrawn) later: known now, unless the writer says when.
CREATE OR REPLACE FUNCTION pipeline.stamp_outcome_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.label_recorded_at := CASE WHEN NEW.progression_12m IS NULL THEN NULL ELSE clock_timestamp() END;
    RETURN NEW;
END $$;

-- The WHEN clauses keep bulk loads that give the time themselves (the bench) off the trigger path.
DROP TRIGGER IF EXISTS patient_records_outcome_insert ON public.patient_records;
CREATE TRIGGER patient_records_outcome_insert BEFORE INSERT ON public.patient_records
    FOR EACH ROW WHEN (NEW.progression_12m IS NOT NULL AND NEW.label_recorded_at IS NULL)
    EXECUTE FUNCTION pipeline.stamp_outcome_on_insert();

DROP TRIGGER IF EXISTS patient_records_outcome_update ON public.patient_records;
CREATE TRIGGER patient_records_outcome_update BEFORE UPDATE ON public.patient_records
    FOR EACH ROW WHEN (OLD.progression_12m IS DISTINCT FROM NEW.progression_12m
                       AND OLD.label_recorded_at IS NOT DISTINCT FROM NEW.label_recorded_at)
    EXECUTE FUNCTION pipeline.stamp_outcome_on_update();
