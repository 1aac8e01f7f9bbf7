-- The outcome a DAG run's task recorded for its note (issue 31): score, monitor and Set champion runs, a
-- refusal or a failure; the `run_notes` plugin copies it into the Airflow run's note when the run ends
-- (a retrain's note is read from pipeline.training_runs). One row per Airflow run, rewritten on a rerun.
-- Safe to apply twice.
CREATE TABLE IF NOT EXISTS pipeline.run_notes (
    dag_id      text NOT NULL,
    run_id      text NOT NULL,
    note        text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dag_id, run_id)
);
