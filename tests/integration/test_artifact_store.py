"""The team artifact store (PIPELINE_ARTIFACT_STORE=postgres): what one worker writes, another reads.

Each "worker" is an artifact folder of its own on the same database, as CeleryExecutor workers on
different machines are: nothing is shared between them but PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline import stages
from pipeline.contract.settings import ENV_ARTIFACT_STORE, Settings
from pipeline.data import demo, ingest
from pipeline.store import artifacts, crypto, db
from pipeline.store.artifacts import ArtifactIntegrityError, ArtifactStore
from pipeline.views import models_view
from pipeline.workspace import Workspace
from tests.commands import cli_subprocess
from tests.integration.stage_runs import DEMO_WATERMARK, fetch, make_run, quick_workspace

PAGE = b"<html><body>drift report</body></html>"


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = db.create_engine(database_url)
    yield engine
    engine.dispose()


def worker(settings: Settings, engine: sa.Engine, folder: Path) -> ArtifactStore:
    """The artifact store of one worker: its own folder, the team store in the shared database."""
    return artifacts.artifact_store(dataclasses.replace(settings, artifact_dir=folder, artifact_store="postgres"),
                                    engine)


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def stored_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text("SELECT * FROM pipeline.artifact_objects ORDER BY digest")).mappings()]


def fitted_model() -> Any:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    return make_pipeline(StandardScaler(), Ridge(alpha=0.5)).fit(X, X @ np.array([1.5, -2.0, 0.5]))


def test_settings_name_the_store_and_refuse_an_unknown_one(tmp_path: Path) -> None:
    assert Settings.from_env({}).artifact_store == "local"
    assert Settings.from_env({ENV_ARTIFACT_STORE: "postgres"}).artifact_store == "postgres"
    with pytest.raises(ValueError, match=r"PIPELINE_ARTIFACT_STORE='s3'.*local, postgres"):
        Settings.from_env({ENV_ARTIFACT_STORE: "s3"})


def test_the_cli_refuses_an_unknown_store_in_one_line() -> None:
    # A real subprocess: the environment a fresh interpreter starts with is what is tested.
    result = cli_subprocess({**os.environ, ENV_ARTIFACT_STORE: "s3"})("status")
    assert result.returncode == 1
    assert result.stderr == ("error: PIPELINE_ARTIFACT_STORE='s3' is not an artifact store; set it to one of: "
                             "local, postgres (unset means local)\n")


def test_local_store_writes_no_rows(settings: Settings, engine: sa.Engine) -> None:
    store = artifacts.artifact_store(settings, engine)
    assert store.engine is None
    artifacts.store_bytes(store, "reports", PAGE, ".html")
    assert stored_rows(engine) == []


def test_written_on_one_worker_read_on_another(settings: Settings, engine: sa.Engine, tmp_path: Path) -> None:
    a, b = worker(settings, engine, tmp_path / "a"), worker(settings, engine, tmp_path / "b")
    frame = pd.DataFrame({"patient_id": [1, 2, 3], "bmi": [22.5, 31.0, None]})
    snapshot, _ = ingest.store_clean_snapshot(frame, a)
    model, fitted = artifacts.store_model(a, fitted_model())[0], fitted_model()
    report, report_path = artifacts.store_bytes(a, "reports", PAGE, ".html")
    assert files_in(tmp_path / "b") == []

    pd.testing.assert_frame_equal(ingest.load_snapshot(artifacts.local_copy(b, "snapshots", snapshot), snapshot),
                                  ingest.load_snapshot(artifacts.local_copy(a, "snapshots", snapshot), snapshot))
    loaded = artifacts.load_model(artifacts.local_copy(b, "models", model), model)
    X = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    assert models_view.read_report(b, artifacts.relative_path(a.root, report_path)) == PAGE
    for kind, digest in [("snapshots", snapshot), ("models", model), ("reports", report)]:
        copied = artifacts.stored_path(b.root, kind, digest)
        assert copied.read_bytes() == artifacts.stored_path(a.root, kind, digest).read_bytes()
        assert artifacts.sha256_file(copied) == digest
    assert {r["digest"]: (r["kind"], r["suffix"]) for r in stored_rows(engine)} == {
        snapshot: ("snapshots", ".parquet"), model: ("models", ".joblib"), report: ("reports", ".html")}


def test_missing_everywhere_is_missing(settings: Settings, engine: sa.Engine, tmp_path: Path) -> None:
    b = worker(settings, engine, tmp_path / "b")
    path = artifacts.local_copy(b, "models", "0" * 64)
    with pytest.raises(ArtifactIntegrityError, match="artifact missing"):
        artifacts.read_verified(path, "0" * 64)
    with pytest.raises(LookupError, match="not in the artifact store"):
        models_view.read_report(b, f"reports/{'0' * 64}.html")


def tamper_in_database(engine: sa.Engine, digest: str) -> None:
    """Overwrite the start of the stored large object, as a hand with SQL access could."""
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT lo_put(oid, 0, 'tampered'::bytea) FROM pipeline.artifact_objects "
                             "WHERE digest = :d"), {"d": digest})


def test_a_tampered_database_copy_is_refused_and_not_cached(settings: Settings, engine: sa.Engine,
                                                             tmp_path: Path) -> None:
    a, b = worker(settings, engine, tmp_path / "a"), worker(settings, engine, tmp_path / "b")
    model, _ = artifacts.store_model(a, fitted_model())
    report, report_path = artifacts.store_bytes(a, "reports", PAGE, ".html")
    tamper_in_database(engine, model)
    tamper_in_database(engine, report)

    with pytest.raises(ArtifactIntegrityError, match=rf"{model} in the team store pipeline.artifact_objects"):
        artifacts.local_copy(b, "models", model)
    with pytest.raises(ArtifactIntegrityError, match=rf"{report} in the team store"):
        models_view.read_report(b, artifacts.relative_path(a.root, report_path))
    assert files_in(tmp_path / "b") == []  # no corrupt file, no temporary one
    assert artifacts.load_model(artifacts.local_copy(a, "models", model), model) is not None  # A's cache is intact


def test_a_corrupt_local_cache_is_refused_as_today(settings: Settings, engine: sa.Engine, tmp_path: Path) -> None:
    a, b = worker(settings, engine, tmp_path / "a"), worker(settings, engine, tmp_path / "b")
    model, _ = artifacts.store_model(a, fitted_model())
    cached = artifacts.local_copy(b, "models", model)
    cached.chmod(0o644)
    cached.write_bytes(b"not the model")
    with pytest.raises(ArtifactIntegrityError, match="modified or corrupted"):
        artifacts.load_model(artifacts.local_copy(b, "models", model), model)


def test_the_same_bytes_twice_leave_one_row(settings: Settings, engine: sa.Engine, tmp_path: Path) -> None:
    a, b = worker(settings, engine, tmp_path / "a"), worker(settings, engine, tmp_path / "b")
    first = artifacts.store_bytes(a, "reports", PAGE, ".html")
    assert artifacts.store_bytes(a, "reports", PAGE, ".html") == first
    assert artifacts.store_bytes(b, "reports", PAGE, ".html")[0] == first[0]
    assert [r["digest"] for r in stored_rows(engine)] == [first[0]]
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM pg_largeobject_metadata")) == 1


def test_concurrent_writers_of_one_digest_all_succeed(settings: Settings, engine: sa.Engine, tmp_path: Path) -> None:
    data = bytes(range(256)) * 20_000  # several chunks
    results: list[str] = []
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            results.append(artifacts.store_bytes(worker(settings, engine, tmp_path / f"w{index}"),
                                                 "snapshots", data, ".parquet")[0])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(results)) == 1
    [row] = stored_rows(engine)
    assert row["size_bytes"] == len(data)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM pg_largeobject_metadata")) == 1


def test_rows_are_never_overwritten(settings: Settings, engine: sa.Engine, tmp_path: Path) -> None:
    artifacts.store_bytes(worker(settings, engine, tmp_path / "a"), "reports", PAGE, ".html")
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(sa.text("UPDATE pipeline.artifact_objects SET size_bytes = 0"))


def on_worker(ws: Workspace, folder: Path) -> Workspace:
    """The workspace as a worker with its own, empty artifact folder would have it."""
    return dataclasses.replace(ws, settings=dataclasses.replace(ws.settings, artifact_dir=folder,
                                                                artifact_store="postgres"))


def retrain_on_workers(ws: Workspace, tmp_path: Path, run_id: str) -> dict[str, Any]:
    """Every stage of a retrain, each on a worker of its own that starts with an empty artifact folder."""
    run = make_run(run_id, DEMO_WATERMARK)
    snapshot = stages.ingest_snapshot(on_worker(ws, tmp_path / f"{run_id}-ingest"), run)
    fresh = stages.has_new_data(on_worker(ws, tmp_path / f"{run_id}-check"), run, snapshot["snapshot_hash"], force=True)
    checked = stages.validate_snapshot(on_worker(ws, tmp_path / f"{run_id}-validate"), run, snapshot["snapshot_hash"])
    candidate = stages.train_candidate(on_worker(ws, tmp_path / f"{run_id}-train"), run, checked["clean_snapshot_hash"])
    evaluation = stages.evaluate_candidate(on_worker(ws, tmp_path / f"{run_id}-evaluate"), run, candidate["version"])
    outcome = stages.promote_candidate(on_worker(ws, tmp_path / f"{run_id}-promote"), run, actor="test")
    return {"snapshot": snapshot, "fresh": fresh, "checked": checked, "candidate": candidate, "evaluation": evaluation,
            "outcome": outcome}


def test_a_retrain_across_workers_promotes(ws: Workspace, tmp_path: Path) -> None:
    ws = quick_workspace(ws)
    demo.seed_demo(ws.engine)
    result = retrain_on_workers(ws, tmp_path, "first")

    assert result["fresh"] and result["outcome"]["status"] == "promoted"
    assert result["evaluation"]["card"] and result["evaluation"]["comparison"]
    assert files_in(tmp_path / "first-promote") == []  # promotion reads no artifact
    fetched = tmp_path / "first-train" / "snapshots" / f"{result['checked']['clean_snapshot_hash']}.parquet"
    assert artifacts.sha256_plain(fetched, ws.keyring) == result["checked"]["clean_snapshot_hash"]  # via PostgreSQL
    [model] = fetch(ws, "SELECT * FROM pipeline.model_versions WHERE version = 1")
    evaluator = on_worker(ws, tmp_path / "first-evaluate")
    assert artifacts.stored_path(evaluator.settings.artifact_dir, "models", model["artifact_hash"]).is_file()
    assert {r["kind"] for r in stored_rows(ws.engine)} >= {"snapshots", "reports", "models", "cards"}

    viewer = on_worker(ws, tmp_path / "viewer")  # the Models view and the REST app, on a machine that wrote nothing
    with ws.engine.connect() as conn:
        card = models_view.find_report(conn, ws.model, "card", 1)
        quality_report = models_view.find_report(conn, ws.model, "quality", "first")
    assert b"<html" in models_view.read_report(viewer.store, card["path"]).lower()
    assert b"<html" in models_view.read_report(viewer.store, quality_report["path"]).lower()
    assert crypto.read_plain(artifacts.recorded_copy(viewer.store, card["path"]), viewer.keyring) == \
        models_view.read_report(viewer.store, card["path"])

    second = retrain_on_workers(ws, tmp_path, "second")  # a champion, loaded on a worker that never trained it
    assert second["evaluation"]["champion_version"] == 1
    assert second["evaluation"]["champion_metrics"] is not None
