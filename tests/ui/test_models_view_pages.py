"""The Models view's renderers on plain data, without Airflow or a database: escaping, links, the trend,
the CSV, and the stored-page integrity check."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from pipeline.contract.config import ModelEntry
from pipeline.store import artifacts
from pipeline.views import models_view

LINKS = models_view.Links(base="/models-view", airflow="")
HOSTILE = "<script>alert(1)</script>"


def _overview(reason: str = "beats the champion") -> dict[str, object]:
    version = {"version": 1, "run_id": "manual__2026-01-01T00:00:00+00:00", "model_family": "ridge",
               "created_at": None, "train_rows": 10, "holdout_rows": 3, "holdout": {"rmse": 50.0, "mae": 40.0, "r2": 0.5},
               "compared_with": None, "decision": "promote", "reason": reason, "run_status": "promoted",
               "run_reason": None, "live_rmse": 55.0, "live_outcomes": 12, "live_coverage": 0.9,
               "live_report": "perf-1", "has_card": True}
    return {"model": "m", "champion": None, "versions": [version], "runs": [], "reports": {}, "promotions": [],
            "shadows": [], "drift": [], "performance": []}


def test_values_are_escaped_and_run_ids_quoted_in_links() -> None:
    page = models_view.model_html(LINKS, ModelEntry("m", Path("m.yaml"), True), _overview(reason=HOSTILE))
    assert HOSTILE not in page and "&lt;script&gt;" in page
    assert "/models-view/m/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00/comparison" in page
    assert "/models-view/m/runs/perf-1/performance" in page and "/dags/set_champion" in page


def test_refused_outcomes_are_shown_with_each_performance_report() -> None:
    overview = _overview()
    report = {"run_id": "perf-2", "created_at": None, "verdict": "not_degraded", "champion_version": 1,
              "outcomes": 90, "live_rmse": 10.0, "holdout_rmse": 10.0, "report_path": "p",
              "refused_outcomes": {"refused": 10, "reason_counts": {"out_of_range": 9, "not_finite": 1},
                                   "over_limit": True}}
    overview["performance"] = [report, {**report, "run_id": "perf-1", "refused_outcomes": {}}]

    page = models_view.model_html(LINKS, ModelEntry("m", Path("m.yaml"), True), overview)

    assert "outcomes refused by the contract" in page
    assert "10 (not_finite 1, out_of_range 9) OVER LIMIT: a data-quality signal" in page
    assert models_view.refused_text({}) == "0"


def test_a_chart_titles_both_axes_and_names_each_point() -> None:
    svg = models_view.line_chart({"candidate": [(0, 50.0), (1, 48.0)], "champion (same rows)": [(1, 47.0)]},
                                 ["v1 (promote)", "v2 (keep)"], "promotion decision", "holdout RMSE", "RMSE")
    assert svg.count("<polyline") == 2 and "candidate, v2 (keep): 48.000" in svg
    assert "champion (same rows), v2 (keep): 47.000" in svg
    assert "class='x-title'" in svg and ">promotion decision<" in svg and ">holdout RMSE<" in svg
    assert "Nothing to plot" in models_view.line_chart({}, [], "x", "y", "empty")


def test_the_csv_keeps_reasons_and_original_values() -> None:
    rows = [{"run_id": "r", "snapshot_hash": "h", "row_number": 3, "source_id": "7", "labelled": True,
             "reasons": [{"code": "out_of_range", "column": "bmi", "rule": "between 10 and 80", "value": "400"}],
             "original": {"patient_id": 7, "bmi": 400.0, "sex": HOSTILE}}]
    exported = list(csv.DictReader(io.StringIO(models_view.quarantine_csv(rows))))
    assert exported == [{"run_id": "r", "snapshot_hash": "h", "row_number": "3", "source_id": "7", "labelled": "True",
                         "reason_codes": "out_of_range", "reasons": "out_of_range (bmi: between 10 and 80; value 400)",
                         "patient_id": "7", "bmi": "400.0", "sex": HOSTILE}]


def test_a_stored_page_that_changed_on_disk_is_refused(tmp_path: Path) -> None:
    digest, path = artifacts.store_bytes(tmp_path, "reports", b"<html><body>ok</body></html>", ".html")
    assert models_view.read_report(tmp_path, str(path)) == b"<html><body>ok</body></html>"
    assert models_view.read_report(tmp_path, f"/moved/store/reports/{digest}.html")  # found by its name
    path.write_bytes(b"<html><body>changed</body></html>")
    with pytest.raises(artifacts.ArtifactIntegrityError, match="does not hash to its name"):
        models_view.read_report(tmp_path, str(path))
    with pytest.raises(LookupError, match="not in the artifact store"):
        models_view.read_report(tmp_path, "/nowhere/abc.html")


def test_served_reports_get_the_view_links_after_body() -> None:
    crumbs = models_view.report_crumbs(LINKS, "m", "comparison", {"run_id": "r1", "version": 2})
    page = models_view.with_crumbs(b"<html><body><h1>x</h1></body></html>", crumbs)
    assert page.index("<nav class='models-view'>") < page.index("<h1>x</h1>")
    assert "/models-view/m/runs/r1/quality" in page and "/models-view/m/versions/2/card" in page
    assert "/models-view/m/runs/r1/comparison" not in page


def test_links_to_airflow_pages_work_from_inside_its_sandboxed_frame() -> None:
    """Airflow's frame has no allow-top-navigation: links to its pages go through its router (FRAME_LINKS)."""
    page = models_view.model_html(LINKS, ModelEntry("m", Path("m.yaml"), True), _overview())
    assert "<a href='/dags/set_champion' target='_top' data-airflow='1'>" in page
    assert models_view.FRAME_LINKS in page and "pushState" in models_view.FRAME_LINKS
    assert "data-airflow" not in models_view.link("/models-view/m", "m")  # the view's own pages stay in the frame


def test_a_listing_searches_sorts_and_pages_and_keeps_missing_values_last() -> None:
    rows = [{"v": i, "name": f"row {i}", "x": None if i == 3 else 10 - i} for i in range(1, 8)]
    listing = models_view.Listing("v", q="row", sort="-x", page=2, per_page=3)
    shown, found = listing.apply(rows, lambda r: r["name"], {"x": lambda r: r["x"]})
    assert found == 7 and [r["v"] for r in shown] == [5, 6, 7]  # x descending: 9, 8, 6 | 5, 4, 3 | missing last
    assert models_view.Listing("v", q="row 2").apply(rows, lambda r: r["name"], {})[1] == 1
    query = models_view.Listing.from_query("r", {"rq": " v2 ", "rsort": "started", "rpage": "x"})
    assert (query.q, query.sort, query.page) == ("v2", "started", 1)
    header = models_view.sort_header("/m", "started", "started", query, {"vq": "a"}, "runs")
    assert "rsort=-started" in header and "vq=a" in header and "rq=v2" in header and "▲" in header


def test_the_view_follows_the_light_or_dark_scheme_and_states_utc() -> None:
    page = models_view.model_html(LINKS, ModelEntry("m", Path("m.yaml"), True), _overview())
    assert "@media (prefers-color-scheme: dark)" in page and "content='light dark'" in page
    assert "Every time on this page is UTC, to the second." in page
    from datetime import UTC, datetime, timedelta, timezone
    assert models_view.stamp(datetime(2026, 1, 2, 4, 5, 6, 789, tzinfo=timezone(timedelta(hours=2)))) == \
        "2026-01-02 02:05:06"
    assert models_view.stamp(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02 03:04:05"


def test_a_recorded_gain_is_shown_as_the_change_candidate_minus_champion() -> None:
    reason = ("does not beat the champion (the gain is not significant): candidate RMSE 55.000 vs champion 56.500 "
              "(needs < 55.935, margin 1.0%); 95% interval of the gain [-0.750, +3.875]")
    page = models_view.model_html(LINKS, ModelEntry("m", Path("m.yaml"), True), _overview(reason=reason))
    assert "interval of the gain" not in page
    assert "interval of the RMSE change (candidate − champion) [-3.875, +0.750]" in page
