"""Every version carries its prediction interval's inputs, which reproduce it; the card states its coverage,
its guarantee and its coverage per slice; a version recorded with the out-of-fold method keeps it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import sqlalchemy as sa

from pipeline.model import cards, intervals
from pipeline.workspace import Workspace
from tests.integration.stage_runs import fetch, promote_demo_champion, quick_workspace, stored_text


def test_a_version_stores_its_interval_and_the_record_reproduces_it(ws: Workspace) -> None:
    ws = quick_workspace(ws)
    result = promote_demo_champion(ws)
    version = result["candidate"]["version"]

    [stored] = fetch(ws, "SELECT * FROM pipeline.model_intervals WHERE version = :v", v=version)
    [model] = fetch(ws, "SELECT holdout_rows, snapshot_hash FROM pipeline.model_versions WHERE version = :v", v=version)
    assert stored["coverage"] == ws.config.serving.interval_coverage == 0.9
    assert stored["method"] == intervals.METHOD and stored["conditional_on"] == ""
    assert stored["residuals"] == stored["inputs"]["calibration_rows"] == model["holdout_rows"] == 88  # its holdout
    assert stored["inputs"]["snapshot_hash"] == model["snapshot_hash"]
    assert stored["rank"] == math.ceil(89 * 0.9) and 0 < stored["half_width"] < 500
    recomputed = intervals.recompute(ws, version, 0.9)
    assert (recomputed["half_width"], recomputed["residuals_sha256"]) == (stored["half_width"],
                                                                          stored["residuals_sha256"])

    evidence = fetch(ws, "SELECT evidence FROM pipeline.evaluations WHERE run_id = 'first'")[0]["evidence"]
    assert evidence["interval"]["holdout_coverage"] >= 0.9  # calibrated on these very rows: by construction
    assert evidence["interval"]["guarantee"].startswith("at least the stated share")
    page = stored_text(ws, cards.render_model_card(ws, version))
    assert "stated coverage" in page and "the holdout is the calibration set" in page
    assert "exchangeable" in page and "<td>sex</td><td>F</td>" in page and "<td>age</td><td>&lt;40</td>" in page


def test_another_coverage_is_computed_from_the_record_and_kept(ws: Workspace) -> None:
    ws = quick_workspace(ws)
    version = promote_demo_champion(ws)["candidate"]["version"]

    narrower = intervals.for_version(ws, version, coverage=0.5)

    wider = intervals.for_version(ws, version)
    assert narrower.half_width < wider.half_width and narrower.method == intervals.METHOD
    assert [r["coverage"] for r in fetch(ws, "SELECT coverage FROM pipeline.model_intervals ORDER BY coverage")] == [
        0.5, 0.9]


def test_an_interval_calibrated_per_slice_group_is_stored_and_applied(ws: Workspace) -> None:
    ws = quick_workspace(ws)
    version = promote_demo_champion(ws)["candidate"]["version"]
    ws = dataclasses.replace(ws, config=dataclasses.replace(
        ws.config, serving=dataclasses.replace(ws.config.serving, interval_conditional_on="sex")))

    interval = intervals.for_version(ws, version)

    assert interval.conditional_on is not None and interval.conditional_on.name == "sex"
    assert interval.group_half_widths is not None and set(interval.group_half_widths) == {"F", "M"}
    [row] = fetch(ws, "SELECT * FROM pipeline.model_intervals WHERE conditional_on = 'sex'")
    assert row["group_half_widths"] == interval.group_half_widths and row["method"] == intervals.METHOD
    from pipeline.data import demo
    frame = demo.demo_records().head(20)
    model = ws.load_model(fetch(ws, "SELECT artifact_hash FROM pipeline.model_versions WHERE version = :v",
                                v=version)[0]["artifact_hash"])
    forecast = intervals.forecast(model, frame, ws.config.dataset, dataclasses.replace(interval, bounds=None))
    expected = frame["sex"].map(interval.group_half_widths).to_numpy()
    assert np.allclose(forecast["upper"] - forecast["prediction"], expected)
    assert "within each sex group (Mondrian)" in interval.guarantee


def test_a_version_recorded_with_the_out_of_fold_method_keeps_it(ws: Workspace) -> None:
    ws = quick_workspace(ws)
    version = promote_demo_champion(ws)["candidate"]["version"]
    with ws.engine.begin() as conn:  # as a version trained before issue 32 recorded it
        conn.execute(sa.text("DELETE FROM pipeline.model_intervals WHERE version = :v"), {"v": version})
        intervals.record(conn, version, intervals.out_of_fold_record(
            ws, fetch(ws, "SELECT * FROM pipeline.model_versions WHERE version = :v", v=version)[0], 0.9))

    other = intervals.for_version(ws, version, coverage=0.8)
    per_group = intervals.for_version(ws, version, spec=ws.config.promotion.slices[0])

    [row] = fetch(ws, "SELECT * FROM pipeline.model_intervals WHERE version = :v AND coverage = 0.8", v=version)
    assert other.method == row["method"] == intervals.OUT_OF_FOLD
    assert row["residuals"] == row["inputs"]["train_rows"]  # the search's out-of-fold residuals, as recorded
    assert per_group.conditional_on is None and per_group.method == intervals.OUT_OF_FOLD  # kept, not re-cut
    assert "none in finite samples" in other.guarantee
