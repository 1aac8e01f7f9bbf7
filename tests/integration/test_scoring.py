"""Batch scoring against a real PostgreSQL: every selected record scored or refused, once per run."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline import stages
from pipeline.contract.settings import Settings
from pipeline.data import demo
from pipeline.serving import scoring
from pipeline.workspace import Workspace
from tests.commands import cli_in_process, output
from tests.integration.stage_runs import (
    fetch,
    make_run,
    promote_demo_champion,
    quick_workspace,
    retrain_through_stages,
    stored_text,
)

ARRIVALS, BAD_ROWS = 40, 6  # unlabelled arrivals, of which this many break the contract (one of each kind)
WEAK_ALPHA = 800.0  # a version 1 that the configured ridge beats (tests/integration/test_governance.py)


def with_serving(ws: Workspace, **changes: Any) -> Workspace:
    serving = dataclasses.replace(ws.config.serving, **changes)
    return dataclasses.replace(ws, config=dataclasses.replace(ws.config, serving=serving))


@pytest.fixture
def qws(ws: Workspace) -> Workspace:
    """The demo's version 1 as champion, and unlabelled arrivals awaiting their outcome, some faulty."""
    quick = quick_workspace(ws)
    promote_demo_champion(quick)
    demo.simulate_arrivals(quick.engine, rows=ARRIVALS, seed=3, labelled=False, bad_rows=BAD_ROWS)
    return quick


def predictions(ws: Workspace, run_id: str) -> list[dict[str, Any]]:
    return fetch(ws, """SELECT source_id, version, prediction, lower, upper, coverage, input_hash, source
                          FROM pipeline.predictions WHERE run_id = :r ORDER BY source_id::bigint""", r=run_id)


def refusals(ws: Workspace, run_id: str) -> dict[str, list[dict[str, Any]]]:
    rows = fetch(ws, "SELECT * FROM pipeline.scoring_refusals WHERE run_id = :r", r=run_id)  # sealed ones opened
    return {r["source_id"]: r["reasons"] for r in rows}


def test_every_awaiting_record_is_scored_or_refused_with_reasons(qws: Workspace) -> None:
    result = scoring.score_batch(qws, "score-1")

    assert result["rows_selected"] == ARRIVALS  # the demo's labelled rows are not selected
    assert result["rows_scored"] + result["rows_refused"] == result["rows_selected"]
    assert result["rows_refused"] == BAD_ROWS
    assert result["reason_counts"] == {"impossible_dates": 1, "missing_required": 1, "out_of_range": 2,
                                       "unknown_category": 2}
    refused = refusals(qws, "score-1")
    assert len(refused) == BAD_ROWS
    for reasons in refused.values():  # each names its column and value; the missing outcome is no fault
        assert reasons and all(r["column"] and r["code"] for r in reasons)
        assert not any("progression_12m" in r["column"] for r in reasons)
    assert {r["column"] for reasons in refused.values() for r in reasons} >= {"sex", "visit_date", "glucose"}
    scored = predictions(qws, "score-1")
    assert len(scored) == result["rows_scored"]
    assert not {p["source_id"] for p in scored} & set(refused)
    for p in scored:
        assert p["version"] == 1 and p["source"] == "batch" and p["coverage"] == pytest.approx(0.9)
        assert p["lower"] < p["prediction"] < p["upper"]
        assert len(p["input_hash"]) == 64
    [run] = fetch(qws, "SELECT * FROM pipeline.scoring_runs WHERE run_id = 'score-1'")
    assert (run["status"], run["version"], run["rows_selected"], run["rows_scored"], run["rows_refused"]) == (
        "done", 1, ARRIVALS, ARRIVALS - BAD_ROWS, BAD_ROWS)
    assert run["reason_counts"] == result["reason_counts"] and run["finished_at"] is not None


def test_messy_values_are_normalised_and_scored(qws: Workspace) -> None:
    """' f ' and 'm' are what validation makes 'F' and 'M': scored as such, not refused."""
    scoring.score_batch(qws, "score-messy")
    messy = fetch(qws, """SELECT patient_id::text AS id, upper(trim(sex)) AS sex FROM public.patient_records
                           WHERE progression_12m IS NULL AND sex NOT IN ('F', 'M', 'Male', 'U')""")
    assert messy
    scored = {p["source_id"] for p in predictions(qws, "score-messy")}
    assert {m["id"] for m in messy} <= scored


def test_rerunning_a_run_id_replaces_its_rows(qws: Workspace) -> None:
    first = scoring.score_batch(qws, "score-again")
    before = predictions(qws, "score-again")

    second = scoring.score_batch(qws, "score-again")

    assert second == first
    after = predictions(qws, "score-again")
    assert after == before  # same rows, no duplicates
    assert len({p["source_id"] for p in after}) == len(after) == first["rows_scored"]
    assert len(refusals(qws, "score-again")) == first["rows_refused"]
    assert fetch(qws, "SELECT count(*) AS n FROM pipeline.scoring_runs")[0]["n"] == 1


def with_alpha(ws: Workspace, alpha: float) -> Workspace:
    training = dataclasses.replace(ws.config.training, families={"ridge": {"alpha": alpha}})
    return dataclasses.replace(ws, config=dataclasses.replace(ws.config, training=training))


def test_latest_forecasts_follow_the_champion_through_a_rollback(ws: Workspace) -> None:
    """Version 1 a heavily shrunk ridge, version 2 the configured one that beats it (as in test_governance)."""
    quick = quick_workspace(ws)
    promote_demo_champion(with_alpha(quick, WEAK_ALPHA))
    demo.simulate_arrivals(quick.engine, rows=20, seed=9, labelled=False)
    by_v1 = scoring.score_batch(quick, "score-v1")
    demo.simulate_arrivals(quick.engine, rows=30, seed=7)
    second = retrain_through_stages(quick, make_run("second"))
    assert second["outcome"]["status"] == "promoted", second["outcome"]["reason"]
    by_v2 = scoring.score_batch(quick, "score-v2")

    def latest() -> dict[str, dict[str, Any]]:
        rows = fetch(quick, "SELECT * FROM pipeline.latest_forecasts WHERE model = :m", m=quick.model)
        assert len({r["source_id"] for r in rows}) == len(rows)  # one forecast per record
        return {r["source_id"]: r for r in rows}

    assert (by_v1["version"], by_v2["version"], by_v1["rows_scored"], by_v2["rows_scored"]) == (1, 2, 20, 20)
    now = latest()
    assert len(now) == 20 and {(r["version"], r["run_id"]) for r in now.values()} == {(2, "score-v2")}

    stages.rollback_champion(quick, "rollback-v2", "version 2 over-predicts")

    rolled_back = latest()
    assert {(r["version"], r["run_id"]) for r in rolled_back.values()} == {(1, "score-v1")}
    v1 = {p["source_id"]: p["prediction"] for p in predictions(quick, "score-v1")}
    assert {k: r["prediction"] for k, r in rolled_back.items()} == v1
    assert v1 != {p["source_id"]: p["prediction"] for p in predictions(quick, "score-v2")}


def test_small_chunks_give_the_same_results_as_one(qws: Workspace) -> None:
    whole = scoring.score_batch(qws, "one-chunk")
    chunked = scoring.score_batch(with_serving(qws, batch_rows=7), "seven-rows")

    assert {k: v for k, v in chunked.items() if k != "run_id"} == {k: v for k, v in whole.items() if k != "run_id"}
    assert refusals(qws, "seven-rows") == refusals(qws, "one-chunk")
    small, one = predictions(qws, "seven-rows"), predictions(qws, "one-chunk")
    numbers = ("prediction", "lower", "upper")
    assert [{k: v for k, v in p.items() if k not in numbers} for p in small] == \
        [{k: v for k, v in p.items() if k not in numbers} for p in one]  # same records, inputs, version
    for a, b in zip(small, one, strict=True):  # BLAS sums a matrix product by blocks that depend on its
        for key in numbers:  # shape: the last bit of a forecast can differ with the chunk's length
            assert a[key] == pytest.approx(b[key], rel=1e-12), (a["source_id"], key)


def test_a_chunk_never_splits_rows_sharing_an_id(qws: Workspace) -> None:
    """A duplicate id (possible in a table without a primary key) is judged within one chunk: both copies refused."""
    with qws.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE public.patient_records DROP CONSTRAINT patient_records_pkey"))
        conn.execute(sa.text("""INSERT INTO public.patient_records
                                SELECT * FROM public.patient_records
                                 WHERE patient_id = (SELECT min(patient_id) + 2 FROM public.patient_records
                                                      WHERE progression_12m IS NULL)"""))
    chunked = scoring.score_batch(with_serving(qws, batch_rows=3), "dup-chunked")
    whole = scoring.score_batch(qws, "dup-whole")

    assert chunked["reason_counts"] == whole["reason_counts"]
    assert chunked["reason_counts"]["duplicate_id"] == 2
    assert chunked["rows_selected"] == ARRIVALS + 1
    assert refusals(qws, "dup-chunked") == refusals(qws, "dup-whole")


def test_all_records_scores_labelled_ones_too_ignoring_target_faults(qws: Workspace) -> None:
    with qws.engine.begin() as conn:  # an outcome out of range says nothing about the inputs
        conn.execute(sa.text("UPDATE public.patient_records SET progression_12m = 9999 WHERE patient_id = 1"))
    result = scoring.score_batch(with_serving(qws, score_records="all"), "score-all")

    total = fetch(qws, "SELECT count(*) AS n FROM public.patient_records")[0]["n"]
    assert result["rows_selected"] == total
    assert result["rows_scored"] + result["rows_refused"] == total
    assert "1" in {p["source_id"] for p in predictions(qws, "score-all")}
    assert result["rows_refused"] == BAD_ROWS


def test_no_champion_is_a_clear_error_and_a_failed_run(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)

    with pytest.raises(LookupError, match="model 'diabetes_progression' has no champion"):
        scoring.score_batch(ws, "too-early")

    [run] = fetch(ws, "SELECT status, reason FROM pipeline.scoring_runs WHERE run_id = 'too-early'")
    assert run["status"] == "failed" and "no champion" in run["reason"]
    assert fetch(ws, "SELECT count(*) AS n FROM pipeline.predictions")[0]["n"] == 0


def test_cli_score_json_and_summary(qws: Workspace, settings: Settings) -> None:
    cli = cli_in_process({**os.environ, "PIPELINE_DATABASE_URL": settings.database_url or "",
                          "PIPELINE_ARTIFACT_DIR": str(settings.artifact_dir),
                          "PIPELINE_KEY_FILE": str(settings.key_file)})  # the same master keys as the workspace

    result = output(cli("score", "--run-id", "cli-score", "--json"))

    assert (result["run_id"], result["version"], result["rows_selected"]) == ("cli-score", 1, ARRIVALS)
    assert result["rows_scored"] + result["rows_refused"] == ARRIVALS
    assert len(predictions(qws, "cli-score")) == result["rows_scored"]
    human = cli("score", "--run-id", "cli-score")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"scoring run cli-score: {ARRIVALS} records selected (awaiting_outcome), "
                                   f"{result['rows_scored']} scored by version 1")
    assert len(predictions(qws, "cli-score")) == result["rows_scored"]


def test_the_champion_is_compiled_once_and_a_changed_artifact_is_never_served_from_its_cache(
        qws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The champion's first load compiles it and keeps it by artifact hash: a later run loads it (converting again
    would fail here) and forecasts as the Pipeline does; once the artifact's bytes change, no run scores, cache or
    not."""
    from pipeline.model import compiled
    from pipeline.store import artifacts

    [champion] = fetch(qws, "SELECT artifact_hash FROM pipeline.model_versions WHERE version = 1")
    described, _ = compiled.cache_paths(qws.settings.artifact_dir, champion["artifact_hash"])
    assert not described.exists()  # promotion reads no artifact, so it compiled nothing
    compiled.for_version(qws, qws.load_model(champion["artifact_hash"]), 1)  # the first load on this machine
    assert json.loads(stored_text(qws, described))["method"] == "onnx"
    with monkeypatch.context() as patched:
        patched.setattr(compiled, "compile_model", lambda *a: pytest.fail("compiled again despite the cache"))
        cached = scoring.score_batch(qws, "from-cache")
    with monkeypatch.context() as patched:  # the Pipeline itself, as if nothing converted
        patched.setattr(compiled, "load_compiled", lambda *a: None)
        patched.setattr(compiled, "compile_model", lambda model, contract, rows: compiled.fallback(
            model, contract, "the test asks for the Pipeline"))
        patched.setattr(compiled, "save_compiled", lambda *a: None)
        pipeline = scoring.score_batch(qws, "from-pipeline")
    assert cached["rows_scored"] == pipeline["rows_scored"] == ARRIVALS - BAD_ROWS
    for onnx, joblib in zip(predictions(qws, "from-cache"), predictions(qws, "from-pipeline"), strict=True):
        assert (onnx["source_id"], onnx["input_hash"]) == (joblib["source_id"], joblib["input_hash"])
        for bound in ("prediction", "lower", "upper"):
            assert onnx[bound] == pytest.approx(joblib[bound], rel=compiled.RELATIVE_TOLERANCE)

    stored = artifacts.stored_path(qws.settings.artifact_dir, "models", champion["artifact_hash"])
    stored.chmod(0o600)
    stored.write_bytes(stored.read_bytes() + b"\x00")
    with pytest.raises(artifacts.ArtifactIntegrityError, match=champion["artifact_hash"][:16]):
        scoring.score_batch(qws, "tampered")
    assert predictions(qws, "tampered") == []
