"""Model cards and champion/challenger pages for versions made by a real retrain on PostgreSQL.

Retrains run through the stage functions with only the ridge family configured (as in
test_monitoring): the pages do not depend on which family won, and cross-validating the
shipped three would take seconds per retrain.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any

import pytest

from pipeline.data import demo
from pipeline.model import cards
from pipeline.workspace import Workspace
from tests.integration.stage_runs import (
    fetch,
    make_run,
    promote_demo_champion,
    quick_workspace,
    retrain_through_stages,
    stored_text,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE = re.compile(r"<img alt='[^']*' src='data:image/png;base64,([^']*)'>")




def png_images(document: str) -> list[bytes]:
    found = [base64.b64decode(data, validate=True) for data in IMAGE.findall(document)]
    assert document.count("<img ") == len(found)
    assert all(png.startswith(PNG_SIGNATURE) for png in found)
    return found


def section(document: str, anchor: str) -> str:
    match = re.search(rf"<section id='{anchor}'>(.*?)</section>", document, re.S)
    assert match, f"no section '{anchor}'"
    return match.group(1)


def evaluation_row(ws: Workspace, run_id: str) -> dict[str, Any]:
    [row] = fetch(ws, "SELECT * FROM pipeline.evaluations WHERE run_id = :r", r=run_id)
    return row


def assert_every_slice_group_listed(document: str, evidence: dict[str, Any]) -> None:
    slices = section(document, "slices")
    assert evidence["slices"]
    for row in evidence["slices"]:
        assert f"<td>{html.escape(row['slice'])}</td><td>{html.escape(row['group'])}</td><td>{row['n']}</td>" in slices



@pytest.fixture
def first(quick_ws: Workspace) -> dict[str, Any]:
    """The demo study loaded and retrained up to DEMO_WATERMARK: version 1 is the champion."""
    return promote_demo_champion(quick_ws)


def test_model_card_of_the_first_version(quick_ws: Workspace, first: dict[str, Any]) -> None:
    path = cards.render_model_card(quick_ws, 1)

    assert path.parent == quick_ws.settings.artifact_dir / "cards" and path.suffix == ".html"
    document = stored_text(quick_ws, path)
    [model] = fetch(quick_ws, "SELECT * FROM pipeline.model_versions WHERE version = 1")
    lineage = section(document, "lineage")
    assert f"<td>{first['clean_snapshot_hash']} (clean)</td>" in lineage
    assert f"<tr><td>raw parent snapshot</td><td>{first['snapshot']['snapshot_hash']}</td></tr>" in lineage
    assert f"<tr><td>code version</td><td>{model['code_version']}</td></tr>" in lineage
    assert "<tr><td>model family</td><td>ridge</td></tr>" in lineage
    assert f"<tr><td>holdout rows</td><td>{model['holdout_rows']}</td></tr>" in lineage
    assert f"scikit-learn {model['library_versions']['scikit-learn']}" in lineage
    assert len(png_images(document)) == 4
    # The card scores the model itself; its RMSE must match the evaluation's, on the same holdout.
    metrics = first["evaluation"]["candidate_metrics"]
    assert f"<tr><td>RMSE</td><td>{metrics['rmse']:.3f}</td>" in section(document, "metrics")
    assert "<td>sex_F</td>" in section(document, "importance")  # Ridge: coefficients by prepared feature
    behaviour = section(document, "behaviour")
    assert "<tr><td>all checks passed</td><td>yes</td></tr>" in behaviour
    max_drop = quick_ws.config.promotion.max_drop
    for feature, step in quick_ws.config.promotion.directions.items():
        assert f"<tr><td>{feature}</td><td>up: must not lower the prediction</td><td>+{step:g}</td>" in behaviour
    assert f"<td>change ≥ {-max_drop:g}</td><td>pass</td>" in behaviour
    slices = section(document, "slices")
    assert "There was no champion when this version was evaluated (first model)." in slices
    assert "<th>champion RMSE</th>" not in slices
    assert html.escape(first["evaluation"]["reason"]) in section(document, "decision")
    rows = fetch(quick_ws, "SELECT version, kind, run_id, path FROM pipeline.model_cards WHERE kind = 'card'")
    assert rows == [{"version": 1, "kind": "card", "run_id": "first", "path": str(path)}]
    assert first["evaluation"]["card"] == str(path)  # the evaluate stage wrote the same page


def test_rendering_a_card_again_gives_the_same_file_and_row(quick_ws: Workspace,
                                                              first: dict[str, Any]) -> None:
    path = cards.render_model_card(quick_ws, 1)

    assert cards.render_model_card(quick_ws, 1) == path
    assert fetch(quick_ws, "SELECT count(*) AS n FROM pipeline.model_cards WHERE kind = 'card'") == [{"n": 1}]


def test_unknown_version_names_it(quick_ws: Workspace) -> None:
    with pytest.raises(LookupError, match="model version 7 is not registered"):
        cards.render_model_card(quick_ws, 7)


def test_comparisons_without_and_with_a_champion(quick_ws: Workspace, first: dict[str, Any]) -> None:
    first_page = stored_text(quick_ws, cards.render_comparison(quick_ws, "first"))
    demo.simulate_arrivals(quick_ws.engine, rows=30, seed=7)
    retrain_through_stages(quick_ws, make_run("second"))

    path = cards.render_comparison(quick_ws, "second")

    initial = evaluation_row(quick_ws, "first")
    assert html.escape(initial["reason"]) in section(first_page, "decision")
    assert "no champion (first model)" in first_page and "No bootstrap" in section(first_page, "bootstrap")
    assert len(png_images(first_page)) == 1
    assert_every_slice_group_listed(first_page, initial["evidence"])

    document = stored_text(quick_ws, path)
    second = evaluation_row(quick_ws, "second")
    assert second["champion_version"] == 1
    assert "candidate version 2 vs champion version 1" in document
    assert "interval of the gain" in second["reason"]  # evaluate words it as a gain; the page as a change
    assert html.escape(cards.reason_as_change(second["reason"]) or "") in section(document, "decision")
    assert "interval of the gain" not in document
    boot = second["evidence"]["bootstrap"]
    # one sign convention, stated once at the top: change = candidate − champion
    assert document.count("Every change on this page is candidate − champion.") == 1
    assert document.index("Every change on this page") < document.index("<section")
    assert f"[{-boot['high']:+.3f}, {-boot['low']:+.3f}], mean {-boot['mean']:+.3f}" in section(document, "bootstrap")
    change = second["candidate_metrics"]["rmse"] - second["champion_metrics"]["rmse"]
    assert (f"<tr><td>RMSE</td><td>{second['candidate_metrics']['rmse']:.3f}</td>"
            f"<td>{second['champion_metrics']['rmse']:.3f}</td><td>{change:+.3f}</td></tr>") in section(document, "metrics")
    assert f"<td>{second['champion_metrics']['rmse']:.3f}</td>" in section(document, "metrics")
    assert len(png_images(document)) == 2
    assert_every_slice_group_listed(document, second["evidence"])
    tolerance = second["policy"]["slice_tolerance"]
    over = sum(r["change"] > tolerance for r in second["evidence"]["slices"])
    assert section(document, "slices").count("<tr class='worse") == over
    rows = fetch(quick_ws, "SELECT version, kind, run_id, path FROM pipeline.model_cards "
                           "WHERE kind = 'comparison' ORDER BY version")
    assert [(r["version"], r["kind"], r["run_id"]) for r in rows] == [(1, "comparison", "first"),
                                                                      (2, "comparison", "second")]
    assert rows[1]["path"] == str(path) and stored_text(quick_ws, rows[0]["path"]) == first_page

    # the card of version 2 shows the champion's slice columns, and the tolerance the decision used
    card = section(stored_text(quick_ws, cards.render_model_card(quick_ws, 2)), "slices")
    assert f"more than {tolerance:.0%} above champion RMSE (promotion.slice_tolerance = {tolerance:g})" in card
    assert "<th>champion RMSE</th><th>change</th>" in card
    for row in second["evidence"]["slices"]:
        assert (f"<td>{row['candidate_rmse']:.3f}</td><td>{row['champion_rmse']:.3f}</td>"
                f"<td>{row['change']:+.1%}</td>") in card
    ages = re.findall(r"<td>age</td><td>([^<]*)</td>", card)
    assert len(ages) >= 2 and ages == [g for g in ("&lt;40", "40-60", "&gt;=60") if g in ages]  # band order


@pytest.fixture
def quick_ws(ws: Workspace) -> Workspace:
    return quick_workspace(ws)


