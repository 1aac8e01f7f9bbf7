-- Registry paths may be rewritten to the team store's form, once (`python -m pipeline migrate-store`): an
-- UPDATE of an append-only table passes only when it changes nothing but its path column, to
-- <kind>/<sha256><suffix> with the same file name it had (an absolute path of one machine before). Every other
-- UPDATE or DELETE is refused as before. Safe to apply twice.
CREATE OR REPLACE FUNCTION pipeline.refuse_change_but_store_path() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    col text := TG_ARGV[0];
    old_path text;
    new_path text;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        old_path := to_jsonb(OLD) ->> col;
        new_path := to_jsonb(NEW) ->> col;
        IF (to_jsonb(OLD) - col) = (to_jsonb(NEW) - col)
           AND new_path ~ '^[a-z]+/[0-9a-f]{64}\.[a-z]+$'
           AND right(old_path, length(new_path) + 1) = '/' || new_path THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'pipeline.% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END $$;

DROP TRIGGER IF EXISTS model_versions_append_only ON pipeline.model_versions;
CREATE TRIGGER model_versions_append_only
    BEFORE UPDATE OR DELETE ON pipeline.model_versions
    FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change_but_store_path('artifact_path');

DROP TRIGGER IF EXISTS performance_reports_append_only ON pipeline.performance_reports;
CREATE TRIGGER performance_reports_append_only
    BEFORE UPDATE OR DELETE ON pipeline.performance_reports
    FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change_but_store_path('report_path');
