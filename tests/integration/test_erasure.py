"""A patient's erasure end to end, and who saw what (issue 30), on real PostgreSQL with a real retrain.

One champion (ridge only, the demo study plus arrivals with faulty rows) serves every test: a patient it was
trained on and forecast for by the REST API, and a patient quarantined, are erased; afterwards neither is in
any file of the artifact store (every Parquet file read back) nor in any table, lineage says which version
trained on them, reproduce says so, a second erasure changes nothing, and ingest refuses the row again."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import requests
import sqlalchemy as sa

from pipeline import erasure, stages
from pipeline.cli.champion import status_report
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.registry import runs
from pipeline.serving import rest, scoring
from pipeline.serving.app import create_app
from pipeline.store import accesslog, crypto, db
from pipeline.views import models_view
from pipeline.workspace import Workspace
from tests.commands import Cli, output
from tests.conftest import create_scratch_database
from tests.integration.stage_runs import (
    fetch,
    make_run,
    promote_demo_champion,
    quick_workspace,
    retrain_through_stages,
)
from tests.integration.test_serving import PREDICT, patient_records, running

TOKEN = "erasure-test-token-0123456789"


def _values(ws: Workspace, source_id: str) -> dict[str, Any]:
    [row] = fetch(ws, f"SELECT * FROM public.patient_records WHERE {ws.config.dataset.id_column}::text = :i", i=source_id)
    return row


def _read_table(ws: Workspace, path: Path, columns: list[str] | None = None) -> Any:
    """A stored Parquet file read back as its plaintext (sealed files open with the workspace's live keys)."""
    with crypto.open_plain(path, ws.keyring) as handle:
        return pq.read_table(handle, columns=columns)


def _parquet_hits(ws: Workspace, root: Path, id_column: str, source_id: str, values: dict[str, Any]) -> list[str]:
    """Every Parquet file under the store, read back (decrypted with live keys): the files holding the id, or a
    row with the patient's numeric values (all of them at once)."""
    numeric = {k: v for k, v in values.items() if isinstance(v, float)}
    hits = []
    for path in root.rglob("*.parquet"):
        frame = _read_table(ws, path).to_pandas()
        if id_column in frame and (frame[id_column].astype(str) == source_id).any():
            hits.append(f"{path}: id")
        elif numeric and set(numeric) <= set(frame.columns):
            same = frame[list(numeric)].astype(float).eq(numeric).all(axis=1)
            if same.any():
                hits.append(f"{path}: values")
    return hits


def _tables_with(ws: Workspace, source_id: str) -> list[str]:
    """Every table of the pipeline schema with a row whose source_id is the id, or whose JSON names it."""
    found = []
    with ws.engine.connect() as conn:
        columns = conn.execute(sa.text("""
            SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c
              JOIN information_schema.tables t USING (table_schema, table_name)
             WHERE c.table_schema = 'pipeline' AND t.table_type = 'BASE TABLE'
               AND (c.column_name = 'source_id' OR c.data_type = 'jsonb')
        """)).all()
        for table, column, kind in columns:
            if kind == "jsonb":
                docs = conn.scalars(sa.text(f"SELECT {column} FROM pipeline.{table} WHERE strpos({column}::text, :i) > 0"),
                                    {"i": source_id}).all()
                if any(erasure.scrub_json(d, ws.config.dataset.id_column, source_id)[1] for d in docs):
                    found.append(f"{table}.{column}")
            elif conn.scalar(sa.text(f"SELECT count(*) FROM pipeline.{table} WHERE {column} = :i"), {"i": source_id}):
                found.append(f"{table}.{column}")
    return found


@pytest.fixture(scope="module")
def erased_world(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A champion trained on the demo study plus arrivals (a few quarantined); a REST forecast for patient P
    (trained on) by the principal `crm-test`; then P and a quarantined patient Q erased. Shared by the tests
    of this module, in order (each builds on what the one before left)."""
    url = create_scratch_database(server_url)
    folder = tmp_path_factory.mktemp("erasure")
    settings = Settings(database_url=url, config_path=PROJECT_ROOT / "pipeline.yaml",
                        artifact_dir=folder / "artifacts", pgdata_dir=PROJECT_ROOT / ".pgdata",
                        erasure_key_file=folder / "keys" / "erasure.key", key_file=folder / "keys" / "master.key")
    ws = Workspace.open(settings)
    try:
        yield _erased_world(quick_workspace(ws))
    finally:
        ws.engine.dispose()
        db.drop_database(url)


def _erased_world(quick: Workspace) -> dict[str, Any]:
    demo.seed_demo(quick.engine)
    demo.simulate_arrivals(quick.engine, rows=40, seed=3, bad_rows=3)
    result = retrain_through_stages(quick, make_run("first"))
    assert result["outcome"]["status"] == "promoted"
    contract = quick.config.dataset
    [quarantined] = fetch(quick, "SELECT * FROM pipeline.quarantine WHERE labelled ORDER BY row_number LIMIT 1")
    start = fetch(quick, "SELECT holdout_start FROM pipeline.model_versions WHERE version = 1")[0]["holdout_start"]
    [trained] = fetch(quick, f"SELECT {contract.id_column}::text AS i FROM public.patient_records "
                      f"WHERE {contract.id_column}::text <> :s ORDER BY {contract.id_column} LIMIT 1",
                      s=str(start.get(contract.id_column, "")))  # with encryption at rest: its keyed hash
    p, q = trained["i"], quarantined["source_id"]
    values = {"P": _values(quick, p), "Q": _values(quick, q)}
    with running(create_app(quick, [rest.Token(TOKEN, "crm-test")])) as base:
        answer = requests.post(base + PREDICT, json=patient_records(quick, 1, [p])[0],
                               headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert answer.status_code == 200, answer.text
    assert fetch(quick, "SELECT count(*) AS n FROM pipeline.predictions WHERE source_id = :p", p=p)[0]["n"] == 1
    history = fetch(quick, "SELECT * FROM pipeline.promotion_events ORDER BY event_id")
    erased_p = erasure.erase(quick, p, "the patient asked (GDPR art. 17)", "test")
    erased_q = erasure.erase(quick, q, "the patient asked", "test")
    return {"ws": quick, "p": p, "q": q, "values": values, "first": result, "history": history,
            "erased_p": erased_p, "erased_q": erased_q}


def test_an_erased_patient_is_in_no_file_and_no_table(erased_world: dict[str, Any]) -> None:
    ws, p, q = erased_world["ws"], erased_world["p"], erased_world["q"]
    outcome = erased_world["erased_p"]
    assert outcome["status"] == "done"
    kinds = {s["kind"] for s in outcome["snapshots"]}
    assert {"raw", "clean"} <= kinds and outcome["rows_deleted"]["predictions"] == 1
    assert erased_world["erased_q"]["rows_deleted"]["quarantine"] >= 1 and erased_world["erased_q"]["pages"]
    root, id_column = ws.settings.artifact_dir, ws.config.dataset.id_column
    for patient in ("P", "Q"):
        source_id = p if patient == "P" else q
        assert _parquet_hits(ws, root, id_column, source_id, erased_world["values"][patient]) == [], patient
        assert _tables_with(ws, source_id) == [], patient
        for page in [*root.glob("reports/*.html"), *root.glob("cards/*.html")]:
            text = crypto.read_plain(page, ws.keyring).decode()
            assert erasure.scrub_page(text, id_column, source_id)[1] == 0, page
        report = erasure.erasure_report(ws, source_id)
        assert report["erased"] and report["found"] == 0 and report["tombstone_recorded"], report
        assert {pl["place"].split(" ")[0] for pl in report["places"]} >= {"snapshot", "reports", "cards", "table"}
    for old in outcome["snapshots"]:
        assert not (root / "snapshots" / f"{old['old_hash']}.parquet").exists()  # shredded
        # and crypto-shredded: every data key it was sealed under is destroyed
        destroyed = fetch(ws, "SELECT k.destroyed_at FROM pipeline.sealed_files f JOIN pipeline.data_keys k "
                              "USING (key_ref) WHERE f.digest = :d", d=old["old_hash"])
        assert destroyed and all(r["destroyed_at"] is not None for r in destroyed), old
    requests_left = fetch(ws, "SELECT source_id, tombstone, status FROM pipeline.erasure_requests ORDER BY request_id")
    assert [r["source_id"] for r in requests_left] == [None, None] and all(r["tombstone"] for r in requests_left)


def test_lineage_history_and_reproduce_stay_honest(erased_world: dict[str, Any]) -> None:
    ws = erased_world["ws"]
    clean = next(s for s in erased_world["erased_p"]["snapshots"] if s["kind"] == "clean")
    assert erased_world["erased_p"]["versions_trained_on_erased"] == [1]
    assert fetch(ws, "SELECT version FROM pipeline.trained_on_erased") == [{"version": 1}]
    assert fetch(ws, "SELECT * FROM pipeline.promotion_events ORDER BY event_id") == erased_world["history"]
    [redaction] = fetch(ws, "SELECT * FROM pipeline.snapshot_redactions WHERE old_hash = :h", h=clean["old_hash"])
    assert redaction["new_hash"] == clean["new_hash"] and redaction["request_id"] == erased_world["erased_p"]["request_id"]
    reproduced = stages.reproduce_version(ws, 1)
    assert reproduced["trained_on_erased"] and reproduced["reproduced_on_snapshot"] == clean["new_hash"]
    assert "trained on data later erased" in reproduced["erasure_note"]
    assert reproduced["train_rows"] == reproduced["recorded_train_rows"] - 1
    deadline = status_report(ws)["champion"]["erasure_deadline"]
    assert deadline["champion"] == 1 and deadline["retrain_within_days"] == ws.config.erasure.retrain_within_days


def test_a_second_erasure_is_a_no_op_and_the_tombstone_blocks_reingest(erased_world: dict[str, Any]) -> None:
    ws, p = erased_world["ws"], erased_world["p"]
    snapshots_before = fetch(ws, "SELECT snapshot_hash FROM pipeline.snapshots ORDER BY snapshot_hash")
    again = erasure.erase(ws, p, "asked twice", "test")
    assert again["status"] == "duplicate" and not again["changed"] and again["bytes_rewritten"] == 0
    assert again["first_request"] == erasure_world_request(erased_world)
    assert fetch(ws, "SELECT snapshot_hash FROM pipeline.snapshots ORDER BY snapshot_hash") == snapshots_before
    # the source still holds both erased rows (P and Q): ingest refuses them, counted
    snapshot = stages.ingest_snapshot(ws, make_run("after-erasure"))
    assert snapshot["erased_rows"] == 2
    assert fetch(ws, "SELECT erased_rows FROM pipeline.snapshots WHERE snapshot_hash = :h",
                 h=snapshot["snapshot_hash"]) == [{"erased_rows": 2}]
    id_column = ws.config.dataset.id_column
    ids = _read_table(ws, ws.snapshot_path(snapshot["snapshot_hash"]), [id_column]).column(0).to_pylist()
    assert int(p) not in ids
    # re-added by the source under a new id, it is a new row
    with ws.engine.begin() as conn:
        conn.execute(sa.text(f"""
            INSERT INTO public.patient_records SELECT 900000 AS {id_column}, birth_date, visit_date, sex, bmi, bp_mean,
                   tc, ldl, hdl, tch, ltg, glucose, progression_12m, recorded_at, label_recorded_at
              FROM public.patient_records WHERE {id_column} = :p
        """), {"p": int(p)})
    readded = stages.ingest_snapshot(ws, make_run("re-added"))
    ids = _read_table(ws, ws.snapshot_path(readded["snapshot_hash"]), [id_column]).column(0).to_pylist()
    assert readded["erased_rows"] == 2 and 900000 in ids and int(p) not in ids


def erasure_world_request(world: dict[str, Any]) -> int:
    return int(world["erased_p"]["request_id"])


def test_a_champion_trained_on_erased_rows_is_replaced_by_the_deadline(erased_world: dict[str, Any]) -> None:
    ws = erased_world["ws"]
    soon = dataclasses.replace(ws, config=dataclasses.replace(
        ws.config, erasure=dataclasses.replace(ws.config.erasure, retrain_within_days=0.5)))
    run = make_run("erasure-deadline")
    snapshot = stages.ingest_snapshot(soon, run)
    assert stages.has_new_data(soon, run, snapshot["snapshot_hash"])  # forced: the deadline is within a day
    checked = stages.validate_snapshot(soon, run, snapshot["snapshot_hash"])
    candidate = stages.train_candidate(soon, run, checked["clean_snapshot_hash"])
    evaluation = stages.evaluate_candidate(soon, run, candidate["version"])
    assert "trained on rows erased since" in evaluation["reason"]
    assert stages.promote_candidate(soon, run, actor="test")["status"] == "promoted"
    assert status_report(soon)["champion"]["erasure_deadline"] is None


def test_an_erased_patients_sealed_refusal_goes_and_the_runs_others_are_sealed_anew(ws: Workspace) -> None:
    """A scoring run refused two patients (their broken values sealed under the run's data key); erasing one deletes
    its refusal, re-seals the other under a new key and destroys the old one, so a backup's copy no longer opens."""
    quick = quick_workspace(ws)
    promote_demo_champion(quick)
    ids = demo.simulate_arrivals(quick.engine, rows=6, seed=5, labelled=False)
    with quick.engine.begin() as conn:
        for patient, bmi in ((ids[0], 987.0), (ids[1], 654.0)):
            conn.execute(sa.text("UPDATE public.patient_records SET bmi = :v WHERE patient_id = :id"),
                         {"v": bmi, "id": patient})
    scoring.score_batch(quick, "score-refused")
    before = {r["source_id"]: r for r in fetch(quick, "SELECT * FROM pipeline.scoring_refusals")}
    assert set(before) == {str(ids[0]), str(ids[1])}
    [old_key] = {r["key_ref"] for r in before.values()}

    outcome = erasure.erase(quick, str(ids[0]), "the patient asked", "test")

    after = {r["source_id"]: r for r in fetch(quick, "SELECT * FROM pipeline.scoring_refusals")}
    assert set(after) == {str(ids[1])} and outcome["rows_deleted"]["scoring_refusals"] == 1
    assert outcome["refusal_runs_resealed"] == 1
    kept = after[str(ids[1])]
    assert kept["key_ref"] != old_key and kept["reasons"] == before[str(ids[1])]["reasons"]  # sealed anew, the same
    [destroyed] = fetch(quick, "SELECT destroyed_at FROM pipeline.data_keys WHERE key_ref = :k", k=old_key)
    assert destroyed["destroyed_at"] is not None
    assert erasure.erasure_report(quick, str(ids[0]))["erased"]


def test_an_erasure_waits_for_a_running_stage_or_fails_clearly(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    demo.seed_demo(ws.engine)
    patient = str(fetch(ws, "SELECT min(patient_id) AS p FROM public.patient_records")[0]["p"])
    stages.ingest_snapshot(ws, make_run("busy"))
    impatient = dataclasses.replace(ws, config=dataclasses.replace(
        ws.config, erasure=dataclasses.replace(ws.config.erasure, wait_seconds=1)))
    # a stage at work: the erasure waits for it, then fails naming it; nothing was erased
    with runs.running(ws.engine, ws.settings, "busy", "train"):
        with pytest.raises(runs.RunBusy, match="busy .stage train."):
            erasure.erase(impatient, patient, "asked", "test")
    assert fetch(ws, "SELECT status FROM pipeline.erasure_requests") == [{"status": "pending"}]
    assert fetch(ws, "SELECT count(*) AS n FROM pipeline.snapshot_redactions") == [{"n": 0}]
    # a stage that ends while the erasure waits: the erasure goes on once it has ended
    started, release = threading.Event(), threading.Event()

    def stage() -> None:
        with runs.running(ws.engine, ws.settings, "busy", "validate"):
            started.set()
            release.wait(60)

    worker = threading.Thread(target=stage)
    worker.start()
    started.wait(60)
    threading.Timer(1.0, release.set).start()
    [done] = erasure.process_pending(ws)
    worker.join(60)
    assert done["status"] == "done" and done["snapshots"]
    # an erasure in progress: a stage starting meanwhile waits, then fails clearly, never reading the rows
    monkeypatch.setattr(runs, "ERASURE_WAIT_SECONDS", 0.5)
    with runs.erasure_lock(ws.engine, 5):
        with pytest.raises(runs.ErasureInProgress, match="erasure"):
            stages.ingest_snapshot(ws, make_run("during-erasure"))
    assert fetch(ws, "SELECT snapshot_hash FROM pipeline.training_runs WHERE run_id = 'during-erasure'") == [
        {"snapshot_hash": None}]


def test_every_read_of_patient_rows_is_logged_and_the_log_is_append_only(ws: Workspace, cli: Cli) -> None:
    demo.seed_demo(ws.engine)
    demo.simulate_arrivals(ws.engine, rows=20, seed=5, bad_rows=2)
    run = make_run("quality")
    snapshot = stages.ingest_snapshot(ws, run)
    stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])
    shown = output(cli("quarantine", "--json"))
    assert shown and all("original" in r for r in shown)
    page = models_view.read_quarantine(ws.engine, ws.model, "airflow:admin", "GET /models-view/m/quarantine",
                                       "quarantine page", limit=models_view.QUARANTINE_PAGE_ROWS, keys=ws.keyring)
    export = models_view.read_quarantine(ws.engine, ws.model, "airflow:admin", "GET /models-view/m/quarantine.csv",
                                         "quarantine.csv", run_id="quality", keys=ws.keyring)
    with ws.engine.connect() as conn:
        log = list(reversed(accesslog.recent(conn)))
    assert [(e["principal"], e["channel"], e["what"], e["rows"]) for e in log] == [
        (f"cli:{_user()}", "cli", "quarantine", len(shown)),
        ("airflow:admin", "view", "quarantine page", len(page)),
        ("airflow:admin", "view", "quarantine.csv run_id=quality", len(export))]
    assert log[0]["request"] == "python -m pipeline quarantine --json"
    for statement in ("UPDATE pipeline.access_log SET rows = 0", "DELETE FROM pipeline.access_log",
                      "TRUNCATE pipeline.access_log"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), ws.engine.begin() as conn:
            conn.execute(sa.text(statement))


def _user() -> str:
    import os

    return os.environ.get("USER") or "root"


def test_a_rest_forecast_is_logged_under_the_token_name(erased_world: dict[str, Any]) -> None:
    ws = erased_world["ws"]
    [entry] = fetch(ws, "SELECT * FROM pipeline.access_log WHERE channel = 'rest'")
    assert entry["principal"] == "crm-test" and entry["what"] == "predict" and entry["rows"] == 1
    assert entry["request"].startswith(f"POST {PREDICT} request ") and TOKEN not in str(entry)
