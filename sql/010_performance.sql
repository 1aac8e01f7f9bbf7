-- Live performance: forecasts judged on the outcomes that arrived after them, and the signals a
-- degraded champion sent to its retrain. Safe to apply twice. All three tables are append-only.

-- One row per monitor run: the verdict on the model's champion and a summary per version.
CREATE TABLE IF NOT EXISTS pipeline.performance_reports (
    run_id            text PRIMARY KEY,
    model             text NOT NULL,
    champion_version  integer REFERENCES pipeline.model_versions,
    as_of             timestamptz NOT NULL,       -- outcomes known up to here were judged
    outcomes          integer NOT NULL,           -- the champion's served forecasts judged
    live_rmse         double precision,           -- of those forecasts
    holdout_rmse      double precision,           -- the champion's, from its evaluation
    ratio_low         double precision,           -- bootstrap interval of live / holdout RMSE
    ratio_high        double precision,
    verdict           text NOT NULL CHECK (verdict IN ('degraded', 'not_degraded', 'insufficient_outcomes', 'no_champion',
                                                       'no_holdout', 'disabled')),
    degraded          boolean NOT NULL,
    reason            text NOT NULL,              -- the verdict as a sentence, with its thresholds
    warnings          jsonb NOT NULL DEFAULT '[]'::jsonb,
    policy            jsonb NOT NULL,             -- monitoring.performance as used
    versions          jsonb NOT NULL,             -- per version and source: outcomes, live and holdout RMSE, ...
    shadows           jsonb NOT NULL,             -- each shadow paired with the champion on the same records
    signal_id         bigint,                     -- the signal this run sent, if any
    report_path       text,
    report_sha256     text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS performance_reports_model_idx ON pipeline.performance_reports (model, created_at DESC);

-- Every metric a run computed: per version and source (served = batch and API, or shadow), overall,
-- per slice group, and per month of the outcome's label time.
CREATE TABLE IF NOT EXISTS pipeline.performance_metrics (
    run_id            text NOT NULL REFERENCES pipeline.performance_reports,
    version           integer NOT NULL REFERENCES pipeline.model_versions,
    source            text NOT NULL CHECK (source IN ('served', 'shadow')),
    dimension         text NOT NULL CHECK (dimension IN ('all', 'slice', 'month')),
    slice             text NOT NULL,              -- the slice's name; '' for all and month
    grp               text NOT NULL,              -- 'all', the slice group, or the month (YYYY-MM)
    rows              integer NOT NULL,
    rmse              double precision NOT NULL,
    mae               double precision NOT NULL,
    bias              double precision NOT NULL,  -- mean of outcome - forecast: > 0 means forecasts too low
    coverage          double precision NOT NULL,  -- share of outcomes inside [lower, upper]
    nominal_coverage  double precision NOT NULL,  -- the coverage the intervals were made for
    PRIMARY KEY (run_id, version, source, dimension, slice, grp)
);

-- A degraded champion's request for a retrain. One per champion version, and another only when at
-- least min_outcomes more outcomes were judged since, or when no retrain answered it in time.
CREATE TABLE IF NOT EXISTS pipeline.performance_signals (
    signal_id     bigserial PRIMARY KEY,
    model         text NOT NULL,
    version       integer NOT NULL REFERENCES pipeline.model_versions,
    run_id        text NOT NULL UNIQUE,            -- the monitor run that sent it
    at            timestamptz NOT NULL DEFAULT now(),
    outcomes      integer NOT NULL,
    live_rmse     double precision NOT NULL,
    holdout_rmse  double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS performance_signals_model_idx ON pipeline.performance_signals (model, version);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['performance_reports', 'performance_metrics', 'performance_signals'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON pipeline.%I', t || '_append_only', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON pipeline.%I '
                       'FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change()', t || '_append_only', t);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON pipeline.%I', t || '_no_truncate', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON pipeline.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION pipeline.refuse_truncate()', t || '_no_truncate', t);
    END LOOP;
END $$;
