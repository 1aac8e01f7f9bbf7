-- Shadow challengers, and the evidence behind an operator's promotion. Safe to apply twice.
-- A version in shadow is scored by the batch beside the champion, on the same records (source
-- 'shadow' in pipeline.predictions); pipeline.latest_forecasts never shows those forecasts to the CRM.

-- Every change of a model's shadow set, append-only: the set is never overwritten in place.
CREATE TABLE IF NOT EXISTS pipeline.shadow_events (
    event_id  bigserial PRIMARY KEY,
    model     text NOT NULL,
    version   integer NOT NULL REFERENCES pipeline.model_versions,
    action    text NOT NULL CHECK (action IN ('add', 'remove')),
    actor     text NOT NULL,
    reason    text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS shadow_events_model_idx ON pipeline.shadow_events (model, version, event_id);

DROP TRIGGER IF EXISTS shadow_events_append_only ON pipeline.shadow_events;
CREATE TRIGGER shadow_events_append_only
    BEFORE UPDATE OR DELETE ON pipeline.shadow_events
    FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change();

DROP TRIGGER IF EXISTS shadow_events_no_truncate ON pipeline.shadow_events;
CREATE TRIGGER shadow_events_no_truncate
    BEFORE TRUNCATE ON pipeline.shadow_events
    FOR EACH STATEMENT EXECUTE FUNCTION pipeline.refuse_truncate();

-- The current shadow set: each version whose last event is an 'add'.
CREATE OR REPLACE VIEW pipeline.shadows AS
SELECT model, version, at AS added_at, actor AS added_by, reason
  FROM (SELECT DISTINCT ON (model, version) model, version, action, actor, reason, at
          FROM pipeline.shadow_events
         ORDER BY model, version, event_id DESC) last_event
 WHERE action = 'add';

-- An operator's promotion records the version's live evidence (its shadow forecasts, judged or not).
ALTER TABLE pipeline.promotion_events ADD COLUMN IF NOT EXISTS evidence jsonb;

-- A scoring run says, per shadow version, how many records it scored, or why it could not.
ALTER TABLE pipeline.scoring_runs ADD COLUMN IF NOT EXISTS shadows jsonb;
