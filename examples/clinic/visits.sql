-- The clinic's export table, as its own system names and types it: the worked example of pointing
-- the pipeline at a table of your own (examples/clinic/README_SECTION.md). Dates are d/m/Y text
-- ('3/01/2024'), measurements are numbers, the outcome is NULL until the one-year follow-up.
-- `python -m pipeline seed-clinic-export` applies this file (safe twice) and loads the rows.
CREATE SCHEMA IF NOT EXISTS clinic;

CREATE TABLE IF NOT EXISTS clinic.visits (
    visit_id         bigint PRIMARY KEY,
    dob              text,                 -- date of birth, d/m/Y
    seen_on          text,                 -- date of the visit, d/m/Y
    gender           text,                 -- 'F' or 'M'
    body_mass        double precision,     -- body mass index, kg/m2
    bp               double precision,     -- average blood pressure, mmHg
    chol_total       double precision,     -- total serum cholesterol, mg/dL
    ldl_c            double precision,     -- low-density lipoproteins, mg/dL
    hdl_c            double precision,     -- high-density lipoproteins, mg/dL
    chol_ratio       double precision,     -- total cholesterol / HDL
    log_trig         double precision,     -- log of serum triglycerides
    fasting_glucose  double precision,     -- blood sugar, mg/dL
    outcome_score    double precision,     -- disease progression one year later; NULL until known
    entered_at       timestamptz NOT NULL  -- when the row was entered: the arrival watermark
);

CREATE INDEX IF NOT EXISTS visits_entered_at_idx ON clinic.visits (entered_at);
