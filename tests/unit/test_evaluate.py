"""Evaluation: metrics by hand, the promotion rule at its boundaries, scoring that refuses nonsense."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.contract.config import DatasetContract, PromotionPolicy
from pipeline.model.evaluate import decide_promotion, regression_metrics, score_model

# Powers of two keep the boundary arithmetic exact: 40 * (1 - 0.25) is 30.0 to the last bit.
POLICY = PromotionPolicy(metric="rmse", min_r2=0.25, margin=0.25, confidence=0.95, slice_tolerance=0.1,
                         prediction_range=(0.0, 500.0), max_drop=5.0)
CHAMPION = {"rmse": 40.0, "mae": 30.0, "r2": 0.5, "n": 88}


def evidence(cand: dict[str, float], champion: dict[str, float] | None) -> dict[str, Any]:
    """Evidence that isolates the margin and floor rules: significant, no slices, behaviour fine."""
    return {"candidate": cand, "champion": champion, "baseline": {"rmse": 1e9, "train_mean": 150.0},
            "bootstrap": {"mean": 1.0, "low": 0.5, "high": 1.5, "confidence": 0.95, "samples": 100},
            "slices": [], "behaviour": {"passed": True, "failures": []}}


class ConstantModel:
    """A stand-in fitted model that predicts one value for every row."""

    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.full(len(X), self.value)


def candidate(rmse: float = 35.0, r2: float = 0.5) -> dict[str, float]:
    return {"rmse": rmse, "mae": rmse * 0.8, "r2": r2, "n": 88}


def numbers_in(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", text)]


def mentions(text: str, value: float, places: int = 3) -> bool:
    """Whether `text` states `value` to within the rounding of `places` decimals."""
    return any(math.isclose(n, value, abs_tol=0.5 * 10**-places) for n in numbers_in(text))


# --- regression_metrics --------------------------------------------------------------------------


def test_regression_metrics_match_hand_computed_values() -> None:
    observed = np.array([1.0, 2.0, 3.0, 4.0])
    predicted = np.array([1.0, 2.0, 3.0, 6.0])
    # errors 0, 0, 0, 2: MSE 4/4, MAE 2/4; variance around the mean 2.5 sums to 5, so R² = 1 - 4/5
    metrics = regression_metrics(observed, predicted)
    assert metrics["rmse"] == pytest.approx(1.0)
    assert metrics["mae"] == pytest.approx(0.5)
    assert metrics["r2"] == pytest.approx(0.2)
    assert metrics["n"] == 4


def test_regression_metrics_of_a_perfect_and_a_mean_prediction() -> None:
    observed = np.array([2.0, 4.0, 9.0])
    perfect = regression_metrics(observed, observed.copy())
    assert (perfect["rmse"], perfect["mae"], perfect["r2"]) == (0.0, 0.0, 1.0)
    at_mean = regression_metrics(observed, np.full(3, 5.0))
    # deviations -3, -1, 4: MSE 26/3, MAE 8/3, and the mean explains nothing
    assert at_mean["rmse"] == pytest.approx(math.sqrt(26 / 3))
    assert at_mean["mae"] == pytest.approx(8 / 3)
    assert at_mean["r2"] == pytest.approx(0.0)


# --- decide_promotion: a first model -------------------------------------------------------------


@pytest.mark.parametrize(("r2", "promote"), [(0.6, True), (0.25, True), (0.2499, False), (-0.3, False)])
def test_first_model_is_promoted_only_at_or_above_the_floor(r2: float, promote: bool) -> None:
    decision = decide_promotion(evidence(candidate(r2=r2), None), POLICY)
    assert decision.promote is promote
    assert decision.label == ("promote" if promote else "keep")
    assert mentions(decision.reason, r2)
    assert mentions(decision.reason, POLICY.min_r2)


def test_first_model_with_a_nan_r2_is_kept() -> None:
    assert decide_promotion(evidence(candidate(r2=float("nan")), None), POLICY).promote is False


# --- decide_promotion: against a champion --------------------------------------------------------


@pytest.mark.parametrize(
    ("rmse", "promote"),
    [
        (30.0, False),    # exactly the margin is not enough: it must be strictly better
        (29.0, True),     # more than the margin
        (30.001, False),  # a hair less than the margin
        (39.0, False),    # better, but not by the margin
        (40.0, False),    # a tie
        (45.0, False),    # worse
    ],
)
def test_candidate_needs_to_beat_the_champion_by_the_margin(rmse: float, promote: bool) -> None:
    decision = decide_promotion(evidence(candidate(rmse=rmse), CHAMPION), POLICY)
    assert decision.promote is promote
    assert mentions(decision.reason, rmse)
    assert mentions(decision.reason, CHAMPION["rmse"])
    assert mentions(decision.reason, CHAMPION["rmse"] * (1 - POLICY.margin))


def test_champion_comparison_ignores_the_r2_floor() -> None:
    """Once a champion exists the rule is relative: a low-R² candidate that beats it still wins."""
    assert decide_promotion(evidence(candidate(rmse=20.0, r2=0.1), CHAMPION), POLICY).promote is True


def test_zero_margin_promotes_any_improvement_but_not_a_tie() -> None:
    policy = dataclasses.replace(POLICY, margin=0.0)
    assert decide_promotion(evidence(candidate(rmse=39.99), CHAMPION), policy).promote is True
    assert decide_promotion(evidence(candidate(rmse=40.0), CHAMPION), policy).promote is False
    assert decide_promotion(evidence(candidate(rmse=40.5), CHAMPION), policy).promote is False


@pytest.mark.parametrize(
    ("candidate_rmse", "champion_rmse"), [(float("nan"), 40.0), (30.0, float("nan")), (float("inf"), 40.0)]
)
def test_unusable_rmse_fails_closed(candidate_rmse: float, champion_rmse: float) -> None:
    champion = {**CHAMPION, "rmse": champion_rmse}
    assert decide_promotion(evidence(candidate(rmse=candidate_rmse), champion), POLICY).promote is False


# --- score_model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def holdout(demo_frame: pd.DataFrame) -> pd.DataFrame:
    return demo_frame.tail(12)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_score_model_raises_on_non_finite_predictions(
    bad: float, holdout: pd.DataFrame, contract: DatasetContract
) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        score_model(ConstantModel(bad), holdout, contract)


def test_score_model_raises_when_one_prediction_of_many_is_nan(
    holdout: pd.DataFrame, contract: DatasetContract
) -> None:
    class OneNaN(ConstantModel):
        def predict(self, X: pd.DataFrame) -> np.ndarray:
            values = super().predict(X)
            values[len(values) // 2] = np.nan
            return values

    with pytest.raises(ValueError, match="non-finite"):
        score_model(OneNaN(100.0), holdout, contract)


def test_score_model_scores_against_the_target_column(holdout: pd.DataFrame, contract: DatasetContract) -> None:
    observed = holdout[contract.target_column].to_numpy()
    metrics = score_model(ConstantModel(float(observed.mean())), holdout, contract)
    assert metrics["n"] == len(holdout)
    assert metrics["rmse"] == pytest.approx(float(observed.std()))
    assert metrics["mae"] == pytest.approx(float(np.abs(observed - observed.mean()).mean()))
    assert metrics["r2"] == pytest.approx(0.0, abs=1e-12)


def test_score_model_passes_only_the_feature_columns(holdout: pd.DataFrame, contract: DatasetContract) -> None:
    seen: list[list[str]] = []

    class Recording(ConstantModel):
        def predict(self, X: pd.DataFrame) -> np.ndarray:
            seen.append(list(X.columns))
            return super().predict(X)

    score_model(Recording(150.0), holdout, contract)
    assert seen == [contract.feature_names()]
    assert contract.target_column not in seen[0]


@pytest.mark.parametrize("rows, samples", [(7, 37), (1001, 33), (20_000, 50)])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_the_blocked_bootstrap_gives_the_one_at_a_time_numbers(rows: int, samples: int, threads: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.model.evaluate import bootstrap_improvement

    monkeypatch.setenv("OMP_NUM_THREADS", threads)  # one thread, or the next block drawn on a second
    rng = np.random.default_rng(rows)
    observed = rng.normal(150, 40, rows)
    champion, challenger = observed + rng.normal(0, 30, rows), observed + rng.normal(0, 29, rows)
    fast = bootstrap_improvement(observed, champion, challenger, samples, 0.95, seed=42)
    assert fast == bootstrap_reference(observed, champion, challenger, samples, 0.95, seed=42)
    assert fast != bootstrap_improvement(observed, champion, challenger, samples, 0.95, seed=43)


def bootstrap_reference(observed: np.ndarray, champion: np.ndarray, candidate: np.ndarray,
                        samples: int, confidence: float, seed: int) -> dict[str, float]:
    """`evaluate.bootstrap_improvement` as it was first written, one resample at a time."""
    rng = np.random.default_rng(seed)
    n = len(observed)
    squared_errors = np.column_stack([(champion - observed) ** 2, (candidate - observed) ** 2])
    gains = np.empty(samples)
    for sample in range(samples):
        times_drawn = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        champion_mse, candidate_mse = (times_drawn @ squared_errors) / n
        gains[sample] = np.sqrt(champion_mse) - np.sqrt(candidate_mse)
    tail = (1.0 - confidence) / 2.0
    return {"mean": float(gains.mean()), "low": float(np.quantile(gains, tail)),
            "high": float(np.quantile(gains, 1.0 - tail)), "confidence": confidence, "samples": samples}
