"""Encrypting an existing plain store in place (`python -m pipeline encrypt-store`, issue 30).

Every plain file of the artifact store's content-addressed folders (the files the registry names, and any other
stored there) whose bytes hash to its name is sealed in place under a new data key of its own: its name, the hash
of the plaintext, does not change, so the registry, lineage and `reproduce` do not either. A file that does not
hash to its name is left as it is and listed (it is evidence, not something to seal). The compiled-model cache, the
team store's large objects, and the registry's plain quarantine rows and validation results are sealed too. Safe
to run twice: what is sealed already is left alone, so the second run has nothing to do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipeline.registry import records
from pipeline.store import artifacts, crypto

_NAME = re.compile(r"^(?P<digest>[0-9a-f]{64})(?P<suffix>\.[a-z]+)$")


@dataclass
class Encryption:
    sealed: list[str] = field(default_factory=list)  # <kind>/<file> sealed now
    already: int = 0  # files sealed before this run
    refused: list[str] = field(default_factory=list)  # files whose bytes do not hash to their name: left alone
    missing: list[str] = field(default_factory=list)  # registry paths that name no file here
    team_sealed: int = 0  # large objects of the team store sealed now
    quarantine_rows: int = 0  # plain quarantine rows sealed now
    validation_rows: int = 0  # plain validation results sealed now
    refusal_rows: int = 0  # plain refusals of scoring runs sealed now

    @property
    def nothing_to_do(self) -> bool:
        return not (self.sealed or self.team_sealed or self.quarantine_rows or self.validation_rows
                    or self.refusal_rows)


def encrypt_store(store: artifacts.ArtifactStore, engine: sa.Engine) -> Encryption:
    """Seal every plain file and registry value of `store` (whose keyring seals), in place; see the module."""
    if store.keyring is None:
        raise ValueError("encrypt-store needs a key manager (security.key_manager): the store has none")
    sealing = artifacts.ArtifactStore(store.root, store.engine, store.keyring, True)
    result = Encryption()
    for kind in sorted(artifacts.SUFFIXES):
        folder = store.root / kind
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if (name := _NAME.match(path.name)) is not None and name["suffix"] == artifacts.SUFFIXES[kind]:
                _seal_file(sealing, kind, path, name["digest"], result)
    _seal_compiled(sealing, result)
    result.missing = _missing(engine, store.root)
    if store.engine is not None:
        result.team_sealed = _seal_team_store(sealing, store.engine)
    result.quarantine_rows, result.validation_rows, result.refusal_rows = _seal_rows(engine, store.keyring)
    return result


def _seal_file(store: artifacts.ArtifactStore, kind: str, path: Path, digest: str, result: Encryption) -> None:
    with path.open("rb") as handle:
        if crypto.is_sealed(handle.read(len(crypto.MAGIC))):
            result.already += 1
            return
    data = path.read_bytes()
    relative = f"{kind}/{path.name}"
    if artifacts.sha256_bytes(data) != digest:
        result.refused.append(relative)
        return
    artifacts.write_atomically(path, artifacts.seal_for(store, kind, digest, data))
    result.sealed.append(relative)


def _seal_compiled(store: artifacts.ArtifactStore, result: Encryption) -> None:
    """The compiled-model cache (named by the artifact's hash, not its own): sealed as it is."""
    folder = store.root / "compiled"
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.suffix not in (".json", ".onnx") or path.name.startswith("."):
            continue
        if crypto.is_sealed(path.read_bytes()[:len(crypto.MAGIC)]):
            result.already += 1
            continue
        artifacts.write_sealed(store, "compiled", path, path.read_bytes())
        result.sealed.append(f"compiled/{path.name}")


def _missing(engine: sa.Engine, root: Path) -> list[str]:
    """Registry paths (relative to the store) that name no file in it: listed, nothing to seal there."""
    from pipeline.registry.store_paths import PATH_COLUMNS, store_form

    missing = []
    with engine.connect() as conn:
        for table, column in PATH_COLUMNS:
            for recorded in conn.scalars(sa.text(
                    f"SELECT DISTINCT {column} FROM pipeline.{table} WHERE {column} IS NOT NULL")).all():
                found = store_form(recorded)
                if found and not artifacts.stored_path(root, found[0], found[1]).is_file():
                    missing.append(f"pipeline.{table}.{column}: {recorded}")
    return missing


def _seal_team_store(store: artifacts.ArtifactStore, engine: sa.Engine) -> int:
    """Seal each plain large object of the team store in place (its index row, which names the plaintext, stays)."""
    sealed = 0
    with engine.connect() as conn:
        objects = conn.execute(sa.text(f"SELECT digest, kind, oid FROM {artifacts.TEAM_TABLE} ORDER BY digest")).all()
    for digest, kind, oid in objects:
        with engine.begin() as conn:
            raw = artifacts._dbapi(conn, engine)
            if not conn.scalar(sa.text("SELECT 1 FROM pg_largeobject_metadata WHERE oid = :o"), {"o": oid}):
                continue  # unlinked by an erasure
            source = raw.lobject(oid, "rb")
            data = source.read()
            source.close()
            if crypto.is_sealed(data[:len(crypto.MAGIC)]) or artifacts.sha256_bytes(data) != digest:
                continue
            sealed_bytes = artifacts.seal_for(store, kind, digest, data)
            target = raw.lobject(oid, "wb")
            target.write(bytes(sealed_bytes))
            target.truncate(len(sealed_bytes))
            target.close()
            sealed += 1
    return sealed


def _seal_rows(engine: sa.Engine, keyring: crypto.Keyring) -> tuple[int, int, int]:
    """Seal the plain quarantine rows (one data key per run), validation results (one per row) and refusals of
    scoring runs (one per run)."""
    with engine.begin() as conn:
        plain = [dict(r) for r in conn.execute(sa.text(
            "SELECT * FROM pipeline.quarantine WHERE sealed IS NULL ORDER BY run_id, row_number")).mappings()]
        for run_id in sorted({r["run_id"] for r in plain}):
            sealer = keyring.sealer()
            for row in (r for r in plain if r["run_id"] == run_id):
                _reseal_quarantine(conn, records.seal_quarantined(row, run_id, sealer))
        validations = [dict(r) for r in conn.execute(sa.text(
            "SELECT * FROM pipeline.validation_results WHERE sealed IS NULL")).mappings()]
        for row in validations:
            sealed = records.seal_validation({k: row[k] for k in records.SEALED_VALIDATION}, row["run_id"],
                                             row["snapshot_hash"], keyring.sealer())
            conn.execute(sa.text("""
                UPDATE pipeline.validation_results
                   SET failures = CAST(:failures AS jsonb), result = CAST(:result AS jsonb),
                       normalisations = CAST(:normalisations AS jsonb), key_ref = :key_ref, sealed = :sealed
                 WHERE run_id = :run_id AND snapshot_hash = :snapshot_hash
            """), {**{k: json.dumps(sealed[k], default=str) for k in records.SEALED_VALIDATION}, "key_ref": sealed["key_ref"],
                   "sealed": sealed["sealed"], "run_id": row["run_id"], "snapshot_hash": row["snapshot_hash"]})
        refusals = [dict(r) for r in conn.execute(sa.text(
            "SELECT * FROM pipeline.scoring_refusals WHERE sealed IS NULL ORDER BY run_id, source_id")).mappings()]
        for run_id in sorted({r["run_id"] for r in refusals}):
            records.reseal_refusals(conn, run_id, [r for r in refusals if r["run_id"] == run_id], keyring.sealer())
    return len(plain), len(validations), len(refusals)


def _reseal_quarantine(conn: sa.Connection, row: dict[str, Any]) -> None:
    conn.execute(sa.text("""
        UPDATE pipeline.quarantine
           SET source_id = NULL, original = NULL, reasons = CAST(:reasons AS jsonb), key_ref = :key_ref,
               sealed = decode(:sealed, 'hex')
         WHERE run_id = :run_id AND snapshot_hash = :snapshot_hash AND row_number = :row_number
    """), {"reasons": json.dumps(row["reasons"], default=str), "key_ref": row["key_ref"], "sealed": row["sealed"],
           "run_id": row["run_id"], "snapshot_hash": row["snapshot_hash"], "row_number": row["row_number"]})
