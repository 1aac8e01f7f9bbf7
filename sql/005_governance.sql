-- Governance: the evidence behind each decision, model cards, rollback. Safe to apply twice.
ALTER TABLE pipeline.evaluations ADD COLUMN IF NOT EXISTS evidence jsonb;   -- bootstrap, slices, behaviour, baseline

CREATE TABLE IF NOT EXISTS pipeline.model_cards (
    version      integer NOT NULL REFERENCES pipeline.model_versions,
    kind         text NOT NULL CHECK (kind IN ('card', 'comparison')),
    run_id       text NOT NULL,              -- the evaluation a comparison page belongs to
    path         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version, kind, run_id)
);
