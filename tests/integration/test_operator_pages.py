"""The Models view's operator pages on a real PostgreSQL with a seeded registry (v1 champion, v2 trained later
and kept out, a scoring run with refused records): the action forms, the compare page, metrics over time, the
forecasts page and its access-log entries, and the versions table searched, sorted and paged."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import compare
from pipeline.contract.config import ModelEntry
from pipeline.data import demo
from pipeline.serving import scoring
from pipeline.store import accesslog
from pipeline.views import models_view, operator
from pipeline.workspace import Workspace
from tests.conftest import shared_workspace
from tests.integration.stage_runs import fetch, make_run, promote_demo_champion, quick_workspace, retrain_through_stages

LINKS = models_view.Links(base="/models-view", airflow="")
BAD_ROWS = 3


@pytest.fixture(scope="module")
def seeded(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """v1 champion; v2 (a heavily shrunk ridge) trained on more rows and kept out; one scoring run. Built once for
    the module: every test here only reads it (and the access log, which each test reads by its own requests)."""
    with shared_workspace(server_url, tmp_path_factory.mktemp("operator-pages")) as ws:
        yield _seed(quick_workspace(ws))


def _seed(quick: Workspace) -> Workspace:
    promote_demo_champion(quick)
    demo.simulate_arrivals(quick.engine, rows=40, seed=7)
    weak = dataclasses.replace(quick.config.training, families={"ridge": {"alpha": 800.0}})
    kept = retrain_through_stages(dataclasses.replace(quick, config=dataclasses.replace(quick.config, training=weak)),
                                  make_run("second"))
    assert (kept["candidate"]["version"], kept["outcome"]["status"]) == (2, "kept")
    demo.simulate_arrivals(quick.engine, rows=20, seed=3, labelled=False, bad_rows=BAD_ROWS)
    scoring.score_batch(quick, "score-1")
    return quick


def _links(page: str) -> set[str]:
    return set(re.findall(r"href='([^']+)'", page))


@pytest.mark.timeout(600)
def test_both_versions_are_scored_on_the_same_rows_neither_trained_on(seeded: Workspace) -> None:
    data = compare.compare_versions(seeded, 1, 2)

    rows = data["rows"]
    assert rows["of_version"] == 2 and rows["compared"] == rows["holdout"] - rows["excluded_a"] - rows["excluded_b"]
    assert rows["compared"] >= 2 and rows["excluded_b"] == 0  # v2's own holdout: v2 trained on none of it
    assert data["metrics_a"]["n"] == data["metrics_b"]["n"] == rows["compared"]
    change = data["change"]
    assert change["low"] <= change["mean"] <= change["high"]
    # one convention: B − A; the heavily shrunk v2 is worse on the same rows, so the change is positive
    assert data["metrics_b"]["rmse"] > data["metrics_a"]["rmse"] and change["mean"] > 0
    page = operator.compare_html(LINKS, seeded.model, [2, 1], 1, 2, data)
    assert page.count("interval of the RMSE change B − A (candidate − champion; negative: B is better)") == 1
    assert f"[{change['low']:+.3f}, {change['high']:+.3f}]" in page
    assert "<b>" + str(rows["compared"]) + " rows</b>" in page
    params = page.split("id='params'")[1].split("</section>")[0]
    assert "800.0" in params and "differs" in params  # the alpha that differs
    cv = page.split("id='cv'")[1].split("</section>")[0]
    assert "ridge" in cv
    assert "/models-view/diabetes_progression/versions/2/card" in _links(page)


def test_the_action_forms_are_prefilled_and_trigger_only_from_their_button(seeded: Workspace) -> None:
    for key, version, dag_id, conf in (
            ("make_champion", 2, "set_champion", '"mode": "promote", "to_version": 2'),
            ("roll_back", 1, "set_champion", '"mode": "rollback", "to_version": 1'),
            ("add_shadow", 2, "set_shadow", '"action": "add", "version": 2'),
            ("retrain", None, "retrain", "{}"),
            ("score", None, "score_patients", "{}")):
        act = operator.action(key, version)
        assert act.dag == dag_id
        page = operator.action_html(LINKS, seeded.model, act.dag, act, 1)
        assert conf in page.split("data-conf>")[1], key
        assert f"data-api='/api/v2/dags/{dag_id}/dagRuns'" in page and f"data-runs='/dags/{dag_id}/runs/'" in page
        assert "<form class='trigger'" in page and "method='post'" not in page  # only the button's script posts
    with pytest.raises(LookupError, match="needs a version"):
        operator.action("make_champion", None)
    with pytest.raises(LookupError, match="the actions are"):
        operator.action("delete_everything", 1)


def test_the_model_page_offers_each_versions_actions_and_lists_by_query(seeded: Workspace) -> None:
    entry = ModelEntry(seeded.model, Path("pipeline.yaml"), True)
    with seeded.engine.connect() as conn:
        overview = models_view.model_overview(conn, seeded.model)
    page = models_view.model_html(LINKS, entry, overview)
    links = _links(page)
    assert "/models-view/diabetes_progression/actions/make_champion?version=2" in links
    assert "/models-view/diabetes_progression/actions/add_shadow?version=2" in links
    assert "/models-view/diabetes_progression/actions/retrain" in links
    assert "/models-view/diabetes_progression/actions/score" in links
    assert "/models-view/diabetes_progression/compare?a=1&amp;b=2" in page
    assert "interval of the gain" not in page  # the recorded reason, in the view's one convention
    trend = page.split("id='trend'")[1].split("</section>")[0]  # each decision on its own rows, both scored
    assert "candidate, v2 (keep)" in trend and "champion (same rows), v2 (keep)" in trend
    assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>", page)  # to the second, UTC as the page says
    only_v2 = models_view.model_html(LINKS, entry, overview, {"vq": "v2"})
    versions = only_v2.split("id='versions'")[1].split("</section>")[0]
    assert ">v2<" in versions and ">v1<" not in versions and "1 found" in versions
    oldest_first = models_view.model_html(LINKS, entry, overview, {"vsort": "version"})
    table = oldest_first.split("id='versions'")[1]
    assert table.index(">v1<") < table.index(">v2<")
    paged = models_view.model_html(LINKS, entry, overview, {"vsort": "version", "vpage": "2"})
    assert "page 1 of 1" in paged.split("id='versions'")[1].split("</section>")[0]


def test_the_forecasts_page_pages_searches_and_logs_each_read(seeded: Workspace) -> None:
    scored = fetch(seeded, "SELECT source_id FROM pipeline.latest_forecasts ORDER BY source_id")
    wanted = [scored[0]["source_id"], scored[-1]["source_id"]]

    browsed = operator.read_forecasts(seeded.engine, seeded.model, operator.ForecastQuery(page=1), "airflow:admin",
                                      "GET /models-view/m/forecasts")
    searched = operator.read_forecasts(seeded.engine, seeded.model,
                                       operator.ForecastQuery(ids=operator.parse_ids(", ".join(wanted))),
                                       "airflow:admin", "POST /models-view/m/forecasts")
    refused = operator.read_forecasts(seeded.engine, seeded.model, operator.ForecastQuery(refused_run="score-1"),
                                      "airflow:admin", "GET /models-view/m/forecasts?refused=score-1", seeded.keyring)

    assert browsed["total"] == len(scored) and len(browsed["forecasts"]) == min(len(scored), 50)
    assert sorted(f["source_id"] for f in searched["forecasts"]) == sorted(wanted)
    assert len(refused["refused"]) == BAD_ROWS
    assert all("value" in r for f in refused["refused"] for r in f["reasons"])  # sealed at rest, opened to be shown
    [run] = browsed["runs"]
    assert (run["run_id"], run["rows_refused"]) == ("score-1", BAD_ROWS)
    page = operator.forecasts_html(LINKS, seeded.model, "score_patients", operator.ForecastQuery(refused_run="score-1"),
                                   refused)
    assert "/dags/score_patients/runs/score-1" in _links(page)
    assert "/models-view/diabetes_progression/forecasts?refused=score-1" in _links(page)
    for reason, n in run["reason_counts"].items():
        assert f"{reason} {n}" in page
    first = searched["forecasts"][0]
    shown = operator.forecasts_html(LINKS, seeded.model, "score_patients", operator.ForecastQuery(ids=tuple(wanted)),
                                    searched)
    assert f"<td>{first['lower']:.3f}</td><td>{first['upper']:.3f}</td>" in shown
    with seeded.engine.connect() as conn:
        log = [e for e in reversed(accesslog.recent(conn)) if "/models-view/m/forecasts" in str(e["request"])]
    assert [(e["principal"], e["channel"], e["what"], e["rows"]) for e in log] == [
        ("airflow:admin", "view", "forecasts page 1", len(browsed["forecasts"])),
        ("airflow:admin", "view", "forecasts searched by 2 id(s)", 2),
        ("airflow:admin", "view", "forecasts page 1 refused run_id=score-1", len(refused["forecasts"]) + BAD_ROWS)]
    assert not any(i in str(e) for e in log for i in wanted)  # no patient id in the access log


def test_metrics_over_time_plot_each_decision_on_its_own_rows(seeded: Workspace) -> None:
    with seeded.engine.connect() as conn:
        decided = operator.decisions(conn, seeded.model)
        monthly = operator.monthly_live_rmse(conn, seeded.model)
    assert [d["candidate_version"] for d in decided] == [1, 2]
    assert decided[1]["champion_version"] == 1 and decided[1]["champion_rmse"] is not None
    page = operator.metrics_html(LINKS, seeded.model, monthly, decided)
    assert "class='x-title'" in page and "promotion decision (date, candidate)" in page
    assert "holdout RMSE on the decision&#x27;s rows" in page or "holdout RMSE on the decision's rows" in page
    assert f"{decided[1]['candidate_rmse'] - decided[1]['champion_rmse']:+.3f}" in page


def test_live_rmse_per_month_per_version_from_the_reports() -> None:
    monthly = [{"version": 1, "source": "served", "month": "2026-10", "rmse": 50.0, "rows": 30},
               {"version": 1, "source": "served", "month": "2026-11", "rmse": 54.0, "rows": 30},
               {"version": 2, "source": "shadow", "month": "2026-11", "rmse": 57.0, "rows": 30}]
    page = operator.metrics_html(LINKS, "m", monthly, [])
    live = page.split("id='live'")[1].split("</section>")[0]
    assert "month of the outcome (UTC)" in live and "live RMSE on real outcomes" in live
    assert live.count("<polyline") == 2 and "v2 (shadow)" in live and "v1, 2026-11: 54.000" in live


