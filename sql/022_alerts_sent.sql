-- Alerts (issue 31, `alerts:` in pipeline.yaml): one row per event an alert went out for. The key names the
-- event (e.g. failed_run:retrain:<run id>, degraded_champion:<model>:v3), so a rerun, a retried task or a
-- second monitor run on the same event sends nothing again. Safe to apply twice.
CREATE TABLE IF NOT EXISTS pipeline.alerts_sent (
    event_key  text PRIMARY KEY,
    kind       text NOT NULL,
    model      text NOT NULL,
    message    text NOT NULL,
    delivered  jsonb NOT NULL DEFAULT '{}'::jsonb,
    sent_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN pipeline.alerts_sent.delivered IS
    'channel -> "sent" or the delivery error (a failed delivery is logged, never retried, never fails a run)';
