"""Drift monitoring and the no-new-data skip, through the stage functions on real PostgreSQL.

The champion comes from a full retrain (ingest, validate, train, evaluate, promote) with only
the ridge family configured: what is monitored is the champion's training snapshot, which does
not depend on the family, and cross-validating the shipped three families would take seconds
per test.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline import stages
from pipeline.data import demo
from pipeline.monitoring import performance
from pipeline.registry import records
from pipeline.workspace import Workspace
from tests.integration.stage_runs import (
    DEMO_WATERMARK,
    LATER_WATERMARK,
    fetch,
    make_run,
    promote_demo_champion,
    quick_workspace,
    stored_text,
)

MONITORED_FEATURES = {"sex", "bmi", "bp_mean", "tc", "ldl", "hdl", "tch", "ltg", "glucose", "age_years"}
# 100 undrifted arrivals with this seed stay under the major PSI mark on every feature; PSI over
# 10 bins on 100 rows is noisy, and some seeds (7, for one) push a feature past it by chance.
STABLE_SEED = 1



def drift_rows(ws: Workspace) -> list[dict[str, Any]]:
    return fetch(ws, "SELECT * FROM pipeline.drift_reports ORDER BY run_id")


def newest_recorded_at(ws: Workspace) -> datetime:
    [row] = fetch(ws, "SELECT max(recorded_at) AS t FROM public.patient_records")
    return row["t"]




@pytest.fixture
def champion(quick_ws: Workspace) -> dict[str, Any]:
    """The demo study loaded and retrained up to DEMO_WATERMARK: version 1 is the champion."""
    return promote_demo_champion(quick_ws)


def test_no_champion(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    demo.simulate_arrivals(ws.engine, rows=50, seed=1)

    result = stages.monitor_drift(ws, make_run("monitor"))

    assert result == {"run_id": "monitor", "verdict": "no_champion", "drifted_features": [], "champion_version": None,
                      "recent_rows": 0, "unreadable_rows": 0,
                      "quarantined_rows": 0, "quarantine_reasons": {}, "report_path": None, "features": []}
    [row] = drift_rows(ws)
    assert (row["run_id"], row["verdict"], row["champion_version"], row["reference_snapshot"]) == (
        "monitor", "no_champion", None, None)
    assert row["window_end"] == LATER_WATERMARK and row["features"] == []


def test_too_few_recent_rows_give_no_verdict(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    min_rows = quick_ws.config.monitoring.drift.min_rows
    demo.simulate_arrivals(quick_ws.engine, rows=min_rows - 1, seed=1, drift={"bmi": 4})

    result = stages.monitor_drift(quick_ws, make_run("monitor"))

    assert result["verdict"] == "insufficient_data"
    assert result["recent_rows"] == min_rows - 1
    assert result["features"] == [] and result["report_path"] is None
    [row] = drift_rows(quick_ws)
    assert row["verdict"] == "insufficient_data" and row["recent_rows"] == min_rows - 1
    assert row["champion_version"] == 1 and row["reference_rows"] == 442


def test_undrifted_arrivals_are_stable(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    demo.simulate_arrivals(quick_ws.engine, rows=100, seed=STABLE_SEED)

    result = stages.monitor_drift(quick_ws, make_run("monitor"))

    assert result["verdict"] == "stable"
    assert result["drifted_features"] == []
    assert {f["feature"] for f in result["features"]} == MONITORED_FEATURES
    assert [f["feature"] for f in result["features"] if f["level"] == "major"] == []
    [row] = drift_rows(quick_ws)
    assert (row["verdict"], row["recent_rows"], row["reference_rows"]) == ("stable", 100, 442)
    assert row["reference_snapshot"] == champion["clean_snapshot_hash"]  # the rows the champion was trained on
    assert Path(result["report_path"]).is_file() and row["report_path"] == result["report_path"]


def test_faulty_arrivals_are_a_quality_signal_not_drift(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    # 10 faulty rows (sex 'Male' / 'U', kPa, mmol/L, impossible or missing dates) and 10 messy ones (' f', 'm'):
    # judged raw, sex alone drifted with PSI ~2 and a retrain failed validation on the same batch (issue 32).
    demo.simulate_arrivals(quick_ws.engine, rows=100, seed=STABLE_SEED, bad_rows=10)

    result = stages.monitor_drift(quick_ws, make_run("monitor"))

    assert result["verdict"] == "stable" and result["drifted_features"] == []
    assert (result["recent_rows"], result["quarantined_rows"]) == (90, 10)
    assert sum(result["quarantine_reasons"].values()) == 10 and "unknown_category" in result["quarantine_reasons"]
    [row] = drift_rows(quick_ws)
    assert (row["recent_rows"], row["quarantined_rows"]) == (90, 10)
    assert row["quarantine_reasons"] == result["quarantine_reasons"]
    assert "10 more quarantined by it and left out: a data-quality signal, not drift" in stored_text(
        quick_ws, result["report_path"])


def test_the_champions_evaluation_stored_its_holdout_errors(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    # What a degradation verdict resamples besides the live outcomes (issue 32).
    errors = performance.holdout_errors(quick_ws, 1)
    [row] = fetch(quick_ws, "SELECT holdout_rows, CAST(candidate_metrics ->> 'rmse' AS double precision) AS rmse "
                            "FROM pipeline.evaluations WHERE candidate_version = 1")

    assert errors is not None and len(errors) == row["holdout_rows"] == 88
    assert math.sqrt(errors.mean()) == pytest.approx(row["rmse"])


def test_shifted_bmi_is_drift(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    demo.simulate_arrivals(quick_ws.engine, rows=100, seed=STABLE_SEED, drift={"bmi": 4}, labelled=False)

    result = stages.monitor_drift(quick_ws, make_run("monitor"))

    assert result["verdict"] == "drift"
    assert result["drifted_features"] == ["bmi"]
    [bmi] = [f for f in result["features"] if f["feature"] == "bmi"]
    assert bmi["level"] == "major" and bmi["test"] == "ks"
    [row] = drift_rows(quick_ws)
    assert row["verdict"] == "drift" and row["recent_rows"] == 100
    [stored_bmi] = [f for f in row["features"] if f["feature"] == "bmi"]
    assert stored_bmi["drifted"] is True and stored_bmi["psi"] == pytest.approx(bmi["psi"])
    page = stored_text(quick_ws, result["report_path"])
    assert page.count("<img ") == len(MONITORED_FEATURES)
    assert "<tr class='major'><td>bmi</td>" in page
    assert "<tr><th>recent rows</th><td>100 valid by the contract</td></tr>" in page
    # what the report states: its verdict, the champion, the window and the thresholds it applied
    assert f"<p class='verdict'>Drift: 1 of {len(MONITORED_FEATURES)} features drifted (bmi: PSI {bmi['psi']:.3f}" in page
    assert "<tr><th>champion version</th><td>1</td></tr>" in page
    assert f"its training snapshot {row['reference_snapshot']}: " in page
    assert (f"records recorded after {row['window_start']} (the champion&#x27;s training watermark) up to "
            f"{row['window_end']}") in page
    policy = quick_ws.config.monitoring.drift
    for name in ("psi_moderate", "psi_major", "p_value", "min_rows"):
        assert f"<tr><th>{name}</th><td>{getattr(policy, name):g}: " in page


def test_window_ends_at_the_runs_watermark(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    demo.simulate_arrivals(quick_ws.engine, rows=100, seed=STABLE_SEED)
    window_end = newest_recorded_at(quick_ws)
    demo.simulate_arrivals(quick_ws.engine, rows=60, seed=2, drift={"bmi": 4})  # after the watermark

    result = stages.monitor_drift(quick_ws, make_run("monitor", window_end))

    assert result["recent_rows"] == 100  # neither the 442 demo rows before the champion's snapshot nor the 60 after
    assert result["verdict"] == "stable"  # the 60 drifted rows after the watermark were not looked at
    [row] = drift_rows(quick_ws)
    assert row["window_end"] == window_end
    assert row["window_start"] == DEMO_WATERMARK  # the champion's snapshot watermark


def test_rerunning_a_check_replaces_its_row(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    run = make_run("monitor")
    demo.simulate_arrivals(quick_ws.engine, rows=10, seed=1)
    assert stages.monitor_drift(quick_ws, run)["verdict"] == "insufficient_data"
    demo.simulate_arrivals(quick_ws.engine, rows=90, seed=3, drift={"bmi": 4})

    result = stages.monitor_drift(quick_ws, run)

    assert result["verdict"] == "drift"
    [row] = drift_rows(quick_ws)
    assert (row["run_id"], row["verdict"], row["recent_rows"]) == ("monitor", "drift", 100)
    assert row["report_path"] == result["report_path"] and len(row["features"]) == len(MONITORED_FEATURES)


def test_stored_drifted_flags_are_json_booleans(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    demo.simulate_arrivals(quick_ws.engine, rows=100, seed=STABLE_SEED)  # hdl and age_years: moderate PSI
    stages.monitor_drift(quick_ws, make_run("monitor"))

    [row] = drift_rows(quick_ws)

    assert {f["feature"] for f in row["features"] if f["level"] == "moderate"}
    assert [f["feature"] for f in row["features"] if not isinstance(f["drifted"], bool)] == []


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 0/0 on the empty recent column
def test_a_feature_that_stopped_arriving_is_reported(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    demo.simulate_arrivals(quick_ws.engine, rows=100, seed=STABLE_SEED)
    with quick_ws.engine.begin() as conn:
        conn.execute(sa.text("UPDATE public.patient_records SET glucose = NULL WHERE recorded_at > :t"),
                     {"t": DEMO_WATERMARK})
    try:
        result = stages.monitor_drift(quick_ws, make_run("monitor"))
    except sa.exc.DataError as exc:
        raise AssertionError(f"monitor_drift could not record its report: {exc.orig}") from exc

    assert result["verdict"] == "drift" and "glucose" in result["drifted_features"]
    [row] = drift_rows(quick_ws)
    assert row["verdict"] == "drift"


def test_same_rows_again_are_skipped(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    run = make_run("again")
    snapshot = stages.ingest_snapshot(quick_ws, run)
    assert snapshot["snapshot_hash"] == champion["snapshot"]["snapshot_hash"]

    assert stages.has_new_data(quick_ws, run, snapshot["snapshot_hash"]) is False

    [row] = fetch(quick_ws, "SELECT status, reason, finished_at FROM pipeline.training_runs WHERE run_id = 'again'")
    assert row["status"] == "skipped" and row["finished_at"] is not None
    assert row["reason"].startswith("no new data")
    assert "version 1" in row["reason"] and "run first" in row["reason"]
    assert fetch(quick_ws, "SELECT count(*) AS n FROM pipeline.model_versions") == [{"n": 1}]


def test_force_retrains_the_same_rows(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    run = make_run("forced")
    snapshot = stages.ingest_snapshot(quick_ws, run)

    assert stages.has_new_data(quick_ws, run, snapshot["snapshot_hash"], force=True) is True

    [row] = fetch(quick_ws, "SELECT status, reason FROM pipeline.training_runs WHERE run_id = 'forced'")
    assert (row["status"], row["reason"]) == ("running", None)


def test_arrivals_are_new_data(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    demo.simulate_arrivals(quick_ws.engine, rows=30, seed=7)
    run = make_run("after-arrivals")
    snapshot = stages.ingest_snapshot(quick_ws, run)

    assert snapshot["row_count"] == 442 + 30
    assert stages.has_new_data(quick_ws, run, snapshot["snapshot_hash"]) is True
    [row] = fetch(quick_ws, "SELECT status FROM pipeline.training_runs WHERE run_id = 'after-arrivals'")
    assert row["status"] == "running"


def test_a_retried_check_does_not_count_its_own_model(quick_ws: Workspace, champion: dict[str, Any]) -> None:
    # Rerunning has_new_data for the run that trained the newest model compares with the model
    # before it (none here), not with its own: a retried task must not skip its own run.
    with quick_ws.engine.connect() as conn:
        assert records.last_trained_snapshot(conn, quick_ws.model, exclude_run="first") is None
    run = make_run("first", DEMO_WATERMARK)

    assert stages.has_new_data(quick_ws, run, champion["snapshot"]["snapshot_hash"]) is True


@pytest.fixture
def quick_ws(ws: Workspace) -> Workspace:
    return quick_workspace(ws)


