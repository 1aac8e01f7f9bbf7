"""A retrain through the stage functions on real PostgreSQL: promote, keep, and fail closed.

Every failure case checks that the champion is exactly as it was: the champion row, its
model version, its promotion history and the bytes of its artifact file.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from importlib import metadata
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from pipeline import stages
from pipeline.contract.config import PipelineConfig
from pipeline.data import demo
from pipeline.data.validate import ValidationFailed
from pipeline.registry import records
from pipeline.registry.runs import Run
from pipeline.workspace import Workspace
from tests.integration.stage_runs import (
    DEMO_WATERMARK,
    champion_state,
    fetch,
    make_run,
    promote_demo_champion,
    quick_workspace,
    stored_bytes,
    stored_frame,
)

# With this margin a candidate up to twice the champion's RMSE "beats" it: the tests that need
# a would-be promotion use it, so they exercise the promotion mechanics, not model quality.
PROMOTE_ANY = -1.0  # a margin any candidate clears (significance still decides)


def train_and_evaluate(ws: Workspace, run: Run, margin: float | None = None) -> dict[str, Any]:
    """Ingest, validate, train and evaluate: everything up to the promotion."""
    snapshot = stages.ingest_snapshot(ws, run)
    checked = stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])
    candidate = stages.train_candidate(ws, run, checked["clean_snapshot_hash"])
    evaluation = stages.evaluate_candidate(ws, run, candidate["version"], margin)
    return {"snapshot": snapshot, "candidate": candidate, "evaluation": evaluation}


def retrain(ws: Workspace, run: Run, margin: float | None = None, dry_run: bool = False,
            accept: bool = False) -> dict[str, Any]:
    """Every stage in the order the DAG runs them; `accept` records a promote decision whatever the policy."""
    result = train_and_evaluate(ws, run, margin)
    if accept:
        accept_candidate(ws, run.run_id)
    result["outcome"] = stages.promote_candidate(ws, run, dry_run=dry_run, actor="test")
    return result


def accept_candidate(ws: Workspace, run_id: str) -> None:
    """Record 'promote' for a run, so a test can exercise the promotion mechanics on demo data,
    where no candidate is significantly better than the champion (the policy has tests of its own)."""
    with ws.engine.begin() as conn:
        conn.execute(sa.text("UPDATE pipeline.evaluations SET decision = 'promote', reason = 'accepted by the test' "
                             "WHERE run_id = :r"), {"r": run_id})


@pytest.fixture
def ws(ws: Workspace) -> Workspace:
    """These tests are about stage mechanics and records, not which model family wins."""
    return quick_workspace(ws)


def run_row(ws: Workspace, run_id: str) -> dict[str, Any]:
    [row] = fetch(ws, "SELECT * FROM pipeline.training_runs WHERE run_id = :r", r=run_id)
    return row


@pytest.fixture
def first_retrain(ws: Workspace) -> dict[str, Any]:
    """The demo study loaded and a first retrain run over it: version 1 is the champion."""
    return promote_demo_champion(ws, retrain)


def test_first_retrain_promotes_version_1(ws: Workspace, config: PipelineConfig,
                                          first_retrain: dict[str, Any]) -> None:
    evaluation, outcome = first_retrain["evaluation"], first_retrain["outcome"]
    assert first_retrain["candidate"]["version"] == 1
    assert evaluation["decision"] == "promote"
    assert evaluation["champion_version"] is None and evaluation["champion_metrics"] is None
    assert evaluation["candidate_metrics"]["r2"] > config.promotion.min_r2
    assert outcome == {"status": "promoted", "candidate_version": 1, "reason": outcome["reason"], "replaced": None}
    assert outcome["reason"].startswith("version 1 promoted: first model")

    with ws.engine.connect() as conn:
        champion = records.current_champion(conn, ws.model)
    assert champion is not None
    assert champion["version"] == 1 and champion["promoted_by_run"] == "first"
    events = fetch(ws, "SELECT * FROM pipeline.promotion_events")
    assert [(e["from_version"], e["to_version"], e["run_id"], e["actor"]) for e in events] == [
        (None, 1, "first", "test")]
    run = run_row(ws, "first")
    assert run["status"] == "promoted" and run["finished_at"] is not None
    assert run["snapshot_hash"] == first_retrain["snapshot"]["snapshot_hash"]


def test_champion_lineage(ws: Workspace, first_retrain: dict[str, Any]) -> None:
    with ws.engine.connect() as conn:
        champion = records.current_champion(conn, ws.model)
    assert champion is not None
    [snapshot] = fetch(ws, "SELECT * FROM pipeline.snapshots WHERE snapshot_hash = :h", h=champion["snapshot_hash"])
    path = ws.settings.artifact_dir / snapshot["path"]
    assert path.is_file()
    assert hashlib.sha256(stored_bytes(ws, path)).hexdigest() == snapshot["snapshot_hash"]
    frame = stored_frame(ws, path)
    assert len(frame) == snapshot["row_count"] == champion["train_rows"] + champion["holdout_rows"]
    # The holdout starts right after the training rows, in (recorded_at, patient_id) order.
    first_held_out = frame.sort_values(["recorded_at", "patient_id"]).iloc[champion["train_rows"]]
    assert champion["holdout_start"] == {"label_recorded_at": champion["holdout_start"]["label_recorded_at"],
                                         **stages.holdout_start_id(ws, first_held_out["patient_id"])}
    assert champion["library_versions"]["scikit-learn"] == metadata.version("scikit-learn")
    artifact = ws.settings.artifact_dir / champion["artifact_path"]
    assert artifact.name == f"{champion['artifact_hash']}.joblib"
    assert hashlib.sha256(stored_bytes(ws, artifact)).hexdigest() == champion["artifact_hash"]


def test_second_run_scores_champion_on_the_candidates_holdout(ws: Workspace,
                                                              first_retrain: dict[str, Any]) -> None:
    arrivals = demo.simulate_arrivals(ws.engine, rows=30, seed=7)

    retrain(ws, make_run("second"))

    [evaluation] = fetch(ws, "SELECT * FROM pipeline.evaluations WHERE run_id = 'second'")
    [candidate] = fetch(ws, "SELECT * FROM pipeline.model_versions WHERE run_id = 'second'")
    assert evaluation["candidate_version"] == candidate["version"] == 2
    assert evaluation["champion_version"] == 1
    n = evaluation["candidate_metrics"]["n"]
    assert evaluation["champion_metrics"]["n"] == n == evaluation["holdout_rows"] == candidate["holdout_rows"]
    assert n != first_retrain["evaluation"]["candidate_metrics"]["n"]  # not the champion's own holdout

    # Recompute the champion's RMSE on the candidate's holdout: the latest rows of its snapshot.
    [snapshot] = fetch(ws, "SELECT path FROM pipeline.snapshots WHERE snapshot_hash = :h", h=candidate["snapshot_hash"])
    holdout = stored_frame(ws, ws.settings.artifact_dir / snapshot["path"]).sort_values(["recorded_at", "patient_id"]).tail(n)
    assert set(arrivals) <= set(holdout["patient_id"])
    with ws.engine.connect() as conn:
        champion = records.current_champion(conn, ws.model)
    assert champion is not None
    model = ws.load_model(champion["artifact_hash"])
    predicted = model.predict(holdout[ws.config.dataset.feature_names()])
    rmse = float(np.sqrt(np.mean((holdout["progression_12m"].to_numpy() - predicted) ** 2)))
    assert evaluation["champion_metrics"]["rmse"] == pytest.approx(rmse)


def test_large_margin_keeps_the_champion(ws: Workspace, first_retrain: dict[str, Any]) -> None:
    demo.simulate_arrivals(ws.engine, rows=30, seed=7)
    before = champion_state(ws)

    result = retrain(ws, make_run("second"), margin=0.99)

    assert result["evaluation"]["decision"] == "keep"
    assert result["evaluation"]["reason"].startswith("does not beat the champion")
    assert result["outcome"]["status"] == "kept"
    run = run_row(ws, "second")
    assert run["status"] == "kept"
    assert run["reason"].startswith("champion kept: does not beat the champion")
    [evaluation] = fetch(ws, "SELECT policy, reason FROM pipeline.evaluations WHERE run_id = 'second'")
    assert evaluation["policy"]["margin"] == 0.99
    assert "margin 99.0%" in evaluation["reason"]
    assert champion_state(ws) == before


def test_dry_run_does_not_apply_a_promotion(ws: Workspace, first_retrain: dict[str, Any]) -> None:
    demo.simulate_arrivals(ws.engine, rows=30, seed=7)
    before = champion_state(ws)

    result = retrain(ws, make_run("dry"), dry_run=True, accept=True)

    assert result["outcome"]["status"] == "kept"
    assert "dry run: would promote" in result["outcome"]["reason"]
    run = run_row(ws, "dry")
    assert run["status"] == "kept" and "dry run" in run["reason"]
    assert champion_state(ws) == before


def test_one_bad_row_is_quarantined_and_the_run_goes_on(ws: Workspace, first_retrain: dict[str, Any]) -> None:
    with ws.engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO public.patient_records (patient_id, birth_date, visit_date, sex, bmi, bp_mean, tc, ldl,
                                                hdl, tch, ltg, glucose, progression_12m)
            VALUES (10001, '1970-03-01', '2025-09-01', 'X', 26.0, 95.0, 190.0, 115.0, 50.0, 4.0, 4.6, 90.0, 150.0)
        """))
    run = make_run("one-bad-row")
    snapshot = stages.ingest_snapshot(ws, run)

    checked = stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])

    assert (checked["rows_read"], checked["rows_valid"], checked["rows_quarantined"]) == (443, 442, 1)
    [quarantined] = fetch(ws, "SELECT * FROM pipeline.quarantine WHERE run_id = 'one-bad-row'")
    assert quarantined["source_id"] == "10001"
    assert quarantined["reasons"] == [{"code": "unknown_category", "column": "sex",
                                       "rule": "expect_column_values_to_be_in_set", "value": "X"}]
    assert quarantined["original"]["sex"] == "X" and quarantined["original"]["bmi"] == 26.0
    [clean] = fetch(ws, "SELECT * FROM pipeline.snapshots WHERE snapshot_hash = :h", h=checked["clean_snapshot_hash"])
    assert clean["kind"] == "clean" and clean["row_count"] == 442
    # The valid rows are exactly the 442 version 1 learned from, so the clean snapshot is the same file.
    [model] = fetch(ws, "SELECT snapshot_hash FROM pipeline.model_versions WHERE version = 1")
    assert model["snapshot_hash"] == checked["clean_snapshot_hash"]


def test_too_many_bad_rows_fail_the_run_and_leave_the_champion(ws: Workspace, first_retrain: dict[str, Any]) -> None:
    before = champion_state(ws)
    with ws.engine.begin() as conn:  # 44 of 442 rows: 10 %, over the 5 % limit
        conn.execute(sa.text("UPDATE public.patient_records SET sex = 'X' WHERE patient_id % 10 = 0"))
    run = make_run("bad-sex")
    snapshot = stages.ingest_snapshot(ws, run)

    with pytest.raises(ValidationFailed) as failed:
        stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])

    message = str(failed.value)
    assert "44 of 442 rows quarantined" in message and "max_quarantine_share" in message
    assert "expect_column_values_to_be_in_set on sex: 44 row(s)" in message and "10" in message
    [result] = fetch(ws, "SELECT * FROM pipeline.validation_results WHERE run_id = 'bad-sex'")
    assert result["success"] is False
    # the ids stay out of the one-line error (the run's record, its note, logs, alerts: none sealed at rest)
    [sex] = [f for f in result["failures"] if f["column"] == "sex"]
    assert len(sex["sample_ids"]) >= 3 and "ids in the quality report" in message
    assert ", ".join(str(i) for i in sex["sample_ids"][:3]) not in message
    named = re.search(r"on sex: 44 row\(s\), e\.g\. row numbers \[([\d, ]+)\]", message)  # rows named by number
    assert named is not None, message
    quarantined = {r["row_number"] for r in fetch(ws, "SELECT row_number FROM pipeline.quarantine WHERE run_id = 'bad-sex'")}
    assert {int(n) for n in named.group(1).split(", ")} <= quarantined
    assert (result["rows_read"], result["rows_valid"], result["rows_quarantined"]) == (442, 398, 44)
    assert [(f["expectation"], f["column"], f["unexpected_count"]) for f in result["failures"]] == [
        ("expect_column_values_to_be_in_set", "sex", 44)]
    assert len(fetch(ws, "SELECT * FROM pipeline.quarantine WHERE run_id = 'bad-sex'")) == 44
    run_record = run_row(ws, "bad-sex")
    assert run_record["status"] == "validation_failed"
    assert "expect_column_values_to_be_in_set" in run_record["reason"]
    assert fetch(ws, "SELECT version FROM pipeline.model_versions WHERE run_id = 'bad-sex'") == []
    assert champion_state(ws) == before


def test_corrupt_champion_artifact_fails_closed(ws: Workspace, first_retrain: dict[str, Any]) -> None:
    artifact = ws.settings.artifact_dir / champion_state(ws)["model"]["artifact_path"]
    os.chmod(artifact, artifact.stat().st_mode | stat.S_IWUSR)
    artifact.write_bytes(b"not a joblib file")
    before = champion_state(ws)
    demo.simulate_arrivals(ws.engine, rows=30, seed=7)

    # Even a margin that would promote almost anything must not promote past an unreadable champion.
    result = retrain(ws, make_run("second"), margin=PROMOTE_ANY)

    assert result["evaluation"]["decision"] == "keep"
    assert result["evaluation"]["reason"].startswith("fail closed")
    assert "champion version 1 could not be scored" in result["evaluation"]["reason"]
    assert result["evaluation"]["champion_metrics"] is None
    assert result["outcome"]["status"] == "kept"
    assert run_row(ws, "second")["status"] == "kept"
    assert champion_state(ws) == before


def test_stale_champion_is_not_replaced(ws: Workspace, first_retrain: dict[str, Any]) -> None:
    demo.simulate_arrivals(ws.engine, rows=30, seed=7)
    late, early = make_run("late"), make_run("early")
    late_evaluation = train_and_evaluate(ws, late)["evaluation"]
    accept_candidate(ws, late.run_id)
    assert late_evaluation["champion_version"] == 1
    early_result = retrain(ws, early, accept=True)  # promoted between late's evaluation and promotion
    early_version = early_result["candidate"]["version"]
    assert early_result["outcome"]["status"] == "promoted"
    before = champion_state(ws)
    assert before["model"]["version"] == early_version

    outcome = stages.promote_candidate(ws, late, actor="test")

    assert outcome["status"] == "kept"
    assert f"champion is now version {early_version}" in outcome["reason"]
    assert "evaluated against 1" in outcome["reason"]
    run = run_row(ws, "late")
    assert run["status"] == "kept" and run["reason"] == outcome["reason"]
    assert champion_state(ws) == before
    assert [e["to_version"] for e in before["events"]] == [1, early_version]


def test_stages_are_idempotent(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    run = make_run("retried", DEMO_WATERMARK)
    snapshot = stages.ingest_snapshot(ws, run)
    clean = stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])["clean_snapshot_hash"]

    first_candidate = stages.train_candidate(ws, run, clean)
    second_candidate = stages.train_candidate(ws, run, clean)
    assert second_candidate["version"] == first_candidate["version"]
    assert fetch(ws, "SELECT count(*) AS n FROM pipeline.model_versions") == [{"n": 1}]

    evaluation = stages.evaluate_candidate(ws, run, first_candidate["version"])
    first_outcome = stages.promote_candidate(ws, run, actor="test")
    second_outcome = stages.promote_candidate(ws, run, actor="test")
    assert first_outcome["status"] == second_outcome["status"] == "promoted"
    events = fetch(ws, "SELECT to_version FROM pipeline.promotion_events")
    assert events == [{"to_version": first_candidate["version"]}]

    assert stages.evaluate_candidate(ws, run, first_candidate["version"]) == evaluation
    assert evaluation["decision"] == "promote"
    assert run_row(ws, "retried")["status"] == "promoted"
    assert fetch(ws, "SELECT count(*) AS n FROM pipeline.evaluations") == [{"n": 1}]


def test_rerunning_promote_after_a_later_promotion_keeps_the_record(ws: Workspace,
                                                                      first_retrain: dict[str, Any]) -> None:
    demo.simulate_arrivals(ws.engine, rows=30, seed=7)
    assert retrain(ws, make_run("later"), accept=True)["outcome"]["status"] == "promoted"
    before = champion_state(ws)

    outcome = stages.promote_candidate(ws, make_run("first", DEMO_WATERMARK), actor="test")

    assert champion_state(ws) == before
    assert run_row(ws, "first")["status"] == "promoted", outcome["reason"]


def test_rerunning_evaluate_after_a_later_promotion_keeps_the_record(ws: Workspace,
                                                                       first_retrain: dict[str, Any]) -> None:
    demo.simulate_arrivals(ws.engine, rows=30, seed=7)
    assert retrain(ws, make_run("later"), accept=True)["outcome"]["status"] == "promoted"
    query = "SELECT champion_version, decision, reason FROM pipeline.evaluations WHERE run_id = 'first'"
    [before] = fetch(ws, query)

    stages.evaluate_candidate(ws, make_run("first", DEMO_WATERMARK), first_retrain["candidate"]["version"])

    assert fetch(ws, query) == [before]


def test_training_refuses_a_snapshot_that_was_not_validated(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    run = make_run("unvalidated", DEMO_WATERMARK)
    snapshot = stages.ingest_snapshot(ws, run)

    with pytest.raises(ValueError, match="not a validated clean snapshot"):
        stages.train_candidate(ws, run, snapshot["snapshot_hash"])
    assert fetch(ws, "SELECT count(*) AS n FROM pipeline.model_versions") == [{"n": 0}]
