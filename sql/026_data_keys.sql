-- Data keys of encryption at rest (issue 30): one per encrypted file, wrapped by a master key of the key
-- manager (pipeline.store.keys). Safe to apply twice.
-- Destroying a key (crypto-shredding, on erasure) sets `wrapped` to NULL and `destroyed_at`; the row is never
-- deleted, so lineage still shows that the key, and the file it encrypted, existed.
CREATE TABLE IF NOT EXISTS pipeline.data_keys (
    key_ref        text PRIMARY KEY CHECK (key_ref ~ '^dk-[0-9a-f]+$'),
    master_key_id  text NOT NULL,                 -- the master key that wraps it now (rotate-keys re-wraps)
    wrapped        bytea,                         -- NULL once destroyed
    created_at     timestamptz NOT NULL DEFAULT now(),
    destroyed_at   timestamptz,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS data_keys_master_idx ON pipeline.data_keys (master_key_id) WHERE wrapped IS NOT NULL;

-- No row is ever deleted, and a destroyed key never comes back.
CREATE OR REPLACE FUNCTION pipeline.data_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'pipeline.data_keys: data key % cannot be deleted; destroy it (wrapped = NULL) instead',
            OLD.key_ref;
    END IF;
    IF OLD.wrapped IS NULL AND NEW.wrapped IS NOT NULL THEN
        RAISE EXCEPTION 'pipeline.data_keys: data key % was destroyed on %; it cannot be restored',
            OLD.key_ref, OLD.destroyed_at;
    END IF;
    IF NEW.key_ref <> OLD.key_ref OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'pipeline.data_keys: data key %: key_ref and created_at never change', OLD.key_ref;
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS data_keys_guard ON pipeline.data_keys;
CREATE TRIGGER data_keys_guard BEFORE UPDATE OR DELETE ON pipeline.data_keys
    FOR EACH ROW EXECUTE FUNCTION pipeline.data_keys_guard();
