"""Governance on real PostgreSQL: promotion history, rollback, reproduction, failing closed, stored evidence.

Models come from full retrains through the stage functions (ingest, validate, train on the
clean snapshot, evaluate, promote) with only the ridge family configured, written to a copy
of pipeline.yaml so the `python -m pipeline` commands (run in this process) read the same configuration.

A second run that genuinely promotes needs a champion it can beat by the margin and
significantly: version 1 is a heavily shrunk ridge (alpha 800, holdout R² about 0.4, over the
0.2 floor), version 2 the configured ridge (alpha 1) after 30 new patients arrive.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import yaml

from pipeline import stages
from pipeline.contract.settings import ENV_ARTIFACT_DIR, ENV_CONFIG, ENV_DATABASE_URL, PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.registry import records
from pipeline.registry.runs import Run
from pipeline.store import artifacts
from pipeline.store.artifacts import ArtifactIntegrityError
from pipeline.workspace import Workspace
from tests.commands import Cli, cli_in_process, output
from tests.conftest import copy_workspace, shared_workspace
from tests.integration.stage_runs import (
    DEMO_WATERMARK,
    fetch,
    make_run,
    promote_demo_champion,
    rewrite_stored,
    stored_bytes,
    stored_frame,
)

WEAK_ALPHA = 800.0
PROMOTE_ANY = -1.0  # margin: a candidate up to twice the champion's RMSE clears the margin test
SLICE_GROUPS = {("sex", "F"), ("sex", "M"), ("age", "<40"), ("age", "40-60"), ("age", ">=60"),
                ("bmi", "<25"), ("bmi", "25-30"), ("bmi", ">=30")}


def write_config(folder: Path, change: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """pipeline.yaml with only the ridge family (and `change` applied), as a file of its own."""
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    raw["training"]["families"] = {"ridge": {"alpha": 1.0}}
    if change is not None:
        change(raw)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def gws(settings: Settings, config_path: Path) -> Iterator[Workspace]:
    """A Workspace on the test's own database, reading the ridge-only configuration."""
    workspace = Workspace.open(dataclasses.replace(settings, config_path=config_path))
    yield workspace
    workspace.engine.dispose()


@pytest.fixture
def cli(database_url: str, settings: Settings, config_path: Path) -> Cli:
    """`python -m pipeline ARGS`, in this process, on the test's database, artifacts and configuration."""
    env = {**os.environ, ENV_DATABASE_URL: database_url, ENV_ARTIFACT_DIR: str(settings.artifact_dir),
           ENV_CONFIG: str(config_path), "PIPELINE_KEY_FILE": str(settings.key_file), "OMP_NUM_THREADS": "1",
           "USER": "tester"}
    return cli_in_process(env)


def with_alpha(ws: Workspace, alpha: float) -> Workspace:
    training = dataclasses.replace(ws.config.training, families={"ridge": {"alpha": alpha}})
    return dataclasses.replace(ws, config=dataclasses.replace(ws.config, training=training))


def train_candidate(ws: Workspace, run: Run) -> dict[str, Any]:
    """Ingest, validate and train on the clean rows, as the DAG does."""
    snapshot = stages.ingest_snapshot(ws, run)
    checked = stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])
    return stages.train_candidate(ws, run, checked["clean_snapshot_hash"])


def retrain(ws: Workspace, run: Run, margin: float | None = None) -> dict[str, Any]:
    """Every stage in the order the DAG runs them."""
    candidate = train_candidate(ws, run)
    evaluation = stages.evaluate_candidate(ws, run, candidate["version"], margin)
    outcome = stages.promote_candidate(ws, run, actor="test")
    return {"candidate": candidate, "evaluation": evaluation, "outcome": outcome}


def events(ws: Workspace) -> list[dict[str, Any]]:
    return fetch(ws, "SELECT * FROM pipeline.promotion_events ORDER BY event_id")


def champion_rows(ws: Workspace) -> dict[str, Any]:
    """The champion slot and the event log, to compare before and after."""
    return {"champion": fetch(ws, "SELECT * FROM pipeline.champion"), "events": events(ws)}


def champion_version(ws: Workspace) -> int | None:
    with ws.engine.connect() as conn:
        champion = records.current_champion(conn, ws.model)
    return None if champion is None else int(champion["version"])


def model(ws: Workspace, version: int) -> dict[str, Any]:
    with ws.engine.connect() as conn:
        return records.get_model(conn, version, ws.model)


def overwrite(path: Path, data: bytes) -> None:
    """Replace a read-only stored file's bytes, as a careless hand would."""
    os.chmod(path, path.stat().st_mode | stat.S_IWUSR)
    path.write_bytes(data)


@contextmanager
def registry(server_url: str, folder: Path, build: Callable[[Workspace], dict[str, Any]]
             ) -> Iterator[tuple[Workspace, dict[str, Any]]]:
    """A registry built once for the module (on the ridge-only configuration), and what building it returned;
    each test changes its own copy (`copy_workspace`)."""
    with shared_workspace(server_url, folder, write_config(folder)) as ws:
        yield ws, build(ws)


@pytest.fixture(scope="module")
def one_champion(server_url: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[Workspace, dict[str, Any]]]:
    with registry(server_url, tmp_path_factory.mktemp("one-champion"),
                  lambda ws: promote_demo_champion(ws, retrain)) as built:
        yield built


@pytest.fixture(scope="module")
def two_champion_registry(server_url: str, tmp_path_factory: pytest.TempPathFactory
                          ) -> Iterator[tuple[Workspace, dict[str, Any]]]:
    with registry(server_url, tmp_path_factory.mktemp("two-champions"), promote_twice) as built:
        yield built


@pytest.fixture
def champion(one_champion: tuple[Workspace, dict[str, Any]], gws: Workspace) -> dict[str, Any]:
    """The demo study retrained with the configured ridge: version 1 is the champion (the test's own copy)."""
    copy_workspace(one_champion[0], gws)
    return one_champion[1]


@pytest.fixture
def two_champions(two_champion_registry: tuple[Workspace, dict[str, Any]], gws: Workspace) -> dict[str, Any]:
    """A weak version 1 promoted first, then version 2 genuinely promoted over it (the test's own copy)."""
    copy_workspace(two_champion_registry[0], gws)
    return two_champion_registry[1]


def promote_twice(gws: Workspace) -> dict[str, Any]:
    demo.seed_demo(gws.engine)
    first = retrain(with_alpha(gws, WEAK_ALPHA), make_run("first", DEMO_WATERMARK))
    assert first["outcome"]["status"] == "promoted", first["outcome"]["reason"]
    demo.simulate_arrivals(gws.engine, rows=30, seed=7)
    second = retrain(gws, make_run("second"))
    assert second["outcome"]["status"] == "promoted", second["outcome"]["reason"]
    assert (first["candidate"]["version"], second["candidate"]["version"]) == (1, 2)
    return {"first": first, "second": second}


# --- history -------------------------------------------------------------------------------------


def test_history_lists_each_change_of_champion_in_order(gws: Workspace, two_champions: dict[str, Any],
                                                        cli: Cli) -> None:
    history = output(cli("history", "--json"))

    assert [(e["from_version"], e["to_version"], e["run_id"], e["actor"]) for e in history] == [
        (None, 1, "first", "test"), (1, 2, "second", "test")]
    assert history[0]["reason"] == two_champions["first"]["evaluation"]["reason"]
    assert history[0]["reason"].startswith("first model")
    assert history[1]["reason"] == two_champions["second"]["evaluation"]["reason"]
    assert history[1]["reason"].startswith("beats the champion")
    assert history[0]["event_id"] < history[1]["event_id"]
    assert datetime.fromisoformat(history[0]["at"]) <= datetime.fromisoformat(history[1]["at"])
    assert champion_version(gws) == 2


# --- rollback ------------------------------------------------------------------------------------


def test_rollback_round_trip(gws: Workspace, two_champions: dict[str, Any], cli: Cli) -> None:
    result = stages.rollback_champion(gws, "rollback-1", "  v2 over-predicts for new patients  ")

    assert result == {"champion": 1, "replaced": 2, "reason": "v2 over-predicts for new patients",
                      "run_id": "rollback-1", "forced_past": []}
    assert champion_version(gws) == 1
    [slot] = fetch(gws, "SELECT * FROM pipeline.champion")
    assert (slot["version"], slot["run_id"]) == (1, "rollback-1")
    status = output(cli("status", "--json"))["champion"]  # a rollback's run has no evaluation of its own
    assert (status["version"], status["promoted_by_run"]) == (1, "rollback-1")
    assert status["holdout_metrics"]["rmse"] > 0  # the metrics version 1 was promoted on
    rolled_back = events(gws)[-1]
    assert (rolled_back["from_version"], rolled_back["to_version"], rolled_back["run_id"], rolled_back["actor"],
            rolled_back["reason"]) == (2, 1, "rollback-1", "operator", "rollback: v2 over-predicts for new patients")

    forward = output(cli("rollback", "--to", "2", "--reason", "fixed upstream", "--run-id", "rollback-2", "--json"))

    assert (forward["champion"], forward["replaced"], forward["run_id"]) == (2, 1, "rollback-2")
    assert champion_version(gws) == 2
    history = output(cli("history", "--json"))
    assert [(e["from_version"], e["to_version"], e["run_id"], e["actor"], e["reason"]) for e in history[2:]] == [
        (2, 1, "rollback-1", "operator", "rollback: v2 over-predicts for new patients"),
        (1, 2, "rollback-2", "cli:tester", "rollback: fixed upstream")]
    assert [e["to_version"] for e in history] == [1, 2, 1, 2]

    before = events(gws)
    for statement in ("UPDATE pipeline.promotion_events SET reason = 'rewritten'",
                      "DELETE FROM pipeline.promotion_events WHERE run_id = 'rollback-1'"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), gws.engine.begin() as conn:
            conn.execute(sa.text(statement))
    assert events(gws) == before


def test_rollback_refusals_leave_the_champion(gws: Workspace, two_champions: dict[str, Any]) -> None:
    before = champion_rows(gws)

    for reason in ("", "   "):
        with pytest.raises(ValueError, match="needs a reason"):
            stages.rollback_champion(gws, "no-reason", reason)
    with pytest.raises(ValueError, match="version 2 is already the champion"):
        stages.rollback_champion(gws, "same", "no change", to_version=2)
    with pytest.raises(LookupError, match="model version 99 is not registered"):
        stages.rollback_champion(gws, "unknown", "typo", to_version=99)

    assert champion_rows(gws) == before


def test_rollback_with_no_earlier_champion_is_refused(gws: Workspace, champion: dict[str, Any]) -> None:
    before = champion_rows(gws)
    with pytest.raises(ValueError, match="no earlier champion"):
        stages.rollback_champion(gws, "too-far", "undo the first model")
    assert champion_rows(gws) == before


def test_rollback_to_a_tampered_artifact_is_refused(gws: Workspace, two_champions: dict[str, Any]) -> None:
    overwrite(gws.settings.artifact_dir / model(gws, 1)["artifact_path"], b"not the model that was registered")
    before = champion_rows(gws)

    with pytest.raises(ArtifactIntegrityError, match="the registry says"):
        stages.rollback_champion(gws, "rollback-bad", "back to v1")
    with pytest.raises(ArtifactIntegrityError):
        stages.rollback_champion(gws, "rollback-bad", "back to v1", to_version=1)

    assert champion_rows(gws) == before
    assert champion_version(gws) == 2


def tamper(ws: Workspace, version: int) -> tuple[Path, str, str]:
    """Alter a version's stored artifact: its file, the hash the registry holds, the hash it has now."""
    registered = model(ws, version)["artifact_hash"]
    path = artifacts.stored_path(ws.settings.artifact_dir, "models", registered)
    tampered = stored_bytes(ws, path)[:-16] + b"tampered-bytes!!"
    rewrite_stored(ws, path, tampered)
    return path, registered, artifacts.sha256_bytes(tampered)


def test_a_rollback_to_a_tampered_version_names_the_file_and_both_hashes(
        gws: Workspace, champion: dict[str, Any], config_path: Path, cli: Cli) -> None:
    unjudged = train_candidate(gws, make_run("unjudged", datetime.now(UTC)))["version"]  # never evaluated
    path, registered, actual = tamper(gws, unjudged)

    for extra in ([], ["--force"]):  # its failed policy checks come second: the altered file is what is said
        refused = cli("--config", str(config_path), "rollback", "--to", str(unjudged), "--reason", "try", *extra)

        assert refused.returncode == 1 and refused.stdout == ""
        [line] = refused.stderr.splitlines()
        assert line == (f"error: version {unjudged} cannot become champion: artifact {path} hashes to {actual}, but "
                        f"the registry says {registered}: it was modified or corrupted; restore it or retrain")
    with gws.engine.connect() as conn:
        assert records.current_champion(conn, gws.model)["version"] == 1


# --- reproduce -----------------------------------------------------------------------------------


def test_reproduce_rebuilds_each_version_from_its_record(gws: Workspace, two_champions: dict[str, Any],
                                                         cli: Cli) -> None:
    for version in (1, 2):  # version 1 was trained with alpha 800, not the configured 1.0
        recorded = model(gws, version)
        [snapshot] = fetch(gws, "SELECT row_count FROM pipeline.snapshots WHERE snapshot_hash = :h",
                           h=recorded["snapshot_hash"])

        result = stages.reproduce_version(gws, version)

        assert result["predictions_identical"] is True, version
        assert result["train_rows"] == result["recorded_train_rows"] == recorded["train_rows"]
        assert result["rows_compared"] == snapshot["row_count"]
        assert result["snapshot_hash"] == recorded["snapshot_hash"]

    printed = output(cli("reproduce", "1", "--json"))
    assert (printed["version"], printed["predictions_identical"]) == (1, True)
    assert printed["train_rows"] == printed["recorded_train_rows"]


def test_reproduce_refuses_a_tampered_snapshot(gws: Workspace, champion: dict[str, Any]) -> None:
    recorded = model(gws, 1)
    [snapshot] = fetch(gws, "SELECT path FROM pipeline.snapshots WHERE snapshot_hash = :h",
                       h=recorded["snapshot_hash"])
    path = gws.settings.artifact_dir / snapshot["path"]
    # A readable parquet with different outcomes: only the hash check can tell it is not the snapshot.
    frame = stored_frame(gws, path)
    frame["progression_12m"] = frame["progression_12m"] + 50.0
    rewrite_stored(gws, path, frame.to_parquet(index=False))

    with pytest.raises(ArtifactIntegrityError, match=recorded["snapshot_hash"]):
        stages.reproduce_version(gws, 1)


# --- failing closed in the stage ------------------------------------------------------------------


def test_an_evaluation_error_fails_closed(gws: Workspace, champion: dict[str, Any]) -> None:
    demo.simulate_arrivals(gws.engine, rows=30, seed=7)
    run = make_run("second")
    candidate = train_candidate(gws, run)
    artifact = gws.settings.artifact_dir / model(gws, candidate["version"])["artifact_path"]
    assert artifact != gws.settings.artifact_dir / model(gws, 1)["artifact_path"]
    artifact.unlink()
    before = champion_rows(gws)

    evaluation = stages.evaluate_candidate(gws, run, candidate["version"], margin=PROMOTE_ANY)
    outcome = stages.promote_candidate(gws, run, actor="test")

    assert evaluation["decision"] == "keep"
    assert evaluation["reason"].startswith("fail closed: evaluation error")
    assert "artifact missing" in evaluation["reason"]
    assert evaluation["champion_version"] == 1
    [stored] = fetch(gws, "SELECT decision, reason, evidence FROM pipeline.evaluations WHERE run_id = 'second'")
    assert (stored["decision"], stored["reason"]) == ("keep", evaluation["reason"])
    assert "ArtifactIntegrityError" in stored["evidence"]["error"]
    assert outcome["status"] == "kept"
    assert champion_rows(gws) == before
    assert (gws.settings.artifact_dir / model(gws, 1)["artifact_path"]).is_file()


def test_a_config_without_confidence_promotes_nothing(settings: Settings, tmp_path: Path) -> None:
    path = write_config(tmp_path, lambda raw: raw["promotion"].pop("confidence"))
    ws = Workspace.open(dataclasses.replace(settings, config_path=path))
    try:
        assert ws.config.promotion.confidence is None
        demo.seed_demo(ws.engine)

        result = retrain(ws, make_run("first", DEMO_WATERMARK))

        assert result["evaluation"]["decision"] == "keep"
        assert result["evaluation"]["reason"] == "fail closed: promotion thresholds not configured: confidence"
        assert result["outcome"]["status"] == "kept"
        assert champion_version(ws) is None and events(ws) == []
        [stored] = fetch(ws, "SELECT policy FROM pipeline.evaluations WHERE run_id = 'first'")
        assert stored["policy"]["confidence"] is None
    finally:
        ws.engine.dispose()


def register_nan_candidate(ws: Workspace, run: Run) -> int:
    """Register the champion's model with NaN coefficients as this run's candidate."""
    champion_model = model(ws, 1)
    fitted = ws.load_model(champion_model["artifact_hash"])
    ridge = fitted.named_steps["model"]
    ridge.coef_ = np.full_like(ridge.coef_, np.nan)
    artifact_hash, path = artifacts.store_model(ws.settings.artifact_dir, fitted)
    record = {k: champion_model[k] for k in ("snapshot_hash", "model_family", "params", "cv_metrics", "train_rows",
                                             "holdout_rows", "holdout_start", "library_versions", "code_version")}
    with ws.engine.begin() as conn:
        records.start_run(conn, ws.model, run.run_id, run.triggered_by, run.watermark, {})
        return records.register_model(conn, {**record, "model": ws.model, "run_id": run.run_id, "artifact_hash": artifact_hash,
                                              "artifact_path": str(path)})


NAN_PREDICTIONS_WARN = pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")


@NAN_PREDICTIONS_WARN
def test_a_candidate_with_non_finite_predictions_is_kept(gws: Workspace, champion: dict[str, Any]) -> None:
    run = make_run("nan")
    version = register_nan_candidate(gws, run)
    before = champion_rows(gws)

    evaluation = stages.evaluate_candidate(gws, run, version, margin=PROMOTE_ANY)

    assert evaluation["decision"] == "keep" and evaluation["reason"].startswith("fail closed")
    assert stages.promote_candidate(gws, run, actor="test")["status"] == "kept"
    assert champion_rows(gws) == before


@NAN_PREDICTIONS_WARN
def test_a_candidate_with_non_finite_predictions_is_kept_for_that_reason(gws: Workspace,
                                                                        champion: dict[str, Any]) -> None:
    run = make_run("nan")
    version = register_nan_candidate(gws, run)

    evaluation = stages.evaluate_candidate(gws, run, version, margin=PROMOTE_ANY)

    assert evaluation["reason"] == "fail closed: the candidate's holdout predictions are not finite"
    [stored] = fetch(gws, "SELECT evidence FROM pipeline.evaluations WHERE run_id = 'nan'")
    assert stored["evidence"]["behaviour"]["finite"] is False


# --- the evidence behind a decision ---------------------------------------------------------------


def test_a_decision_is_redone_by_the_resampling_method_it_recorded(gws: Workspace, two_champions: dict[str, Any],
                                                                  cli: Cli) -> None:
    redone = output(cli("reevaluate", "second", "--json"))
    assert (redone["decision_recorded"], redone["decision_now"]) == ("promote", "promote")
    assert redone["decision_identical"] and redone["interval_identical"]
    assert redone["resampling_now"] == redone["resampling_recorded"]
    assert redone["resampling_now"]["method"] == "poisson-sequential"
    # A record from before the method was recorded (no bootstrap_method in its policy, no method in its
    # interval) was made by the exact bootstrap: it is redone by that, whatever the policy says today.
    with gws.engine.connect() as conn:
        candidate, champion = records.get_model(conn, 2, gws.model), records.get_model(conn, 1, gws.model)
    exact = dataclasses.replace(gws.config.promotion, bootstrap_method="exact")
    evidence, _ = stages.gather_evidence(gws, candidate, champion, exact)
    old = {k: v for k, v in evidence["bootstrap"].items() if k not in ("method", "seed")}
    with gws.engine.begin() as conn:
        conn.execute(sa.text("""UPDATE pipeline.evaluations
                                   SET evidence = jsonb_set(evidence, '{bootstrap}', CAST(:old AS jsonb)),
                                       policy = policy - 'bootstrap_method'
                                 WHERE run_id = 'second'"""), {"old": json.dumps(old)})
    redone = stages.reproduce_evaluation(gws, "second")
    assert redone["resampling_now"] == {**{k: old[k] for k in ("samples", "low", "high", "mean")}, "method": "exact"}
    assert redone["interval_identical"] and redone["decision_identical"]
    assert "by exact, 2000 resamples (recorded" in cli("reevaluate", "second").stdout


def test_the_evidence_behind_each_decision_is_stored(gws: Workspace, two_champions: dict[str, Any]) -> None:
    rows = {r["run_id"]: r for r in fetch(gws, "SELECT * FROM pipeline.evaluations")}
    second, first = rows["second"], rows["first"]
    evidence = second["evidence"]

    assert (second["decision"], second["champion_version"]) == ("promote", 1)
    boot = evidence["bootstrap"]
    assert (boot["confidence"], boot["max_samples"], boot["method"]) == (0.95, 2000, "poisson-sequential")
    assert second["policy"]["bootstrap_method"] == "poisson-sequential" and boot["seed"] == gws.config.training.seed
    assert boot["settled"] is True and boot["samples"] < 2000  # a clear gain: stopped at a look
    assert 0 < boot["low"] <= boot["mean"] <= boot["high"]
    assert f"[{boot['low']:+.3f}, {boot['high']:+.3f}] (poisson-sequential bootstrap, {boot['samples']} resamples: " \
           "the decision settled outside the 99.9% Monte-Carlo band)" in second["reason"]
    assert {(r["slice"], r["group"]) for r in evidence["slices"]} == SLICE_GROUPS
    for name in ("sex", "age", "bmi"):
        assert sum(r["n"] for r in evidence["slices"] if r["slice"] == name) == second["holdout_rows"]
    for row in evidence["slices"]:
        assert row["judged"] == (row["n"] >= 10)
        assert row["change"] == pytest.approx(row["candidate_rmse"] / row["champion_rmse"] - 1.0)
    assert evidence["behaviour"]["passed"] is True and evidence["behaviour"]["failures"] == []
    assert set(evidence["behaviour"]["directions"]) == {"bmi", "glucose"}
    assert evidence["candidate"] == second["candidate_metrics"]
    assert evidence["champion"] == second["champion_metrics"]
    assert evidence["champion_error"] is None
    assert evidence["candidate"]["rmse"] < evidence["champion"]["rmse"] < evidence["baseline"]["rmse"]
    assert isinstance(evidence["baseline"]["train_mean"], float)

    # A first model is judged without a champion: no bootstrap, no champion column in the slices.
    assert first["evidence"]["bootstrap"] is None and first["evidence"]["champion"] is None
    assert first["evidence"]["candidate"]["rmse"] < first["evidence"]["baseline"]["rmse"]
    assert all("champion_rmse" not in r for r in first["evidence"]["slices"])
