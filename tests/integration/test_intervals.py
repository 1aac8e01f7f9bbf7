"""Every version carries its prediction interval's inputs, which reproduce it; the card states its coverage."""

from __future__ import annotations

from pipeline.model import cards, intervals
from pipeline.workspace import Workspace
from tests.integration.stage_runs import fetch, promote_demo_champion, quick_workspace


def test_a_version_stores_its_interval_and_the_record_reproduces_it(ws: Workspace) -> None:
    ws = quick_workspace(ws)
    result = promote_demo_champion(ws)
    version = result["candidate"]["version"]

    [stored] = fetch(ws, "SELECT * FROM pipeline.model_intervals WHERE version = :v", v=version)
    assert stored["coverage"] == ws.config.serving.interval_coverage == 0.9
    assert stored["residuals"] == stored["inputs"]["train_rows"] == fetch(
        ws, "SELECT train_rows FROM pipeline.model_versions WHERE version = :v", v=version)[0]["train_rows"]
    assert 0 < stored["half_width"] < 500
    recomputed = intervals.recompute(ws, version, 0.9)
    assert (recomputed["half_width"], recomputed["residuals_sha256"]) == (stored["half_width"],
                                                                          stored["residuals_sha256"])

    evidence = fetch(ws, "SELECT evidence FROM pipeline.evaluations WHERE run_id = 'first'")[0]["evidence"]
    reached = evidence["interval"]["holdout_coverage"]
    assert 0.75 <= reached <= 1.0  # 0.9 stated, on 89 held-out outcomes no residual came from
    page = cards.render_model_card(ws, version).read_text()
    assert f"{reached:.1%} of {evidence['holdout_rows']} outcomes" in page and "stated coverage" in page


def test_another_coverage_is_computed_from_the_record_and_kept(ws: Workspace) -> None:
    ws = quick_workspace(ws)
    version = promote_demo_champion(ws)["candidate"]["version"]

    narrower = intervals.for_version(ws, version, coverage=0.5)

    wider = intervals.for_version(ws, version)
    assert narrower.half_width < wider.half_width
    assert [r["coverage"] for r in fetch(ws, "SELECT coverage FROM pipeline.model_intervals ORDER BY coverage")] == [
        0.5, 0.9]
