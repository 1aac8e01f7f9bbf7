"""Live performance without a database: metrics, the champion's verdict, the paired shadow comparison,
the report page, and the demo's outcome generator."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.contract.config import PerformancePolicy
from pipeline.data import demo
from pipeline.monitoring import outcomes, performance

POLICY = PerformancePolicy(max_ratio=1.2, min_outcomes=30, confidence=0.95, bootstrap_samples=2000)


def judged(rows: list[tuple[int, str, str, float, float, float, float, str, str]]) -> pd.DataFrame:
    """(version, source, id, forecast, lower, upper, outcome, month, sex) rows as `judged_frame` gives them."""
    frame = pd.DataFrame(rows, columns=["version", "source", "source_id", "prediction", "lower", "upper", "outcome",
                                        "month", "slice:sex"])
    frame["coverage"] = 0.9
    return frame


SMALL = judged([
    (1, "served", "1", 90, 80, 100, 100, "2026-10", "F"),
    (1, "served", "2", 170, 160, 180, 150, "2026-10", "M"),
    (2, "served", "1", 104, 94, 114, 100, "2026-10", "F"),
    (2, "served", "2", 140, 130, 150, 150, "2026-10", "M"),
    (2, "served", "3", 190, 170, 210, 200, "2026-11", "F"),
    (2, "served", "4", 150, 140, 160, 120, "2026-11", "M"),
    (3, "shadow", "1", 95, 85, 105, 100, "2026-10", "F"),
    (3, "shadow", "2", 160, 150, 170, 150, "2026-10", "M"),
    (3, "shadow", "3", 230, 220, 240, 200, "2026-10", "F"),
])


def metric(rows: list[dict[str, object]], version: int, source: str, dimension: str, grp: str) -> dict[str, object]:
    [found] = [r for r in rows if (r["version"], r["source"], r["dimension"], r["grp"]) == (version, source, dimension, grp)]
    return found


def test_metrics_per_version_slice_and_month_equal_a_hand_computation() -> None:
    rows = performance.metric_rows(SMALL, ["sex"])

    v1 = metric(rows, 1, "served", "all", "all")  # errors (outcome - forecast): +10, -20
    assert v1["rows"] == 2
    assert v1["rmse"] == pytest.approx(math.sqrt((100 + 400) / 2))
    assert (v1["mae"], v1["bias"], v1["coverage"], v1["nominal_coverage"]) == (15, -5, 0.5, 0.9)
    v2 = metric(rows, 2, "served", "all", "all")  # errors -4, +10, +10, -30; 150 is on the upper bound: inside
    assert v2["rmse"] == pytest.approx(math.sqrt((16 + 100 + 100 + 900) / 4))
    assert (v2["mae"], v2["bias"], v2["coverage"]) == (13.5, -3.5, 0.75)
    october, november = metric(rows, 2, "served", "month", "2026-10"), metric(rows, 2, "served", "month", "2026-11")
    assert (october["rows"], october["rmse"], october["bias"], october["coverage"]) == (2, pytest.approx(math.sqrt(58)), 3, 1)
    assert (november["rmse"], november["bias"], november["mae"], november["coverage"]) == (
        pytest.approx(math.sqrt(500)), -10, 20, 0.5)
    women, men = metric(rows, 2, "served", "slice", "F"), metric(rows, 2, "served", "slice", "M")
    assert (women["slice"], women["rows"], women["rmse"], women["bias"]) == ("sex", 2, pytest.approx(math.sqrt(58)), 3)
    assert (men["rmse"], men["bias"], men["coverage"]) == (pytest.approx(math.sqrt(500)), -10, 0.5)
    shadow = metric(rows, 3, "shadow", "all", "all")
    assert shadow["rmse"] == pytest.approx(math.sqrt((25 + 100 + 900) / 3))
    assert len(rows) == 4 + 5 + 4  # per version: overall, each sex, each month


def test_paired_shadow_comparison_equals_a_hand_computation() -> None:
    [pair] = performance.paired_shadows(SMALL, champion=2, samples=500, confidence=0.9, seed=1)

    # records 1, 2, 3 have a forecast of both; champion errors -4, 10, 10; shadow errors 5, -10, -30
    assert (pair["shadow_version"], pair["champion_version"], pair["rows"]) == (3, 2, 3)
    assert pair["champion_rmse"] == pytest.approx(math.sqrt((16 + 100 + 100) / 3))
    assert pair["shadow_rmse"] == pytest.approx(math.sqrt((25 + 100 + 900) / 3))
    assert pair["mean_difference"] == pytest.approx((9 + 0 + 800) / 3)
    assert 0 <= pair["low"] <= pair["mean_difference"] <= pair["high"] <= 800
    # no difference is below zero, and a resample whose mean is zero must draw record 2 three times (1 in 27)
    assert pair["low"] > 0 and pair["verdict"] == "shadow worse"
    assert performance.paired_shadows(SMALL, champion=None, samples=500, confidence=0.9, seed=1) == []


def test_the_vectorised_bootstrap_is_seeded_and_matches_resampling_one_at_a_time() -> None:
    values = np.random.default_rng(0).normal(size=50)
    means = performance.bootstrap_means(values, 300, seed=7)

    rng = np.random.default_rng(7)
    expected = [values[rng.integers(0, 50, size=(1, 50))].mean() for _ in range(300)]
    assert np.allclose(means, expected)  # blocks of draws from one generator: the same draws in the same order
    assert np.array_equal(means, performance.bootstrap_means(values, 300, seed=7))


def squared_errors(spread: float, rows: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, spread, rows) ** 2


def test_shifted_errors_degrade_the_champion_and_stable_ones_do_not() -> None:
    degraded = performance.judge_champion(squared_errors(16.0), 10.0, POLICY, seed=42, version=2)
    stable = performance.judge_champion(squared_errors(10.0), 10.0, POLICY, seed=42, version=2)
    two_misses = np.r_[np.zeros(38), 3380.0, 3380.0]  # RMSE 13 = 1.3 x holdout, all of it from two records
    borderline = performance.judge_champion(two_misses, 10.0, POLICY, seed=42, version=2)

    assert degraded["verdict"] == "degraded" and degraded["degraded"] is True
    assert POLICY.max_ratio < degraded["ratio_low"] < degraded["ratio"] < degraded["ratio_high"]
    assert "DEGRADED" in degraded["reason"] and "1.2 x holdout RMSE" in degraded["reason"]
    assert stable["verdict"] == "not_degraded" and stable["degraded"] is False
    assert stable["ratio_low"] < 1.0 < stable["ratio_high"]
    assert borderline["ratio"] == pytest.approx(1.3)  # worse than the limit, but not surely: not degraded
    assert borderline["ratio_low"] <= POLICY.max_ratio and borderline["degraded"] is False


def scipy_ratio_interval(live: np.ndarray, held: np.ndarray, samples: int, seed: int) -> tuple[float, float]:
    """scipy's percentile bootstrap of sqrt(mean live) / sqrt(mean held), each sample resampled on its own."""
    def ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(np.sqrt(a.mean(axis=axis)) / np.sqrt(b.mean(axis=axis)))
    found = stats.bootstrap((live, held), ratio, paired=False, vectorized=True, n_resamples=samples,
                            confidence_level=0.95, method="percentile", rng=np.random.default_rng(seed))
    return float(found.confidence_interval.low), float(found.confidence_interval.high)


def test_the_ratio_interval_resamples_both_samples_as_scipys_bootstrap_does() -> None:
    # 60 live outcomes, 88 holdout rows (the demo's holdout): both RMSEs are estimates.
    live, held = squared_errors(60.0, rows=60, seed=3), squared_errors(55.0, rows=88, seed=4)
    policy = dataclasses.replace(POLICY, bootstrap_samples=40_000)
    verdict = performance.judge_champion(live, math.sqrt(held.mean()), policy, seed=5, version=2, holdout_errors=held)
    low, high = scipy_ratio_interval(live, held, 40_000, seed=6)

    # Seeds apart, the two agree within ~0.004 at 40,000 resamples; resampling the live outcomes alone is 0.02 off.
    assert verdict["ratio_low"] == pytest.approx(low, abs=0.01)
    assert verdict["ratio_high"] == pytest.approx(high, abs=0.01)
    live_only = performance.judge_champion(live, math.sqrt(held.mean()), policy, seed=5, version=2)
    assert live_only["ratio_high"] - live_only["ratio_low"] < 0.9 * (high - low)  # the old, too narrow interval
    assert "resampling the live outcomes and the 88 holdout rows" in verdict["reason"]
    assert "holdout RMSE is taken as exact" in live_only["reason"]


def test_live_coverage_per_slice_is_checked_against_its_exact_binomial_interval() -> None:
    low, high = stats.binomtest(70, 100).proportion_ci(0.95, method="exact")

    assert performance.coverage_check({"rows": 100, "coverage": 0.7, "nominal_coverage": 0.9}) == (
        f"[{low:.1%}, {high:.1%}] below")
    assert performance.coverage_check({"rows": 20, "coverage": 0.85, "nominal_coverage": 0.9}).endswith(" ok")


def test_too_few_outcomes_no_holdout_and_no_champion_give_no_verdict() -> None:
    few = performance.judge_champion(squared_errors(30.0, rows=29), 10.0, POLICY, seed=1, version=2)
    assert few["verdict"] == "insufficient_outcomes" and few["degraded"] is False
    assert "29 judged outcomes, fewer than 30" in few["reason"]
    assert performance.judge_champion(squared_errors(30.0), None, POLICY, 1, 2)["verdict"] == "no_holdout"
    assert performance.judge_champion(np.array([]), None, POLICY, 1, None)["verdict"] == "no_champion"


@pytest.mark.parametrize("missing", ["max_ratio", "min_outcomes", "confidence"])
def test_a_missing_threshold_disables_the_trigger_with_a_warning(missing: str) -> None:
    policy = PerformancePolicy(**{**{"max_ratio": 1.2, "min_outcomes": 30, "confidence": 0.95}, missing: None})

    verdict = performance.judge_champion(squared_errors(40.0), 10.0, policy, seed=1, version=2)

    assert verdict["verdict"] == "disabled" and verdict["degraded"] is False
    assert verdict["live_rmse"] == pytest.approx(math.sqrt(squared_errors(40.0).mean()))  # still measured
    assert verdict["warnings"] == [f"monitoring.performance {missing} not configured: the performance trigger is "
                                   "disabled (the report is still made)"]


def test_the_report_page_states_the_verdict_thresholds_warning_and_shadows() -> None:
    rows = performance.metric_rows(SMALL, ["sex"])
    holdout = {1: 12.0, 2: 15.0, 3: 14.0}
    policy = PerformancePolicy(max_ratio=None, min_outcomes=30, confidence=0.95)
    verdict = performance.judge_champion(np.array([16.0, 100, 100, 900]), 15.0, policy, seed=1, version=2)
    report = {"run_id": "r1", "as_of": "2026-11-30", "policy": {"max_ratio": None, "min_outcomes": 30},
              "verdict": verdict, "versions": performance.version_summaries(rows, holdout, verdict),
              "shadows": performance.paired_shadows(SMALL, 2, 200, 0.9, 1), "shadow_confidence": 0.9,
              "refused_outcomes": {"outcomes": 5, "refused": 1, "reason_counts": {"out_of_range": 1}, "limit": 0.05,
                                   "over_limit": False, "signal": None}, "signal": None}

    page = performance.report_html(report, rows, holdout)

    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 3
    assert "warning: monitoring.performance max_ratio not configured" in page
    assert "no signal sent by this run" in page and "shadow worse" in page
    assert "1 of 5 outcomes refused by the data contract" in page and "<td>out_of_range</td><td>1</td>" in page
    [champion] = [v for v in report["versions"] if v["champion"]]
    assert (champion["version"], champion["outcomes"], champion["holdout_rmse"]) == (2, 4, 15.0)
    assert champion["ratio"] == pytest.approx(math.sqrt(279) / 15.0)


def waiting_records() -> pd.DataFrame:
    return demo.arrival_records(40, seed=3, labelled=False)


def test_outcomes_are_deterministic_and_plausible() -> None:
    records = waiting_records()
    first = outcomes.generate_outcomes(records, seed=5)

    assert np.array_equal(first, outcomes.generate_outcomes(records, seed=5))
    assert not np.array_equal(first, outcomes.generate_outcomes(records, seed=6))
    assert first.min() >= 25 and first.max() <= 346
    relation = outcomes.study_relation()
    assert 50 < relation.noise < 60  # the study's own residual spread


def test_a_shift_moves_outcomes_by_the_coefficient_and_leaves_the_records_alone() -> None:
    records = waiting_records()
    before = records.copy()
    relation = outcomes.study_relation()
    plain = outcomes.generate_outcomes(records, seed=5, relation=relation)
    shifted = outcomes.generate_outcomes(records, seed=5, shift={"bmi": 4.0}, relation=relation)

    inside = (plain > 30) & (plain < 320)  # clear of the study's range at both ends
    assert np.allclose((shifted - plain)[inside], 4.0 * relation.coefficients["bmi"], atol=0.11)  # rounding to 0.1
    pd.testing.assert_frame_equal(records, before)
    with pytest.raises(ValueError, match="cannot shift"):
        outcomes.generate_outcomes(records, seed=5, shift={"patient_id": 1.0})
