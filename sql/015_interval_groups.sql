-- Prediction intervals calibrated per group of a slice (issue 32, serving.interval_conditional_on): a
-- version can hold one interval per coverage over all records (conditional_on '') and one per coverage and
-- slice, with each group's half-width. Versions trained since issue 32 calibrate on their holdout (split
-- conformal); older rows keep the out-of-fold method they recorded. Safe to apply twice.
ALTER TABLE pipeline.model_intervals ADD COLUMN IF NOT EXISTS conditional_on text NOT NULL DEFAULT '';
ALTER TABLE pipeline.model_intervals ADD COLUMN IF NOT EXISTS group_half_widths jsonb;
COMMENT ON COLUMN pipeline.model_intervals.conditional_on IS
    'the promotion.slices name the interval was calibrated within (Mondrian); empty: over all records';
COMMENT ON COLUMN pipeline.model_intervals.group_half_widths IS
    'group -> half-width when conditional_on is set (infinite: too few calibration rows in the group)';

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = 'pipeline.model_intervals'::regclass AND i.indisprimary AND a.attname = 'conditional_on'
    ) THEN
        ALTER TABLE pipeline.model_intervals DROP CONSTRAINT IF EXISTS model_intervals_pkey;
        ALTER TABLE pipeline.model_intervals ADD PRIMARY KEY (version, coverage, conditional_on);
    END IF;
END
$$;
