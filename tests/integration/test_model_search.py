"""The model search fanned out (one `search_family` per family, as the DAG maps it) against the sequential
search of `train_candidate` alone: same winner, same CV table, bit-identical predictions."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import numpy as np
import pytest

from pipeline import stages
from pipeline.model.features import model_inputs
from pipeline.registry import records
from pipeline.registry.runs import Run, RunBusy
from pipeline.workspace import Workspace
from tests.integration.stage_runs import DEMO_WATERMARK, fetch, make_run

SCORES = ("cv_rmse_mean", "cv_rmse_std", "rows")


def three_fold(ws: Workspace) -> Workspace:
    """Every shipped family, on three folds (the search is what is compared, not its size)."""
    training = dataclasses.replace(ws.config.training, cv_folds=3)
    return dataclasses.replace(ws, config=dataclasses.replace(ws.config, training=training))


def clean_snapshot(ws: Workspace, run: Run) -> str:
    snapshot = stages.ingest_snapshot(ws, run)
    return str(stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])["clean_snapshot_hash"])


def mapped_search(ws: Workspace, run: Run, clean: str) -> list[dict[str, Any]]:
    """What the DAG's mapped tasks return, each computed as its own task would (here one after another)."""
    return [stages.search_family(ws, run, clean, task["family"], task["started_at"], task["first"])
            for task in stages.plan_search(ws)]


def predictions(ws: Workspace, version: int, clean: str) -> np.ndarray:
    with ws.engine.connect() as conn:
        model = records.get_model(conn, version, ws.model)
    frame = ws.load_snapshot(clean)
    return np.asarray(ws.load_model(model["artifact_hash"]).predict(model_inputs(frame, ws.config.dataset)))


def test_mapped_search_equals_the_sequential_search(ws: Workspace) -> None:
    from pipeline.data import demo

    ws = three_fold(ws)
    demo.seed_demo(ws.engine)
    sequential_run, mapped_run = make_run("sequential", DEMO_WATERMARK), make_run("mapped", DEMO_WATERMARK)
    clean = clean_snapshot(ws, sequential_run)
    assert clean_snapshot(ws, mapped_run) == clean

    sequential = stages.train_candidate(ws, sequential_run, clean)
    searched = mapped_search(ws, mapped_run, clean)
    mapped = stages.train_candidate(ws, mapped_run, clean, searched)

    families = list(ws.config.training.families)
    assert [entry["family"] for entry in searched] == families and len(families) == 3
    assert mapped["model_family"] == sequential["model_family"]
    for family in families:
        assert {k: mapped["cv_metrics"][family][k] for k in SCORES} == \
               {k: sequential["cv_metrics"][family][k] for k in SCORES}, family
    assert mapped["interval"] == sequential["interval"]  # from the winner's stored out-of-fold residuals
    assert mapped["artifact_hash"] == sequential["artifact_hash"]  # the same fitted model, byte for byte
    np.testing.assert_array_equal(predictions(ws, mapped["version"], clean),
                                  predictions(ws, sequential["version"], clean))


def test_one_budget_holds_across_the_mapped_tasks(ws: Workspace) -> None:
    """A search that started longer ago than its budget: every family but the first is skipped, wherever
    it runs; the first always finishes, so there is a candidate."""
    from pipeline.data import demo

    training = dataclasses.replace(ws.config.training, cv_folds=3, search_budget_seconds=5.0)
    ws = dataclasses.replace(ws, config=dataclasses.replace(ws.config, training=training))
    demo.seed_demo(ws.engine)
    run = make_run("budget", DEMO_WATERMARK)
    clean = clean_snapshot(ws, run)
    tasks = [{**task, "started_at": time.time() - 60} for task in stages.plan_search(ws)]

    searched = [stages.search_family(ws, run, clean, t["family"], t["started_at"], t["first"]) for t in tasks]

    first, *rest = searched
    assert "cv_rmse_mean" in first["cv"] and first["residuals_hash"]
    # The search started 60 s ago, so the elapsed time it names is at least that (more on a busy machine).
    skipped = [re.fullmatch(r"search budget of 5 s used up after (\d+)\.\d s.*", e["cv"]["skipped"]) for e in rest]
    assert rest and all(m is not None and int(m.group(1)) >= 60 for m in skipped), [e["cv"] for e in rest]
    assert all(e["residuals_hash"] is None for e in rest)
    candidate = stages.train_candidate(ws, run, clean, searched)
    assert candidate["model_family"] == first["family"]


def test_a_search_missing_a_family_is_refused_by_name(ws: Workspace) -> None:
    from pipeline.data import demo

    ws = three_fold(ws)
    demo.seed_demo(ws.engine)
    run = make_run("partial", DEMO_WATERMARK)
    clean = clean_snapshot(ws, run)
    task = stages.plan_search(ws)[0]
    searched = [stages.search_family(ws, run, clean, task["family"], task["started_at"], task["first"])]

    with pytest.raises(ValueError, match="every configured family is searched once"):
        stages.train_candidate(ws, run, clean, searched)
    with pytest.raises(ValueError, match="family 'lasso' is not in training.families"):
        stages.search_family(ws, run, clean, "lasso", task["started_at"])
    assert fetch(ws, "SELECT status FROM pipeline.training_runs WHERE run_id = 'partial'") == [{"status": "failed"}]


def test_sibling_search_tasks_share_the_run_and_an_exclusive_stage_waits(ws: Workspace) -> None:
    """Two tasks of the search hold the run's lock together; a stage that needs it alone cannot start
    until they are done, and the reaper sees the run as alive meanwhile."""
    from pipeline.registry import runs

    with ws.engine.begin() as conn:
        records.start_run(conn, ws.model, "shared", "test", DEMO_WATERMARK, {})
    with runs.sharing(ws.engine, ws.settings, "shared", "search"), \
            runs.sharing(ws.engine, ws.settings, "shared", "search"):
        assert fetch(ws, "SELECT active_stage FROM pipeline.training_runs WHERE run_id = 'shared'") == \
               [{"active_stage": "search"}]
        assert runs.reap_abandoned(ws.engine, ws.model) == []
        with pytest.raises(RunBusy), runs.running(ws.engine, ws.settings, "shared", "train"):
            pass
    with runs.running(ws.engine, ws.settings, "shared", "train"):
        pass
