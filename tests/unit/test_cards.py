"""The model card and champion/challenger pages, built from plain values: sections, plots, escaping."""

from __future__ import annotations

import base64
import dataclasses
import html
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.contract.config import DatasetContract, PipelineConfig
from pipeline.model import cards, train
from pipeline.model.features import model_inputs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE = re.compile(r"<img alt='([^']*)' src='data:image/png;base64,([^']*)'>")
SCRIPT = "<script>alert(1)</script>"
ESCAPED_SCRIPT = html.escape(SCRIPT)


def images(document: str) -> list[tuple[str, bytes]]:
    """(alt text, decoded bytes) of every inline image; fails unless every one is a PNG."""
    found = [(alt, base64.b64decode(data, validate=True)) for alt, data in IMAGE.findall(document)]
    assert document.count("<img ") == len(found), "an <img> that is not an inline base64 PNG"
    assert all(png.startswith(PNG_SIGNATURE) for _, png in found)
    return found


def section(document: str, anchor: str) -> str:
    match = re.search(rf"<section id='{anchor}'>(.*?)</section>", document, re.S)
    assert match, f"no section '{anchor}'"
    return match.group(1)


def slice_rows(with_champion: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"slice": "sex", "group": "F", "n": 40, "judged": True, "candidate_rmse": 50.0},
        {"slice": "age", "group": "<40", "n": 30, "judged": True, "candidate_rmse": 66.0},
        {"slice": "bmi", "group": ">=30", "n": 5, "judged": False, "candidate_rmse": 70.0},
    ]
    if with_champion:
        for row, champion in zip(rows, (52.0, 55.0, 50.0), strict=True):
            row.update(champion_rmse=champion, change=row["candidate_rmse"] / champion - 1.0)
    return rows


BEHAVIOUR = {"finite": True, "in_range": True, "prediction_min": 40.0, "prediction_max": 300.0,
             "id_invariant": True, "directions": {"bmi": {"step": 10.0, "worst_change": 1.25}},
             "max_drop": 5.0, "prediction_range": [0, 500], "failures": [], "passed": True}


@pytest.fixture
def card() -> cards.CardContent:
    rng = np.random.default_rng(0)
    observed = rng.normal(150, 50, 60)
    predicted = observed + rng.normal(0, 20, 60)
    return cards.CardContent(
        title="Model card: version 3 (ridge)",
        lineage=[("version", "3"), ("run", "run-3"), ("model family", "ridge"), ("code version", "abc123-dirty")],
        metrics={"rmse": 20.125, "mae": 16.5, "r2": 0.8125, "n": 60},
        baseline={"rmse": 49.75, "mae": 40.0, "r2": -0.001, "n": 60, "train_mean": 151.5},
        observed=observed, predicted=predicted, slices=slice_rows(with_champion=False),
        importance=cards.Importance("Ridge coefficient", {"bmi": 24.0, SCRIPT: -3.0, "glucose": 3.5}),
        behaviour=BEHAVIOUR,
        evaluation={"run_id": "run-3", "decision": "keep", "candidate_version": 3, "champion_version": 2,
                    "reason": f"does not beat the champion: RMSE 20.1 < 19.0 is false {SCRIPT}"},
        slice_tolerance=0.1, min_slice_rows=10)


def comparison(with_champion: bool = True) -> dict[str, Any]:
    evidence: dict[str, Any] = {
        "holdout_rows": 75, "candidate": {"rmse": 55.0, "mae": 44.0, "r2": 0.45, "n": 75},
        "champion": {"rmse": 56.5, "mae": 45.0, "r2": 0.42, "n": 75} if with_champion else None,
        "champion_error": None, "baseline": {"train_mean": 152.0, "rmse": 75.25},
        "bootstrap": {"mean": 1.5, "low": -0.75, "high": 3.875, "confidence": 0.95, "samples": 2000}
        if with_champion else None,
        "slices": slice_rows(with_champion), "behaviour": BEHAVIOUR}
    return {"run_id": "second", "candidate_version": 2, "champion_version": 1 if with_champion else None,
            "candidate_metrics": evidence["candidate"], "champion_metrics": evidence["champion"],
            "decision": "keep", "reason": "does not beat the champion (the gain is not significant) <b>",
            "policy": {"slice_tolerance": 0.1}, "evidence": evidence}


def test_model_card_has_every_section(card: cards.CardContent) -> None:
    document = cards.model_card_html(card)

    assert document.startswith("<!doctype html>") and document.endswith("</html>")
    for anchor in ("lineage", "metrics", "fit", "slices", "importance", "behaviour", "decision"):
        section(document, anchor)
    assert "<tr><td>code version</td><td>abc123-dirty</td></tr>" in section(document, "lineage")
    metrics = section(document, "metrics")
    assert "<tr><td>RMSE</td><td>20.125</td><td>49.750</td></tr>" in metrics
    assert "<tr><td>R²</td><td>0.812</td><td>-0.001</td></tr>" in metrics
    assert "the training mean (151.500)" in metrics
    slices = section(document, "slices")
    assert "<td>&lt;40</td>" in slices and "<td>66.000</td>" in slices
    assert "<tr><td>bmi</td><td>up: must not lower the prediction</td><td>+10</td><td>1.250</td>" in section(
        document, "behaviour")
    assert "<td>keep</td>" in section(document, "decision")


def test_model_card_has_four_inline_png_plots(card: cards.CardContent) -> None:
    found = images(cards.model_card_html(card))

    assert [alt for alt, _ in found] == [
        "Predicted vs observed, with y = x", "Residuals: histogram and against prediction",
        "Holdout RMSE per slice group", "Feature importance by feature"]
    assert len({png for _, png in found}) == 4


def test_model_card_escapes_feature_names_and_reasons(card: cards.CardContent) -> None:
    document = cards.model_card_html(card)

    assert SCRIPT not in document
    assert f"<td>{ESCAPED_SCRIPT}</td><td>-3.000</td>" in section(document, "importance")
    assert "RMSE 20.1 &lt; 19.0 is false " + ESCAPED_SCRIPT in section(document, "decision")


def test_importance_table_is_ordered_by_magnitude(card: cards.CardContent) -> None:
    importance = section(cards.model_card_html(card), "importance")

    assert importance.index("<td>bmi</td>") < importance.index("<td>glucose</td>") < importance.index(ESCAPED_SCRIPT)


def test_model_card_without_an_evaluation_says_so(card: cards.CardContent) -> None:
    document = cards.model_card_html(dataclasses.replace(card, evaluation=None))

    assert "No evaluation is recorded for run run-3." in section(document, "decision")


def test_comparison_with_a_champion(card: cards.CardContent) -> None:
    document = cards.comparison_html(comparison(), slice_tolerance=0.1)

    assert "candidate version 2 vs champion version 1" in document
    assert "(the gain is not significant) &lt;b&gt;" in section(document, "decision") and "<b>" not in document
    metrics = section(document, "metrics")
    assert "<tr><td>RMSE</td><td>55.000</td><td>56.500</td><td>-1.500</td></tr>" in metrics
    assert "RMSE 75.250" in metrics
    assert "[-3.875, +0.750], mean -1.500 over 2000 resamples" in section(document, "bootstrap")
    assert [alt for alt, _ in images(document)] == [
        "Bootstrap interval of the RMSE change, with the zero mark", "Candidate vs champion RMSE per slice group"]


def test_comparison_names_the_resampling_method_and_its_monte_carlo_band() -> None:
    old = section(cards.comparison_html(comparison(), slice_tolerance=0.1), "bootstrap")
    assert "Resampled by: exact bootstrap, 2000 resamples." in old  # a record from before the method was recorded
    evaluation = comparison()
    evaluation["evidence"]["bootstrap"] |= {
        "method": "poisson-sequential", "samples": 400, "max_samples": 2000, "mc_z": 3.29, "settled": True,
        "share_not_better": 0.0, "low_band": [-1.0, -0.5], "high_band": [3.5, 4.25]}
    words = section(cards.comparison_html(evaluation, slice_tolerance=0.1), "bootstrap")
    assert "[-3.875, +0.750], mean -1.500 over 400 resamples" in words
    assert ("Resampled by: poisson-sequential bootstrap, 400 resamples: the decision settled outside the 99.9% "
            "Monte-Carlo band (the resamples place the change&#x27;s low end in [-4.250, -3.500] and its high end "
            "in [+0.500, +1.000]; the share of resamples where the candidate is not better: 0.0%).") in words


def test_comparison_highlights_slices_over_the_tolerance() -> None:
    slices = section(cards.comparison_html(comparison(), slice_tolerance=0.1), "slices")
    rows = re.findall(r"<tr( class='[^']*')?><td>(\w+)</td><td>([^<]*)</td>", slices)

    # F: -3.8 %, within; <40: +20 % and judged; >=30: +40 % but too few rows to count.
    assert rows == [("", "sex", "F"), (" class='worse'", "age", "&lt;40"), (" class='worse-unjudged'", "bmi", "&gt;=30")]
    assert "<td>+20.0%</td>" in slices and "<td>-3.8%</td>" in slices
    assert "more than 10% above champion RMSE (promotion.slice_tolerance = 0.1)" in slices
    assert "fewer than 10 rows (promotion.min_slice_rows)" not in slices  # not given to this page


def test_a_wider_tolerance_highlights_nothing() -> None:
    slices = section(cards.comparison_html(comparison(), slice_tolerance=0.5), "slices")

    assert "class='worse" not in slices


def test_comparison_of_a_first_model() -> None:
    document = cards.comparison_html(comparison(with_champion=False), slice_tolerance=0.1)

    assert "candidate version 2 vs no champion (first model)" in document
    assert "No bootstrap" in section(document, "bootstrap")
    assert "<tr><td>RMSE</td><td>55.000</td><td>—</td><td>—</td></tr>" in section(document, "metrics")
    assert "<th>champion RMSE</th>" not in section(document, "slices")  # no empty columns
    assert "No champion to compare with" in section(document, "slices")
    assert "class='worse" not in document
    assert [alt for alt, _ in images(document)] == ["Candidate vs champion RMSE per slice group"]


def test_comparison_of_an_evaluation_that_errored() -> None:
    evaluation = {"run_id": "broken", "candidate_version": 4, "champion_version": 1, "candidate_metrics": {},
                  "champion_metrics": None, "decision": "keep", "reason": "fail closed: evaluation error: boom",
                  "evidence": {"holdout_rows": 0, "candidate": None, "champion": None, "error": "OSError('<gone>')"}}

    document = cards.comparison_html(evaluation, slice_tolerance=0.1)

    assert "fail closed: evaluation error: boom" in section(document, "decision")
    assert "OSError(&#x27;&lt;gone&gt;&#x27;)" in section(document, "metrics")
    assert "No slice results recorded." in document and "did not run" in section(document, "behaviour")
    assert images(document) == []


@pytest.fixture(scope="module")
def fitted(contract: DatasetContract, demo_frame: pd.DataFrame, config: PipelineConfig) -> dict[str, Any]:
    train_rows, holdout = train.split_holdout(demo_frame, contract, 0.2)
    small = dataclasses.replace(config.training, families={"ridge": {"alpha": 1.0},
                                                           "random_forest": {"n_estimators": 10}})
    models = {family: train.build_model(contract, family, small) for family in small.families}
    for model in models.values():
        model.fit(model_inputs(train_rows, contract), train_rows[contract.target_column].to_numpy())
    return {"holdout": holdout, **models}


def test_ridge_importance_is_its_coefficients_by_prepared_feature(fitted: dict[str, Any],
                                                                  contract: DatasetContract) -> None:
    importance = cards.feature_importance(fitted["ridge"], fitted["holdout"], contract, seed=42)

    assert importance.kind.startswith("Ridge coefficient")
    assert list(importance.values) == ["age_years", "bmi", "bp_mean", "tc", "ldl", "hdl", "tch", "ltg",
                                       "glucose", "sex_F", "sex_M"]
    assert list(importance.values.values()) == pytest.approx(fitted["ridge"][-1].coef_)


def test_other_models_get_seeded_permutation_importance(fitted: dict[str, Any], contract: DatasetContract) -> None:
    first = cards.feature_importance(fitted["random_forest"], fitted["holdout"], contract, seed=42)
    again = cards.feature_importance(fitted["random_forest"], fitted["holdout"], contract, seed=42)

    assert first.kind.startswith("Permutation importance") and "5 repeats" in first.kind
    assert list(first.values) == contract.feature_names()
    assert first.values == again.values
    assert max(first.values, key=first.values.__getitem__) in {"bmi", "ltg"}  # the study's strongest predictors


def test_scatter_plots_draw_every_row_of_a_small_holdout() -> None:
    assert list(cards.scatter_rows(5, limit=10)) == [0, 1, 2, 3, 4]
    assert cards.scatter_note(cards.SCATTER_POINTS) == ""


def test_scatter_plots_draw_a_fixed_sample_of_a_large_holdout_and_say_so() -> None:
    drawn = cards.scatter_rows(1_000, limit=100)

    assert len(drawn) == 100 and len(set(drawn)) == 100
    assert list(drawn) == sorted(drawn) and 0 <= drawn[0] and drawn[-1] < 1_000
    assert list(cards.scatter_rows(1_000, limit=100)) == list(drawn)
    rows = cards.SCATTER_POINTS + 1
    assert cards.scatter_note(rows) == f" ({cards.SCATTER_POINTS:,} of {rows:,} rows)"


# --- report fixes (issue 14): tolerance, champion columns, behaviour limits, order, signs, plot size ---


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def compared_evaluation() -> dict[str, Any]:
    """The evaluation of run-3 as recorded: version 3 against champion version 2, with the decision's slices."""
    return {"run_id": "run-3", "decision": "keep", "candidate_version": 3, "champion_version": 2,
            "reason": "does not beat the champion", "policy": {"slice_tolerance": 0.1, "min_slice_rows": 10},
            "evidence": {"holdout_rows": 60, "slices": slice_rows(with_champion=True)}}


def test_card_states_the_configured_slice_tolerance(card: cards.CardContent) -> None:
    slices, source = cards.card_slices(card.slices, compared_evaluation())
    document = cards.model_card_html(dataclasses.replace(card, slices=slices, slice_source=source))

    text = section(document, "slices")
    assert "no slice tolerance" not in document
    assert "more than 10% above champion RMSE (promotion.slice_tolerance = 0.1)" in text
    assert "Groups with fewer than 10 rows (promotion.min_slice_rows) are shown, not judged." in text


def test_card_without_a_tolerance_says_promotion_fails_closed(card: cards.CardContent) -> None:
    slices, _ = cards.card_slices(card.slices, compared_evaluation())
    document = cards.model_card_html(dataclasses.replace(card, slices=slices, slice_tolerance=None))

    assert "No slice tolerance is configured (promotion.slice_tolerance)" in section(document, "slices")
    assert "the no slice tolerance" not in document


def test_card_fills_the_champion_columns_when_there_was_a_champion(card: cards.CardContent) -> None:
    slices, source = cards.card_slices(card.slices, compared_evaluation())
    document = cards.model_card_html(dataclasses.replace(card, slices=slices, slice_source=source))

    text = section(document, "slices")
    assert "champion version 2 scored on the same 60 holdout rows" in text
    assert "<th>champion RMSE</th><th>change</th>" in text
    # <40: candidate 66 against champion 55, +20 % and judged: over the 10 % tolerance
    assert ("<tr class='worse'><td>age</td><td>&lt;40</td><td>30</td><td>yes</td><td>66.000</td>"
            "<td>55.000</td><td>+20.0%</td></tr>") in text
    assert "<td>F</td><td>40</td><td>yes</td><td>50.000</td><td>52.000</td><td>-3.8%</td>" in text


def test_card_of_a_first_model_has_no_champion_columns(card: cards.CardContent) -> None:
    first = {**compared_evaluation(), "champion_version": None,
             "evidence": {"holdout_rows": 60, "slices": slice_rows(with_champion=False)}}
    slices, source = cards.card_slices(card.slices, first)
    text = section(cards.model_card_html(dataclasses.replace(card, slices=slices, slice_source=source)), "slices")

    assert slices is card.slices and "no champion when this version was evaluated (first model)" in text
    assert "<th>champion RMSE</th>" not in text and "No champion to compare with" in text


def test_behaviour_checks_show_direction_increase_limit_and_sign() -> None:
    failing = {**BEHAVIOUR, "directions": {"bmi": {"step": 10.0, "worst_change": 1.25},
                                           "glucose": {"step": 50.0, "worst_change": -7.5}},
               "failures": ["raising glucose by 50 lowers a prediction by 7.5 (limit 5)"], "passed": False}

    text = cards.behaviour_html(failing)

    assert "predictions within the allowed range [0, 500]" in text
    assert "<th>feature</th><th>direction</th><th>increase applied</th><th>worst change (new − old)</th>" in text
    assert ("<tr><td>bmi</td><td>up: must not lower the prediction</td><td>+10</td><td>1.250</td>"
            "<td>change ≥ -5</td><td>pass</td></tr>") in text
    assert ("<tr><td>glucose</td><td>up: must not lower the prediction</td><td>+50</td><td>-7.500</td>"
            "<td>change ≥ -5</td><td>FAIL</td></tr>") in text
    assert "A positive change means the prediction rose, a negative one that it fell." in text
    assert "(promotion.behaviour.max_drop = 5)" in text


def test_behaviour_limit_comes_from_the_policy_when_the_record_lacks_it() -> None:
    recorded = {k: v for k, v in BEHAVIOUR.items() if k != "max_drop"}

    assert "<td>change ≥ -3</td><td>pass</td>" in cards.behaviour_html(recorded, max_drop=3.0)
    assert "not configured: promotion fails closed" in cards.behaviour_html(recorded)


def test_slices_are_in_band_and_natural_order() -> None:
    rows = [{"slice": "age", "group": g, "n": 20, "judged": True, "candidate_rmse": 50.0}
            for g in (">=60", "(missing)", "40-60", "<40")]
    rows += [{"slice": "visits", "group": g, "n": 20, "judged": True, "candidate_rmse": 50.0}
             for g in ("10", "9", "100")]
    rows += [{"slice": "sex", "group": g, "n": 20, "judged": True, "candidate_rmse": 50.0} for g in ("M", "F")]

    groups = re.findall(r"<tr><td>(\w+)</td><td>([^<]*)</td>", cards.slice_rows_html(rows, 0.1))

    assert groups == [("age", "&lt;40"), ("age", "40-60"), ("age", "&gt;=60"), ("age", "(missing)"),
                      ("visits", "9"), ("visits", "10"), ("visits", "100"), ("sex", "F"), ("sex", "M")]


def test_comparison_page_uses_one_sign_convention() -> None:
    document = cards.comparison_html(comparison(), slice_tolerance=0.1)

    convention = re.search(r"<p class='convention' id='convention'>([^<]*)</p>", document)
    assert convention and document.index(convention.group(0)) < document.index("<section")
    assert "Every change on this page is candidate − champion." in convention.group(1)
    assert document.count("Every change on this page") == 1
    assert "RMSE(champion)" not in document and "champion − candidate" not in document
    evidence = comparison()["evidence"]
    # metrics: candidate − champion; the candidate's lower RMSE gives a negative change
    change = evidence["candidate"]["rmse"] - evidence["champion"]["rmse"]
    assert f"<td>{change:+.3f}</td>" in section(document, "metrics") and change < 0
    # bootstrap of RMSE(champion) − RMSE(candidate) [−0.75, 3.875], mean 1.5: shown as candidate − champion
    assert "RMSE change (candidate − champion): [-3.875, +0.750], mean -1.500" in section(document, "bootstrap")
    # slices: candidate worse than champion gives a positive change
    assert "<td>66.000</td><td>55.000</td><td>+20.0%</td>" in section(document, "slices")
    figure = cards.plot_bootstrap(evidence["bootstrap"])
    assert figure.axes[0].get_xlabel().startswith("RMSE change, candidate − champion")
    line = figure.axes[0].collections[0].get_segments()[0]
    assert [point[0] for point in line] == [-3.875, 0.75]


def test_every_plot_is_large_and_labels_its_axes(card: cards.CardContent) -> None:
    figures = [cards.plot_predicted_vs_observed(card.observed, card.predicted),
               cards.plot_residuals(card.observed, card.predicted),
               cards.plot_slice_rmse(slice_rows(with_champion=True)), cards.plot_importance(card.importance),
               cards.plot_bootstrap(comparison()["evidence"]["bootstrap"])]

    assert all(figure.axes for figure in figures)  # each figure has axes to check
    for figure in figures:
        for axes in figure.axes:
            assert axes.get_xlabel() and axes.get_ylabel(), axes.get_title()
        width, height = png_size(base64.b64decode(cards.png(figure)))
        assert width >= 700 and height >= 280, (figure.axes[0].get_title(), width, height)
    for _, data in images(cards.model_card_html(card)):
        assert png_size(data)[0] >= 700


def test_slice_table_lists_bands_in_order(demo_frame: pd.DataFrame, contract: DatasetContract,
                                          config: PipelineConfig) -> None:
    from pipeline.model import evaluate

    frame = demo_frame.copy()
    predicted = frame[contract.target_column].to_numpy(float)
    rows = evaluate.slice_table(frame, contract, config.promotion, predicted, None)

    groups = {name: [r["group"] for r in rows if r["slice"] == name] for name in ("sex", "age", "bmi")}
    assert groups == {"sex": ["F", "M"], "age": ["<40", "40-60", ">=60"], "bmi": ["<25", "25-30", ">=30"]}


def test_a_recorded_reason_is_shown_in_the_page_convention() -> None:
    reason = ("does not beat the champion (the gain is not significant): candidate RMSE 55.000 vs champion 56.500 "
              "(needs < 55.935, margin 1.0%); 95% interval of the gain [-0.750, +3.875]")
    evaluation = {**comparison(), "reason": reason}

    decision = section(cards.comparison_html(evaluation, slice_tolerance=0.1), "decision")

    assert "95% interval of the RMSE change (candidate − champion) [-3.875, +0.750]" in decision
    assert "interval of the gain" not in decision and "needs &lt; 55.935" in decision
    assert cards.reason_as_change("first model: holdout R² 0.5") == "first model: holdout R² 0.5"
