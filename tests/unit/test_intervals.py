"""Prediction intervals: split conformal on a calibration set held equal to MAPIE, its stated coverage on
simulated data overall and per slice, the out-of-fold method past versions keep, and the record."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from mapie.regression import CrossConformalRegressor, SplitConformalRegressor
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from pipeline.contract.config import PipelineConfig, SliceSpec
from pipeline.model import intervals


def simulated(rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisy linear relation with heavy-ish tails (t with 5 degrees of freedom)."""
    X = rng.normal(size=(rows, 4))
    return X, X @ np.array([3.0, -2.0, 1.0, 0.5]) + 2.0 * rng.standard_t(5, size=rows)


def out_of_fold_residuals(X: np.ndarray, y: np.ndarray, cv: KFold) -> np.ndarray:
    predicted = np.empty_like(y)
    for fit, test in cv.split(X):
        predicted[test] = Ridge().fit(X[fit], y[fit]).predict(X[test])
    return np.abs(y - predicted)


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_split_conformal_equals_mapies_width_and_coverage(coverage: float) -> None:
    rng = np.random.default_rng(int(coverage * 100))
    X, y = simulated(600, rng)
    model = Ridge().fit(X[:400], y[:400])
    X_new, y_new = simulated(2000, rng)

    record = intervals.calibration_record(np.abs(y[400:] - model.predict(X[400:])), None, None, coverage, {})
    mapie = SplitConformalRegressor(model, confidence_level=coverage, prefit=True).conformalize(X[400:], y[400:])
    predicted, bounds = mapie.predict_interval(X_new)

    assert np.allclose(bounds[:, 1, 0] - predicted, record["half_width"], rtol=0, atol=1e-9)
    assert np.allclose(predicted - bounds[:, 0, 0], record["half_width"], rtol=0, atol=1e-9)
    ours = intervals.holdout_coverage(y_new, model.predict(X_new), record["half_width"])
    theirs = float(np.mean((y_new >= bounds[:, 0, 0]) & (y_new <= bounds[:, 1, 0])))
    assert ours == pytest.approx(theirs, abs=1e-12) and record["method"] == intervals.METHOD


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_the_stated_coverage_holds_on_new_simulated_records(coverage: float) -> None:
    # Split conformal: at least `coverage`, at most coverage + 1 / (n + 1), on average over calibration sets.
    reached = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        X, y = simulated(500, rng)
        model = Ridge().fit(X[:400], y[:400])
        record = intervals.calibration_record(np.abs(y[400:] - model.predict(X[400:])), None, None, coverage, {})
        X_new, y_new = simulated(2000, rng)
        reached.append(intervals.holdout_coverage(y_new, model.predict(X_new), record["half_width"]))

    # 40 calibration sets of 100: the mean's standard error is ~0.005; the guarantee is [coverage, coverage + 1/101].
    assert coverage - 0.015 <= np.mean(reached) <= coverage + 1 / 101 + 0.015


def test_the_out_of_fold_method_past_versions_keep_equals_mapies_cross_conformal_base() -> None:
    rng = np.random.default_rng(7)
    X, y = simulated(300, rng)
    cv = KFold(n_splits=5, shuffle=True, random_state=1)
    record = intervals.conformal_record(out_of_fold_residuals(X, y, cv), 0.9, {}, intervals.OUT_OF_FOLD)

    mapie = CrossConformalRegressor(Ridge(), confidence_level=0.9, method="base", cv=cv).fit_conformalize(X, y)
    X_new = rng.normal(size=(20, 4))
    predicted, bounds = mapie.predict_interval(X_new)

    assert np.allclose(predicted, Ridge().fit(X, y).predict(X_new))  # around the model fitted on all rows
    assert np.allclose(bounds[:, 1, 0] - predicted, record["half_width"], rtol=0, atol=1e-9)
    assert "none in finite samples" in intervals.Interval(1, 0.9, 1.0, intervals.OUT_OF_FOLD).guarantee


def grouped(rows: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Records of two sexes, the noise of 'M' three times that of 'F': one interval for both cannot fit both."""
    sex = rng.choice(["F", "M"], size=rows)
    x = rng.normal(size=rows)
    noise = rng.normal(size=rows) * np.where(sex == "M", 3.0, 1.0)
    return pd.DataFrame({"sex": sex, "x": x}), 2.0 * x + noise


def test_per_slice_coverage_is_within_its_binomial_interval_when_calibrated_per_group() -> None:
    rng = np.random.default_rng(11)
    spec = SliceSpec("sex", "sex")
    calibration, y_cal = grouped(20_000, rng)  # large: the calibration's own noise small beside the check's
    fresh, y_new = grouped(4000, rng)
    residuals = np.abs(y_cal - 2.0 * calibration["x"].to_numpy())  # the true relation: residuals are the noise
    inside_of = {}
    for name, labels in (("marginal", None), ("mondrian", calibration["sex"])):
        record = intervals.calibration_record(residuals, labels, spec if labels is not None else None, 0.9, {})
        groups = record["group_half_widths"]
        widths = fresh["sex"].map(groups).to_numpy() if groups else np.full(len(fresh), record["half_width"])
        inside_of[name] = np.abs(y_new - 2.0 * fresh["x"].to_numpy()) <= widths

    marginal = {r["group"]: r for r in intervals.slice_coverage(inside_of["marginal"], fresh["sex"], 0.9)}
    mondrian = {r["group"]: r for r in intervals.slice_coverage(inside_of["mondrian"], fresh["sex"], 0.9, 0.99)}

    assert marginal["F"]["verdict"] == "above" and marginal["M"]["verdict"] == "below"  # right on average only
    assert [r["verdict"] for r in mondrian.values()] == ["ok", "ok"]
    assert all(r["low"] <= 0.9 <= r["high"] and r["rows"] > 1500 for r in mondrian.values())


def test_slice_coverage_gives_the_exact_binomial_interval() -> None:
    from scipy import stats

    labels = pd.Series(["a"] * 50 + ["b"] * 10)
    inside = np.r_[np.ones(40), np.zeros(10), np.ones(10)].astype(bool)

    rows = intervals.slice_coverage(inside, labels, 0.9)

    ci = stats.binomtest(40, 50).proportion_ci(0.95, method="exact")
    assert rows[0] == {"group": "a", "rows": 50, "coverage": 0.8, "low": ci.low, "high": ci.high, "verdict": "below"}
    assert ci.high == pytest.approx(0.8997, abs=1e-4)  # just under 0.9
    assert rows[1]["coverage"] == 1.0 and rows[1]["verdict"] == "ok"  # 10 of 10: the interval still holds 0.9


def test_a_group_never_calibrated_gets_no_finite_interval(config: PipelineConfig) -> None:
    from pipeline.data import demo

    frame = demo.demo_records().head(4).assign(sex=["F", "M", "F", "X"])
    interval = intervals.Interval(1, 0.9, 25.0, intervals.METHOD, conditional_on=SliceSpec("sex", "sex"),
                                  group_half_widths={"F": 20.0, "M": 30.0})

    assert interval.half_widths(frame, config.dataset).tolist() == [20.0, 30.0, 20.0, math.inf]
    assert "within each sex group (Mondrian)" in interval.guarantee


def test_the_record_names_its_rank_and_hashes_its_residuals() -> None:
    residuals = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 7.0, 8.0, 6.0, 10.0, np.nan])

    record = intervals.conformal_record(residuals, 0.8, {"family": "ridge"})

    assert (record["residuals"], record["rank"]) == (10, math.ceil(11 * 0.8))  # NaN left out
    assert record["half_width"] == 9.0  # the 9th smallest of 1..10
    assert record["residuals_sha256"] == intervals.conformal_record(residuals[::-1], 0.8, {})["residuals_sha256"]
    assert record["inputs"] == {"family": "ridge"}


def test_too_few_residuals_give_no_finite_interval() -> None:
    assert intervals.conformal_record(np.array([1.0, 2.0]), 0.9, {})["half_width"] == math.inf


def test_bounds_cut_the_interval_to_possible_outcomes(config: PipelineConfig) -> None:
    from sklearn.dummy import DummyRegressor

    from pipeline.data import demo

    frame = demo.demo_records().head(3)
    model = DummyRegressor(strategy="constant", constant=10.0).fit(frame[config.dataset.feature_names()], [0, 0, 0])
    interval = intervals.Interval(1, 0.9, 25.0, intervals.METHOD, bounds=(0.0, 500.0))

    forecast = intervals.forecast(model, frame, config.dataset, interval)

    assert forecast.to_dict("list") == {"prediction": [10.0] * 3, "lower": [0.0] * 3, "upper": [35.0] * 3}


def test_input_hashes_follow_the_values_only(config: PipelineConfig) -> None:
    from pipeline.data import demo

    frame = demo.demo_records().head(3)
    again = frame.iloc[[2, 1, 0]].set_index(frame.index[[0, 1, 2]] + 100)  # other order, other index
    changed = frame.copy()
    changed.loc[1, "bmi"] += 0.1
    missing = frame.copy()
    missing.loc[1, "bmi"] = None

    hashes = intervals.input_hashes(frame, config.dataset)

    assert len(set(hashes)) == 3 and all(len(h) == 64 for h in hashes)
    assert intervals.input_hashes(again, config.dataset) == hashes[::-1]
    assert intervals.input_hashes(changed, config.dataset)[1] != hashes[1]
    assert intervals.input_hashes(missing, config.dataset)[1] not in hashes
    assert intervals.input_hashes(changed, config.dataset)[::2] == hashes[::2]
