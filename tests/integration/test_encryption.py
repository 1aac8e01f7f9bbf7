"""Encryption at rest (issue 30, point 1), on real PostgreSQL with a real retrain (seed-demo, arrivals with faulty
rows, every stage): no file of the artifact store and no column of the pipeline schema holds a known patient
value in plain form, searched in the bytes; the same search finds them when `security.encrypt_at_rest: false`
(so it can fail); the sealed model and snapshot load and predict as before; a wrong key, a missing key and a
tampered file fail naming the file and the key; `encrypt-store` migrates a plain store, and again does nothing."""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.model.features import model_inputs
from pipeline.registry import records
from pipeline.serving import scoring
from pipeline.store import artifacts, crypto, db, keys
from pipeline.views import operator
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


def _text_columns(conn: sa.Connection) -> list[tuple[str, str, str]]:
    """(table, column, type) of every text, jsonb and bytea column of the pipeline schema's tables."""
    return [(t, c, k) for t, c, k in conn.execute(sa.text("""
        SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c
          JOIN information_schema.tables t USING (table_schema, table_name)
         WHERE c.table_schema = 'pipeline' AND t.table_type = 'BASE TABLE'
           AND c.data_type IN ('text', 'jsonb', 'bytea', 'character varying')
    """)).all()]


def _column_hits(ws: Workspace, patients: dict[str, dict[str, Any]]) -> list[str]:
    """Every text, jsonb and bytea column of the pipeline schema holding a patient in plain form: the id as a
    source_id, or named in a JSON document; any needle in the bytes of a bytea or the text of a jsonb."""
    from pipeline import erasure

    hits = []
    with ws.engine.connect() as conn:
        columns = _text_columns(conn)
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


def _champion(ws: Workspace) -> dict[str, Any]:
    with ws.engine.connect() as conn:
        champion = records.current_champion(conn, ws.model)
    assert champion is not None
    return champion


def test_hashes_lineage_and_reproduce_do_not_change_with_keys_and_the_sealed_model_predicts_the_same(
        worlds: dict[str, Workspace], tmp_path: Path) -> None:
    sealed = worlds["sealed"]
    for snapshot in fetch(sealed, "SELECT snapshot_hash FROM pipeline.snapshots"):
        digest = snapshot["snapshot_hash"]
        plaintext = artifacts.read_verified(sealed.snapshot_path(digest), digest, sealed.keyring)
        # the name is the plaintext's hash: a plain store names the same bytes the same
        assert artifacts.store_bytes(tmp_path / "plain", "snapshots", plaintext, ".parquet")[0] == digest
    ours = _champion(sealed)
    frame = sealed.load_snapshot(ours["snapshot_hash"])
    model_path = artifacts.local_copy(sealed.store, "models", ours["artifact_hash"])
    plain_copy = artifacts.store_bytes(tmp_path / "plain", "models", artifacts.read_verified(
        model_path, ours["artifact_hash"], sealed.keyring), ".joblib")
    assert plain_copy[0] == ours["artifact_hash"] and plain_copy[1].read_bytes()[:len(crypto.MAGIC)] != crypto.MAGIC
    inputs = model_inputs(frame, sealed.config.dataset)
    assert np.array_equal(sealed.load_model(ours["artifact_hash"]).predict(inputs),
                          artifacts.load_model(plain_copy[1], plain_copy[0]).predict(inputs))
    reproduced = stages_reproduce(sealed, int(ours["version"]))
    assert reproduced["predictions_identical"] and reproduced["artifact_identical"], reproduced
    # the file names its key, and the registry names the same key for the file's plaintext hash
    path = artifacts.local_copy(sealed.store, "models", ours["artifact_hash"])
    ref = crypto.key_ref_of(path)
    assert ref is not None and ref.startswith("dk-")
    assert fetch(sealed, "SELECT key_ref FROM pipeline.sealed_files WHERE digest = :d",
                 d=ours["artifact_hash"]) == [{"key_ref": ref}]


def stages_reproduce(ws: Workspace, version: int) -> dict[str, Any]:
    from pipeline import stages

    return stages.reproduce_version(ws, version)


def _keyring(ws: Workspace, key_file: Path) -> crypto.Keyring:
    """A keyring on the same data keys, through another key file."""
    return crypto.Keyring(ws.engine, lambda: keys.LocalKeyManager(key_file))


def test_a_wrong_or_missing_key_and_a_tampered_file_fail_naming_the_file_and_the_key(
        worlds: dict[str, Workspace], tmp_path: Path) -> None:
    ws = worlds["sealed"]
    champion = _champion(ws)
    digest = champion["snapshot_hash"]
    original = artifacts.local_copy(ws.store, "snapshots", digest)
    ref = crypto.key_ref_of(original)
    copy = tmp_path / original.name
    shutil.copyfile(original, copy)

    other = keys.LocalKeyManager(tmp_path / "other" / "master.key")
    other.rotate()  # a key file with a master key of its own: not the one that wrapped the data keys
    with pytest.raises(keys.KeyUnavailable) as wrong:
        artifacts.read_verified(copy, digest, _keyring(ws, other.path))
    assert str(copy) in str(wrong.value) and ref in str(wrong.value) and str(other.path) in str(wrong.value)

    missing = tmp_path / "nowhere" / "master.key"
    with pytest.raises(keys.KeyUnavailable) as absent:
        ingest_load(copy, digest, _keyring(ws, missing))
    assert str(copy) in str(absent.value) and ref in str(absent.value) and str(missing) in str(absent.value)

    with pytest.raises(crypto.SealError, match=re.escape(ref)) as no_manager:
        artifacts.read_verified(copy, digest, None)
    assert str(copy) in str(no_manager.value)

    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, inside the first segment's ciphertext
    copy.chmod(0o644)
    copy.write_bytes(bytes(data))
    with pytest.raises(artifacts.ArtifactIntegrityError) as tampered:
        artifacts.read_verified(copy, digest, ws.keyring)
    assert isinstance(tampered.value, crypto.TamperedError)
    assert str(copy) in str(tampered.value) and "modified or corrupted" in str(tampered.value)
    copy.write_bytes(bytes(data[:-100]))  # cut short
    with pytest.raises(crypto.TamperedError, match="cut short"):
        artifacts.read_verified(copy, digest, ws.keyring)
    # the untouched file still reads as the snapshot it is named for
    assert artifacts.sha256_bytes(artifacts.read_verified(original, digest, ws.keyring)) == digest


def ingest_load(path: Path, digest: str, keyring: crypto.Keyring) -> Any:
    from pipeline.data import ingest

    return ingest.load_snapshot(path, digest, None, keyring)


def test_a_destroyed_data_key_leaves_the_file_unreadable_naming_it(worlds: dict[str, Workspace]) -> None:
    ws = worlds["sealed"]
    digest, path = artifacts.store_bytes(ws.store, "reports", b"<table><tr><td>shred me</td></tr></table>", ".html")
    ref = crypto.key_ref_of(path)
    assert ref is not None and artifacts.read_verified(path, digest, ws.keyring).startswith(b"<table>")
    ws.keyring.destroy(ref)
    with pytest.raises(keys.DataKeyDestroyed) as destroyed:
        artifacts.read_verified(path, digest, crypto.Keyring(ws.engine, ws.keyring.open_manager))
    assert str(path) in str(destroyed.value) and ref in str(destroyed.value)
    with pytest.raises(keys.DataKeyDestroyed):
        artifacts.read_verified(path, digest, ws.keyring)  # the process's own cache dropped it too


def test_encryption_off_is_logged_once_and_writes_plain(worlds: dict[str, Workspace],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    plain = worlds["plain"]
    stored = [p for p in plain.settings.artifact_dir.rglob("*") if p.is_file()]
    assert stored and not any(p.read_bytes()[:len(crypto.MAGIC)] == crypto.MAGIC for p in stored)
    assert fetch(plain, "SELECT count(*) AS n FROM pipeline.quarantine WHERE sealed IS NOT NULL") == [{"n": 0}]
    crypto._warned.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.store.crypto"):
        for _ in range(2):
            fresh = dataclasses.replace(plain)  # a new workspace: its store is built again
            assert not fresh.store.encrypt
    warnings = [r for r in caplog.records if "ENCRYPTION AT REST IS OFF" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "security.encrypt_at_rest: false" in warnings[0].getMessage()


BROKEN_BMI = 987.654  # a value the contract refuses (bmi out of range), distinctive enough to search for


def _score_with_a_refusal(ws: Workspace, run_id: str) -> list[int]:
    """Five records awaiting their outcome, the first with BROKEN_BMI, scored: their ids."""
    ids = demo.simulate_arrivals(ws.engine, rows=5, seed=21, labelled=False)
    with ws.engine.begin() as conn:
        conn.execute(sa.text("UPDATE public.patient_records SET bmi = :v WHERE patient_id = :id"),
                     {"v": BROKEN_BMI, "id": ids[0]})
    result = scoring.score_batch(ws, run_id)
    assert result["rows_refused"] >= 1, result
    return ids


def _columns_holding(ws: Workspace, needle: bytes) -> list[str]:
    """Every text, jsonb and bytea column of the pipeline schema whose bytes hold `needle`."""
    with ws.engine.connect() as conn:
        columns = _text_columns(conn)
        return [f"pipeline.{table}.{column}" for table, column, kind in columns
                if any(needle in (bytes(v) if kind == "bytea" else str(v).encode()) for v in conn.scalars(sa.text(
                    f"SELECT {column} FROM pipeline.{table} WHERE {column} IS NOT NULL")).all())]


def test_a_scoring_runs_refusals_keep_the_values_that_broke_the_contract_sealed(
        worlds: dict[str, Workspace]) -> None:
    scored = {name: _score_with_a_refusal(ws, f"score-refusal-{name}") for name, ws in worlds.items()}
    sealed, plain = worlds["sealed"], worlds["plain"]
    needle = str(BROKEN_BMI).encode()
    assert _columns_holding(sealed, needle) == []
    assert _columns_holding(plain, needle) == ["pipeline.scoring_refusals.reasons"]  # the search can fail
    [row] = fetch(sealed, "SELECT * FROM pipeline.scoring_refusals WHERE run_id = 'score-refusal-sealed'")
    assert row["key_ref"].startswith("dk-") and row["source_id"] == str(scored["sealed"][0])
    # after scoring, the records' ids are in plain form only where the CRM reads them by id (the README says why)
    hits = {hit.split(":")[0] for hit in _column_hits(sealed, {str(i): {} for i in scored["sealed"]})}
    assert hits == {"pipeline.predictions.source_id", "pipeline.scoring_refusals.source_id"}, hits
    with sealed.engine.connect() as conn:
        [plain_row] = conn.execute(sa.text("SELECT reasons FROM pipeline.scoring_refusals WHERE run_id = :r"),
                                   {"r": "score-refusal-sealed"}).scalars().all()
        [listed] = operator.refused_records(conn, sealed.model, "score-refusal-sealed", 10, sealed.keyring)
    assert [r["code"] for r in plain_row] == [r["code"] for r in listed["reasons"]]  # codes and rules stay plain
    assert all("value" not in r for r in plain_row)
    assert any(str(r.get("value")) == str(BROKEN_BMI) for r in listed["reasons"]), listed  # opened with the key
    with pytest.raises(crypto.SealError, match="scoring_refusals"), sealed.engine.connect() as conn:
        operator.refused_records(conn, sealed.model, "score-refusal-sealed", 10, None)


def test_a_scoring_run_makes_its_data_key_only_when_it_refuses_a_record(server_url: str, tmp_path: Path) -> None:
    url = create_scratch_database(server_url)
    sealed = _workspace(url, tmp_path, encrypt=True)
    try:
        _retrained(sealed)

        def keys() -> set[str]:
            return {r["key_ref"] for r in fetch(sealed, "SELECT key_ref FROM pipeline.data_keys")}

        _score_with_a_refusal(sealed, "score-one-key")
        refused = fetch(sealed, "SELECT source_id, key_ref FROM pipeline.scoring_refusals WHERE run_id = 'score-one-key'")
        assert len({r["key_ref"] for r in refused}) == 1 and {r["key_ref"] for r in refused} <= keys()

        with sealed.engine.begin() as conn:  # the refused records gone: the next run refuses nothing
            conn.execute(sa.text("DELETE FROM public.patient_records WHERE patient_id = ANY(:ids)"),
                         {"ids": [int(r["source_id"]) for r in refused]})
        before = keys()
        result = scoring.score_batch(sealed, "score-no-key")
        assert result["rows_refused"] == 0 and result["rows_scored"] > 0, result
        assert keys() == before  # and makes no key
    finally:
        sealed.engine.dispose()
        db.drop_database(url)


def test_encrypt_store_seals_a_plain_store_in_place_and_a_second_run_has_nothing_to_do(
        server_url: str, tmp_path: Path) -> None:
    from pipeline.registry.encrypt_store import encrypt_store

    url = create_scratch_database(server_url)
    plain = _workspace(url, tmp_path, encrypt=False)
    try:
        _retrained(plain)
        _score_with_a_refusal(plain, "score-plain")
        refusals_before = fetch(plain, "SELECT source_id, reasons FROM pipeline.scoring_refusals ORDER BY source_id")
        root = plain.settings.artifact_dir
        before = {p.relative_to(root): artifacts.sha256_file(p) for p in root.rglob("*") if p.is_file()}
        quarantine_before = [{k: r[k] for k in ("run_id", "row_number", "source_id", "reasons", "original")}
                             for r in fetch(plain, "SELECT * FROM pipeline.quarantine ORDER BY run_id, row_number")]
        champion = _champion(plain)
        frame = plain.load_snapshot(champion["snapshot_hash"])
        predicted = plain.load_model(champion["artifact_hash"]).predict(model_inputs(frame, plain.config.dataset))

        sealed = dataclasses.replace(plain, config=dataclasses.replace(plain.config, security=dataclasses.replace(
            plain.config.security, encrypt_at_rest=True)))
        first = encrypt_store(sealed.store, sealed.engine)
        after = {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
        assert after == set(before)  # sealed in place: the same names
        assert sorted(first.sealed) == sorted(str(p) for p in before) and first.already == 0
        assert first.refused == [] and first.quarantine_rows == len(quarantine_before) > 0
        assert first.validation_rows == 1 and first.refusal_rows == len(refusals_before) > 0
        for relative in before:
            path = root / relative
            assert path.read_bytes()[:len(crypto.MAGIC)] == crypto.MAGIC, relative
            if relative.parent.name != "compiled":  # named by its plaintext's hash: checked on every read
                artifacts.verify_file(path, relative.stem, sealed.keyring)
        assert _file_hits(root, _patients(sealed)) == [] and _column_hits(sealed, _patients(sealed)) == []
        assert np.array_equal(sealed.load_model(champion["artifact_hash"]).predict(
            model_inputs(sealed.load_snapshot(champion["snapshot_hash"]), sealed.config.dataset)), predicted)
        quarantine_after = [{k: r[k] for k in ("run_id", "row_number", "source_id", "reasons", "original")}
                            for r in fetch(sealed, "SELECT * FROM pipeline.quarantine ORDER BY run_id, row_number")]
        assert quarantine_after == quarantine_before  # opened, the rows are what they were
        assert _columns_holding(sealed, str(BROKEN_BMI).encode()) == []
        with sealed.engine.connect() as conn:
            listed = operator.refused_records(conn, sealed.model, "score-plain", 10, sealed.keyring)
        assert listed == refusals_before

        again = encrypt_store(sealed.store, sealed.engine)
        assert again.nothing_to_do and again.already == len(before) and again.sealed == []
    finally:
        plain.engine.dispose()
        db.drop_database(url)
