-- The two narrow exceptions to append-only model_versions and performance_reports, in one trigger function (the
-- only one: a second would undo the first): an erasure (pipeline.erasure_request set in its transaction) may
-- UPDATE the columns that can hold a patient's id (021), and `migrate-store` may rewrite a registry path to the
-- team store's form, <kind>/<sha256><suffix> with the same file name it had (an absolute path of one machine
-- before). Every other UPDATE, every DELETE and TRUNCATE stay refused. Safe to apply twice.
-- TG_ARGV: the path column, then the columns an erasure may change.
CREATE OR REPLACE FUNCTION pipeline.refuse_change_but_erasure_or_store_path() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    path_col text := TG_ARGV[0];
    before jsonb := to_jsonb(OLD);
    after jsonb := to_jsonb(NEW);
    old_path text := to_jsonb(OLD) ->> TG_ARGV[0];
    new_path text := to_jsonb(NEW) ->> TG_ARGV[0];
    i int;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (before - path_col) = (after - path_col)
           AND new_path ~ '^[a-z]+/[0-9a-f]{64}\.[a-z]+$'
           AND right(old_path, length(new_path) + 1) = '/' || new_path THEN
            RETURN NEW;
        END IF;
        IF coalesce(current_setting('pipeline.erasure_request', true), '') <> '' THEN
            FOR i IN 1 .. TG_NARGS - 1 LOOP
                before := before - TG_ARGV[i];
                after := after - TG_ARGV[i];
            END LOOP;
            IF before = after THEN
                RETURN NEW;
            END IF;
        END IF;
    END IF;
    RAISE EXCEPTION 'pipeline.% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END $$;

DROP TRIGGER IF EXISTS model_versions_append_only ON pipeline.model_versions;
CREATE TRIGGER model_versions_append_only
    BEFORE UPDATE OR DELETE ON pipeline.model_versions
    FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change_but_erasure_or_store_path('artifact_path', 'holdout_start');

DROP TRIGGER IF EXISTS performance_reports_append_only ON pipeline.performance_reports;
CREATE TRIGGER performance_reports_append_only
    BEFORE UPDATE OR DELETE ON pipeline.performance_reports
    FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change_but_erasure_or_store_path(
        'report_path', 'refused_outcomes', 'report_path', 'report_sha256');

-- The one-exception functions earlier versions of 021 and 024 installed, unused once the triggers above replace theirs.
DROP FUNCTION IF EXISTS pipeline.refuse_change_but_erasure();
DROP FUNCTION IF EXISTS pipeline.refuse_change_but_store_path();
