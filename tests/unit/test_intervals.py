"""Split conformal intervals: the stated coverage holds on simulated data, and the record reproduces them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from pipeline.contract.config import PipelineConfig
from pipeline.model import intervals


def simulated(rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisy linear relation with heavy-ish tails (t with 5 degrees of freedom)."""
    X = rng.normal(size=(rows, 4))
    return X, X @ np.array([3.0, -2.0, 1.0, 0.5]) + 2.0 * rng.standard_t(5, size=rows)


def out_of_fold_residuals(X: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    predicted = np.empty_like(y)
    for fit, test in KFold(n_splits=5, shuffle=True, random_state=seed).split(X):
        predicted[test] = Ridge().fit(X[fit], y[fit]).predict(X[test])
    return np.abs(y - predicted)


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_the_stated_coverage_holds_on_new_simulated_records(coverage: float) -> None:
    reached = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        X, y = simulated(500, rng)
        record = intervals.conformal_record(out_of_fold_residuals(X, y, seed), coverage, {})
        model = Ridge().fit(X, y)
        X_new, y_new = simulated(5000, rng)
        reached.append(intervals.holdout_coverage(y_new, model.predict(X_new), record["half_width"]))

    assert coverage - 0.01 <= np.mean(reached) <= coverage + 0.03  # at least the coverage, not much wider
    assert min(reached) > coverage - 0.05


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
