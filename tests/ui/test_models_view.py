"""The Models view's routes on a real Airflow API server: their content, the links between them, the
quarantine CSV, and Airflow's access rules (anonymous and bad-token requests refused)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import requests

from tests.standalone import stored_bytes
from tests.ui.conftest import BAD_ROWS, ViewAirflow

MODEL = "diabetes_progression"


def _links(page: str) -> set[str]:
    return set(re.findall(r"href='([^']+)'", page))


def test_the_plugin_is_registered_with_a_nav_entry(view_airflow: ViewAirflow) -> None:
    plugins = view_airflow.api("GET", "/plugins").json()["plugins"]
    plugin = next(p for p in plugins if p["name"] == "models_view")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/models-view"
    view = plugin["external_views"][0]
    assert view["href"] == "/models-view/" and view["url_route"] == "models" and view["destination"] == "nav"


@pytest.mark.parametrize("path", ["/", f"/{MODEL}", f"/{MODEL}/versions/1/card", f"/{MODEL}/quarantine",
                                  f"/{MODEL}/quarantine.csv", f"/{MODEL}/forecasts", f"/{MODEL}/compare",
                                  f"/{MODEL}/metrics", f"/{MODEL}/actions/score"])
def test_anonymous_and_bad_token_requests_are_refused(view_airflow: ViewAirflow, path: str) -> None:
    anonymous = view_airflow.view(path, token="")
    forged = view_airflow.view(path, token="not-a-jwt")
    cookie = view_airflow.view(path, token="", cookies={"_token": "eyJhbGciOiJIUzUxMiJ9.e30.bad"})
    assert anonymous.status_code == 401 and "Not authenticated" in anonymous.text
    assert forged.status_code == 403 and forged.status_code == cookie.status_code
    assert MODEL not in forged.text + cookie.text


def test_a_logged_out_browser_is_sent_to_the_login_and_back(view_airflow: ViewAirflow) -> None:
    page = view_airflow.view(f"/{MODEL}", token="", headers={"Accept": "text/html,*/*"}, allow_redirects=False)
    assert page.status_code == 303
    login = urlsplit(page.headers["location"])
    assert login.path.startswith("/auth/") and login.path.endswith("/login")
    assert f"next={quote(view_airflow.base_url + '/models-view/' + MODEL, safe='')}" in login.query


def test_the_ui_session_cookie_is_accepted(view_airflow: ViewAirflow) -> None:
    page = view_airflow.view("/", token="", cookies={"_token": view_airflow.token})
    assert page.status_code == 200 and MODEL in page.text


def test_the_index_lists_each_model_with_its_champion(view_airflow: ViewAirflow) -> None:
    champion = view_airflow.rows("SELECT version FROM pipeline.champion WHERE model = :m", m=MODEL)[0]["version"]
    page = view_airflow.view("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f"/models-view/{MODEL}" in _links(page.text)
    assert f"/models-view/{MODEL}/versions/{champion}/card" in _links(page.text)
    assert f">v{champion}<" in page.text


def test_the_model_page_shows_versions_decisions_promotions_trend_and_actions(view_airflow: ViewAirflow) -> None:
    page = view_airflow.view(f"/{MODEL}").text
    evaluations = view_airflow.rows("SELECT * FROM pipeline.evaluations ORDER BY candidate_version")
    assert len(evaluations) == 2
    for e in evaluations:
        assert f"/models-view/{MODEL}/versions/{e['candidate_version']}/card" in _links(page)
        assert f"/models-view/{MODEL}/runs/{quote(e['run_id'], safe='')}/comparison" in _links(page)
        assert f"{e['candidate_metrics']['rmse']:.3f}" in page
        assert e["reason"].replace("'", "&#x27;")[:40] in page
    for run_id in (view_airflow.first_run, view_airflow.second_run):
        assert f"/models-view/{MODEL}/runs/{quote(run_id, safe='')}/quality" in _links(page)
        assert f"/dags/retrain/runs/{quote(run_id, safe='')}" in _links(page)
    promotion = view_airflow.rows("SELECT * FROM pipeline.promotion_events ORDER BY event_id")[0]
    history = page.split("id='promotions'")[1].split("</section>")[0]
    assert f"v{promotion['to_version']}" in history and promotion["actor"] in history
    assert "<svg" in page and "<polyline" in page and "candidate, v1 (promote)" in page
    assert "champion (same rows), v2 (keep)" in page  # the kept v2 beside the champion on the same rows
    assert "/dags/set_champion" in _links(page) and "/dags/set_shadow" in _links(page)
    assert f"/models-view/{MODEL}/actions/retrain" in _links(page) and f"/models-view/{MODEL}/actions/score" in _links(page)
    assert "drift-check-1" in page and f"/models-view/{MODEL}/runs/drift-check-1/drift" in _links(page)


def test_every_page_linked_from_the_model_page_is_served(view_airflow: ViewAirflow) -> None:
    page = view_airflow.view(f"/{MODEL}").text
    served = [href for href in _links(page) if href.startswith(f"/models-view/{MODEL}/")]
    assert len(served) >= 8
    for href in served:
        response = view_airflow.view(href.removeprefix("/models-view"))
        assert response.status_code == 200, f"{href}: {response.status_code} {response.text[:300]}"


def test_a_card_is_the_registered_page_with_its_plots_and_links(view_airflow: ViewAirflow) -> None:
    recorded = view_airflow.rows("SELECT path FROM pipeline.model_cards WHERE version = 1 AND kind = 'card'")[0]
    page = view_airflow.view(f"/{MODEL}/versions/1/card").text
    stored = stored_bytes(view_airflow.env, view_airflow.engine, Path(recorded["path"])).decode()  # sealed at rest
    assert stored.split("<body>", 1)[1] in page  # the stored page whole, below the view's links
    assert "data:image/png;base64," in page
    links = _links(page)
    assert f"/models-view/{MODEL}" in links
    assert f"/models-view/{MODEL}/runs/{quote(view_airflow.first_run, safe='')}/quality" in links


def test_a_comparison_and_a_quality_report_link_to_each_other(view_airflow: ViewAirflow) -> None:
    run = quote(view_airflow.second_run, safe="")
    comparison = view_airflow.view(f"/{MODEL}/runs/{run}/comparison").text
    quality = view_airflow.view(f"/{MODEL}/runs/{run}/quality").text
    assert "v2" in comparison and "v1" in comparison
    assert f"/models-view/{MODEL}/runs/{run}/quality" in _links(comparison)
    assert f"/models-view/{MODEL}/versions/2/card" in _links(comparison)
    assert f"/models-view/{MODEL}/runs/{run}/comparison" in _links(quality)
    assert str(BAD_ROWS) in quality and "quarantine" in quality.lower()


def test_drift_and_performance_reports_are_served_by_run(view_airflow: ViewAirflow) -> None:
    drift = view_airflow.view(f"/{MODEL}/runs/drift-check-1/drift")
    assert drift.status_code == 200 and "bmi" in drift.text
    assert f"/models-view/{MODEL}/versions/" in " ".join(_links(drift.text))
    missing = view_airflow.view(f"/{MODEL}/runs/drift-check-1/performance")
    assert missing.status_code == 404 and "no performance page for run drift-check-1" in missing.text


def test_unknown_models_runs_and_versions_are_404_with_a_reason(view_airflow: ViewAirflow) -> None:
    assert "no model 'nope'" in view_airflow.view("/nope").text
    missing = view_airflow.view(f"/{MODEL}/versions/99/card")
    assert missing.status_code == 404 and "no card page for version 99" in missing.text
    assert view_airflow.view(f"/{MODEL}/runs/nope/quality").status_code == 404
    assert view_airflow.view(f"/{MODEL}/runs/{quote(view_airflow.first_run, safe='')}/bogus").status_code == 404


def test_the_quarantine_browser_shows_reasons_and_original_values(view_airflow: ViewAirflow) -> None:
    stored = view_airflow.rows("SELECT * FROM pipeline.quarantine WHERE run_id = :r ORDER BY row_number",
                               r=view_airflow.second_run)
    assert len(stored) >= BAD_ROWS
    page = view_airflow.view(f"/{MODEL}/quarantine").text
    for row in stored:
        assert f">{row['source_id']}<" in page
        assert row["reasons"][0]["code"] in page
    code = stored[0]["reasons"][0]["code"]
    filtered = view_airflow.view(f"/{MODEL}/quarantine", params={"code": code}).text
    expected = sum(any(r["code"] == code for r in row["reasons"]) for row in stored)
    assert f"Showing {expected} row(s)" in filtered
    assert any(urlsplit(h).path == f"/models-view/{MODEL}/quarantine.csv" for h in _links(filtered))


def test_the_quarantine_csv_has_every_row_with_reasons_and_values(view_airflow: ViewAirflow) -> None:
    stored = view_airflow.rows("SELECT * FROM pipeline.quarantine ORDER BY run_id, row_number")
    response = view_airflow.view(f"/{MODEL}/quarantine.csv")
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == len(stored)
    by_key = {(r["run_id"], int(r["row_number"])): r for r in rows}
    for row in stored:
        exported = by_key[(row["run_id"], row["row_number"])]
        assert exported["source_id"] == row["source_id"]
        assert exported["reason_codes"].split(";")[0] == row["reasons"][0]["code"]
        assert exported["patient_id"] == str(row["original"]["patient_id"])
        assert exported["bmi"] == ("" if row["original"]["bmi"] is None else str(row["original"]["bmi"]))
    one_run = list(csv.DictReader(io.StringIO(
        view_airflow.view(f"/{MODEL}/quarantine.csv", params={"run_id": "nope"}).text)))
    assert one_run == []


def test_each_action_opens_its_form_prefilled(view_airflow: ViewAirflow) -> None:
    for path, dag_id, conf in ((f"/{MODEL}/actions/make_champion?version=2", "set_champion", '"to_version": 2'),
                               (f"/{MODEL}/actions/roll_back?version=1", "set_champion", '"mode": "rollback"'),
                               (f"/{MODEL}/actions/add_shadow?version=2", "set_shadow", '"version": 2'),
                               (f"/{MODEL}/actions/retrain", "retrain", "{}"),
                               (f"/{MODEL}/actions/score", "score_patients", "{}")):
        page = view_airflow.view(path)
        assert page.status_code == 200, f"{path}: {page.status_code} {page.text[:300]}"
        assert f"data-api='/api/v2/dags/{dag_id}/dagRuns'" in page.text and conf in page.text.split("data-conf>")[1]
    assert "no action 'nope'" in view_airflow.view(f"/{MODEL}/actions/nope").text
    assert view_airflow.view(f"/{MODEL}/actions/make_champion?version=99").status_code == 404


def test_the_compare_page_scores_two_versions_on_the_same_rows(view_airflow: ViewAirflow) -> None:
    page = view_airflow.view(f"/{MODEL}/compare", params={"a": 1, "b": 2})
    assert page.status_code == 200, page.text[:500]
    assert page.text.count("interval of the RMSE change B − A (candidate − champion; negative: B is better)") == 1
    assert "rows</b> neither trained on" in page.text and "id='params'" in page.text and "id='cv'" in page.text
    default = view_airflow.view(f"/{MODEL}/compare").text  # A: the champion, B: the newest other version
    assert "<option value='1' selected>" in default or "<option value='2' selected>" in default


def test_the_metrics_page_titles_its_axes(view_airflow: ViewAirflow) -> None:
    page = view_airflow.view(f"/{MODEL}/metrics").text
    assert "promotion decision (date, candidate)" in page and "holdout RMSE on the decision" in page
    assert page.count("<polyline") >= 1 and "month of the outcome (UTC)" in page or "Nothing to plot yet" in page


def test_the_forecasts_page_is_logged_without_the_ids_searched(view_airflow: ViewAirflow) -> None:
    before = view_airflow.rows("SELECT count(*) AS n FROM pipeline.access_log")[0]["n"]
    browsed = view_airflow.view(f"/{MODEL}/forecasts")
    searched = requests.post(f"{view_airflow.base_url}/models-view/{MODEL}/forecasts", data={"ids": "12345 67890"},
                             headers={"Authorization": f"Bearer {view_airflow.token}"}, timeout=60)
    assert browsed.status_code == searched.status_code == 200
    assert "Scoring runs" in browsed.text and "2 id(s) searched" in searched.text
    log = view_airflow.rows("SELECT what, principal, request FROM pipeline.access_log ORDER BY entry_id OFFSET :n",
                            n=before)
    assert [e["what"] for e in log] == ["forecasts page 1", "forecasts searched by 2 id(s)"]
    assert all(e["principal"] == "airflow:admin" for e in log)
    assert not any("12345" in e["request"] or "67890" in e["request"] for e in log)
