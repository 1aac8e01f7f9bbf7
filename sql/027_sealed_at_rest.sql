-- Encryption at rest (issue 30): which data key seals each stored file, and patient values sealed in the registry.
-- Safe to apply twice.

-- Every stored file sealed under a data key (pipeline.data_keys, sql/026), by the SHA-256 of its plaintext (the
-- file's name): the key of a file is found from here as well as from the file's own header. A digest may be
-- sealed more than once (two machines' local stores each sealed their own copy), each under its own key.
CREATE TABLE IF NOT EXISTS pipeline.sealed_files (
    digest     text NOT NULL,                        -- SHA-256 of the plaintext: the file's name
    kind       text NOT NULL,                        -- snapshots, models, reports, cards, residuals, compiled, ...
    key_ref    text NOT NULL,                        -- pipeline.data_keys' ref: dk-<hex>
    sealed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (digest, key_ref)
);
CREATE INDEX IF NOT EXISTS sealed_files_key_ref_idx ON pipeline.sealed_files (key_ref);

-- A sealed quarantine row keeps in plain only what names no patient: its run, snapshot, position, whether it is
-- labelled, and its reasons' codes, columns and rules. The source id, the reasons' values and the original row are
-- in `sealed` (AES-256-GCM under `key_ref`, one data key per run; the row's identity bound as associated data).
ALTER TABLE pipeline.quarantine ADD COLUMN IF NOT EXISTS key_ref text;
ALTER TABLE pipeline.quarantine ADD COLUMN IF NOT EXISTS sealed bytea;
ALTER TABLE pipeline.quarantine ALTER COLUMN original DROP NOT NULL;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'quarantine_sealed_or_plain') THEN
        ALTER TABLE pipeline.quarantine ADD CONSTRAINT quarantine_sealed_or_plain
            CHECK ((sealed IS NULL) = (key_ref IS NULL)
                   AND (sealed IS NULL OR (source_id IS NULL AND original IS NULL)));
    END IF;
END $$;
COMMENT ON COLUMN pipeline.quarantine.sealed IS
    'source_id, reasons with their values, original: sealed (pipeline.store.crypto.seal_value) under key_ref';

-- A sealed validation result keeps its counts and statistics in plain; its failures' sample ids, the full Great
-- Expectations result and the normalisations (which hold patient values) are in `sealed`, under a data key of the
-- row's own (so an erasure re-seals the row and destroys the old key), and the plain columns hold them redacted.
ALTER TABLE pipeline.validation_results ADD COLUMN IF NOT EXISTS key_ref text;
ALTER TABLE pipeline.validation_results ADD COLUMN IF NOT EXISTS sealed bytea;
COMMENT ON COLUMN pipeline.validation_results.sealed IS
    'failures, result, normalisations with their patient values: sealed under key_ref';
