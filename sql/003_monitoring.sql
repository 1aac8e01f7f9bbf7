-- Monitoring: how each run was started, arrival signals, drift reports. Safe to apply twice.
ALTER TABLE pipeline.training_runs ADD COLUMN IF NOT EXISTS trigger_event jsonb;

CREATE TABLE IF NOT EXISTS pipeline.arrival_signals (
    signal_id    bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    since        timestamptz,                -- rows recorded after this were counted
    up_to        timestamptz NOT NULL,       -- the newest labelled row seen
    new_rows     integer NOT NULL
);

CREATE TABLE IF NOT EXISTS pipeline.drift_reports (
    run_id              text PRIMARY KEY,
    champion_version    integer REFERENCES pipeline.model_versions,
    reference_snapshot  text REFERENCES pipeline.snapshots,
    window_start        timestamptz,
    window_end          timestamptz NOT NULL,
    reference_rows      integer NOT NULL,
    recent_rows         integer NOT NULL,
    verdict             text NOT NULL CHECK (verdict IN ('drift', 'stable', 'insufficient_data', 'no_champion')),
    features            jsonb NOT NULL,
    report_path         text,
    created_at          timestamptz NOT NULL DEFAULT now()
);
