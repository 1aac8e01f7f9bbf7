-- Forecasts reach the CRM: prediction intervals, every forecast made, and one current forecast per
-- record. Safe to apply twice.

-- The inputs of a version's prediction interval (split conformal on its out-of-fold residuals), per
-- coverage: enough to reproduce the interval. Append-only, like the versions themselves.
CREATE TABLE IF NOT EXISTS pipeline.model_intervals (
    version             integer NOT NULL REFERENCES pipeline.model_versions,
    coverage            double precision NOT NULL CHECK (coverage > 0 AND coverage < 1),
    method              text NOT NULL,           -- how the half-width was found
    half_width          double precision NOT NULL,  -- forecast ± this (infinite when too few residuals)
    residuals           integer NOT NULL,        -- out-of-fold residuals it rests on
    rank                integer NOT NULL,        -- the ceil((n + 1) * coverage)-th smallest |residual|
    residuals_sha256    text NOT NULL,           -- of the sorted |residuals| as float64 bytes
    residual_quantiles  jsonb NOT NULL,          -- |residual| at 0.5, 0.8, 0.9, 0.95, 0.99
    inputs              jsonb NOT NULL,          -- family, params, folds, seed, rows: what recomputes them
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version, coverage)
);

-- Every forecast made: by the nightly batch, by the REST API, or in shadow.
CREATE TABLE IF NOT EXISTS pipeline.predictions (
    prediction_id  bigserial PRIMARY KEY,
    model          text NOT NULL,
    version        integer NOT NULL REFERENCES pipeline.model_versions,
    source_id      text NOT NULL,                 -- the record's id in the source table (as text)
    prediction     double precision NOT NULL,
    lower          double precision NOT NULL,
    upper          double precision NOT NULL,
    coverage       double precision NOT NULL,
    made_at        timestamptz NOT NULL DEFAULT now(),
    run_id         text NOT NULL,                 -- the scoring run, or the API request
    source         text NOT NULL CHECK (source IN ('batch', 'api', 'shadow')),
    input_hash     text NOT NULL                  -- SHA-256 of the record's input values
);
CREATE INDEX IF NOT EXISTS predictions_record_idx ON pipeline.predictions (model, source_id, made_at DESC);
CREATE INDEX IF NOT EXISTS predictions_run_idx ON pipeline.predictions (run_id);

-- One current forecast per record, from the model's current champion: what the CRM reads. An API
-- request for a record without an id is logged with an empty source_id, and is no record of the CRM's.
CREATE OR REPLACE VIEW pipeline.latest_forecasts AS
SELECT DISTINCT ON (p.model, p.source_id)
       p.model, p.source_id, p.version, p.prediction, p.lower, p.upper, p.coverage, p.made_at, p.source, p.run_id
  FROM pipeline.predictions p
  JOIN pipeline.champion c ON c.model = p.model AND c.version = p.version
 WHERE p.source IN ('batch', 'api') AND p.source_id <> ''
 ORDER BY p.model, p.source_id, p.made_at DESC, p.prediction_id DESC;

-- A batch scoring run: what it selected, scored and refused.
CREATE TABLE IF NOT EXISTS pipeline.scoring_runs (
    run_id          text PRIMARY KEY,
    model           text NOT NULL,
    version         integer REFERENCES pipeline.model_versions,
    status          text NOT NULL,               -- running | done | failed
    reason          text,
    rows_selected   integer,
    rows_scored     integer,
    rows_refused    integer,
    reason_counts   jsonb,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

-- Records a batch did not score because they break the data contract, with the reasons.
CREATE TABLE IF NOT EXISTS pipeline.scoring_refusals (
    run_id     text NOT NULL,
    source_id  text NOT NULL,
    reasons    jsonb NOT NULL,
    PRIMARY KEY (run_id, source_id)
);
