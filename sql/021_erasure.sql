-- A patient's erasure (issue 30): requests, tombstones, and the lineage an erasure leaves. Safe to apply twice.

-- The queue a CRM inserts into (INSERT INTO pipeline.erasure_requests (source_id, reason, requested_by)
-- VALUES (...)) and the `process_erasures` DAG (or `python -m pipeline erase`) works off. Once done, the
-- row keeps the tombstone, never the id: `source_id` is set to NULL.
CREATE TABLE IF NOT EXISTS pipeline.erasure_requests (
    request_id    bigserial PRIMARY KEY,
    source_id     text,                        -- the patient's id in the source table; NULL once processed
    tombstone     text,                        -- HMAC-SHA256 of the id under the erasure key
    reason        text NOT NULL,
    requested_by  text NOT NULL DEFAULT 'crm',
    requested_at  timestamptz NOT NULL DEFAULT now(),
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'duplicate', 'failed')),
    processed_at  timestamptz,
    outcome       jsonb,                       -- what was removed where (counts, hashes), never a value
    CHECK (status = 'pending' OR source_id IS NULL OR status = 'failed')
);
CREATE INDEX IF NOT EXISTS erasure_requests_pending_idx ON pipeline.erasure_requests (request_id) WHERE status = 'pending';

-- One row per erased id: ingest refuses a source row whose id hashes to one of these.
CREATE TABLE IF NOT EXISTS pipeline.erasure_tombstones (
    tombstone   text PRIMARY KEY,
    request_id  bigint NOT NULL REFERENCES pipeline.erasure_requests,
    at          timestamptz NOT NULL DEFAULT now()
);

-- Each snapshot an erasure rewrote: the old hash (its file shredded), the new one, and the request.
CREATE TABLE IF NOT EXISTS pipeline.snapshot_redactions (
    old_hash       text PRIMARY KEY REFERENCES pipeline.snapshots,
    new_hash       text NOT NULL REFERENCES pipeline.snapshots,
    request_id     bigint NOT NULL REFERENCES pipeline.erasure_requests,
    rows_removed   integer NOT NULL CHECK (rows_removed > 0),
    bytes_written  bigint NOT NULL,
    at             timestamptz NOT NULL DEFAULT now()
);

-- Versions trained on rows later erased (the model_versions rows themselves are append-only).
CREATE TABLE IF NOT EXISTS pipeline.erased_lineage (
    version     integer NOT NULL REFERENCES pipeline.model_versions,
    request_id  bigint NOT NULL REFERENCES pipeline.erasure_requests,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version, request_id)
);
CREATE OR REPLACE VIEW pipeline.trained_on_erased AS
SELECT version, min(at) AS first_erasure_at, count(*) AS erasures FROM pipeline.erased_lineage GROUP BY version;

-- A raw snapshot says how many source rows its ingest refused as erased (tombstoned), so rows reconcile.
ALTER TABLE pipeline.snapshots ADD COLUMN IF NOT EXISTS erased_rows integer NOT NULL DEFAULT 0;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['erasure_tombstones', 'snapshot_redactions', 'erased_lineage'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON pipeline.%I', t || '_append_only', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON pipeline.%I '
                       'FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change()', t || '_append_only', t);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON pipeline.%I', t || '_no_truncate', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON pipeline.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION pipeline.refuse_truncate()', t || '_no_truncate', t);
    END LOOP;
END $$;

-- Two append-only tables can hold a patient's id inside JSON: a version's holdout start (its first held-out
-- row) and a performance report's refused outcomes (sample ids), with the report's page. Only an erasure may
-- UPDATE those columns: the trigger that allows it is sql/025_append_only_exceptions.sql's.
