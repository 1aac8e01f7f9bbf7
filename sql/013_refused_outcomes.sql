-- Outcomes the data contract refused: counted by reason in each live performance report, never judged.
-- Safe to apply twice.
ALTER TABLE pipeline.performance_reports
    ADD COLUMN IF NOT EXISTS refused_outcomes jsonb NOT NULL DEFAULT '{}'::jsonb;
    -- {outcomes, refused, share, reason_counts, sample_ids, limit, over_limit, signal}
