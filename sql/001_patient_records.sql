-- The CRM's source table: one row per patient baseline visit, labelled 12 months later.
-- Safe to apply twice.
CREATE TABLE IF NOT EXISTS public.patient_records (
    patient_id       bigint PRIMARY KEY,
    birth_date       date,
    visit_date       date,
    sex              text,                 -- 'F' or 'M'
    bmi              double precision,     -- body mass index, kg/m2
    bp_mean          double precision,     -- average blood pressure, mmHg
    tc               double precision,     -- total serum cholesterol, mg/dL
    ldl              double precision,     -- low-density lipoproteins, mg/dL
    hdl              double precision,     -- high-density lipoproteins, mg/dL
    tch              double precision,     -- total cholesterol / HDL ratio
    ltg              double precision,     -- log of serum triglycerides
    glucose          double precision,     -- blood sugar, mg/dL
    progression_12m  double precision,     -- disease progression one year later; NULL until known
    recorded_at      timestamptz NOT NULL DEFAULT clock_timestamp()   -- arrival watermark
);

CREATE INDEX IF NOT EXISTS patient_records_recorded_at_idx
    ON public.patient_records (recorded_at);
