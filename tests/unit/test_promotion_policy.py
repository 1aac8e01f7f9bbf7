"""The promotion policy on real numbers: the paired bootstrap, slices, behaviour checks, failing closed.

Evidence is assembled the way `stages.gather_evidence` assembles it, from holdout predictions:
the demo study stands in for a holdout, and candidate and champion are the observed outcome
plus seeded noise, so every RMSE, interval and slice change is computed, not typed in.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.pipeline import Pipeline

from pipeline.contract.config import (
    RESAMPLING_METHODS,
    DatasetContract,
    Feature,
    PipelineConfig,
    PromotionPolicy,
    SliceSpec,
    load_config,
)
from pipeline.contract.settings import PROJECT_ROOT
from pipeline.model import train
from pipeline.model.evaluate import (
    behaviour_checks,
    bootstrap_improvement,
    decide_promotion,
    regression_metrics,
    resample_gain,
    slice_labels,
    slice_table,
)
from pipeline.model.features import model_inputs

SLICES = (SliceSpec("sex", "sex"), SliceSpec("age", "age_years", (40.0, 60.0)), SliceSpec("bmi", "bmi", (25.0, 30.0)))
# Pinned here rather than read from pipeline.yaml, so retuning the shipped numbers cannot
# silently change what these tests exercise.
POLICY = PromotionPolicy(
    metric="rmse", min_r2=0.2, margin=0.01, confidence=0.95, bootstrap_samples=2000, slice_tolerance=0.10,
    min_slice_rows=10, slices=SLICES, prediction_range=(0.0, 500.0), directions={"bmi": 10.0, "glucose": 50.0},
    max_drop=5.0, bootstrap_method="exact",
)
THRESHOLDS = ["min_r2", "margin", "confidence", "slice_tolerance", "prediction_range", "max_drop"]
SEED = 42  # the bootstrap seed (gather_evidence passes training.seed)
# What behaviour_checks returns for a model that passes; the behaviour tests below use real models.
BEHAVIOUR_PASSED: dict[str, Any] = {"finite": True, "in_range": True, "id_invariant": True, "directions": {},
                                    "failures": [], "passed": True}


def build_evidence(holdout: pd.DataFrame, contract: DatasetContract, policy: PromotionPolicy,
                   candidate: np.ndarray, champion: np.ndarray | None, train_mean: float,
                   behaviour: dict[str, Any] | None = None) -> dict[str, Any]:
    """The evidence dict of stages.gather_evidence, from holdout predictions."""
    observed = holdout[contract.target_column].to_numpy()
    evidence: dict[str, Any] = {
        "holdout_rows": len(holdout),
        "behaviour": behaviour or BEHAVIOUR_PASSED,
        "candidate": regression_metrics(observed, candidate),
        "champion": None if champion is None else regression_metrics(observed, champion),
        "champion_error": None,
        "baseline": {"train_mean": train_mean,
                     "rmse": regression_metrics(observed, np.full(len(observed), train_mean))["rmse"]},
        "bootstrap": None,
        "slices": slice_table(holdout, contract, policy, candidate, champion),
    }
    if champion is not None and policy.confidence is not None:
        evidence["bootstrap"] = resample_gain(policy.bootstrap_method, observed, champion, candidate,
                                              policy.bootstrap_samples, policy.confidence, seed=SEED)
    return evidence


def outcome(frame: pd.DataFrame, contract: DatasetContract) -> np.ndarray:
    return frame[contract.target_column].to_numpy()


def noisy(observed: np.ndarray, sd: float, seed: int) -> np.ndarray:
    return observed + np.random.default_rng(seed).normal(0.0, sd, len(observed))


def slice_row(evidence: dict[str, Any], name: str, group: str) -> dict[str, Any]:
    [row] = [r for r in evidence["slices"] if (r["slice"], r["group"]) == (name, group)]
    return row


@pytest.fixture(scope="module")
def holdout(demo_frame: pd.DataFrame) -> pd.DataFrame:
    """The 442 demo patients as a holdout (235 F, 207 M)."""
    return demo_frame


@pytest.fixture(scope="module", params=RESAMPLING_METHODS)
def method(request: pytest.FixtureRequest) -> str:
    """Each way of resampling the gain: every decision below is the same by either."""
    return str(request.param)


@pytest.fixture(scope="module")
def policy(method: str) -> PromotionPolicy:
    return dataclasses.replace(POLICY, bootstrap_method=method)


@pytest.fixture(scope="module")
def clearly_better(holdout: pd.DataFrame, contract: DatasetContract, policy: PromotionPolicy) -> dict[str, Any]:
    """A champion with errors of sd 40 and a candidate with errors of sd 15."""
    y = outcome(holdout, contract)
    return build_evidence(holdout, contract, policy, noisy(y, 15.0, seed=1), noisy(y, 40.0, seed=2),
                          train_mean=float(y.mean()))


# --- the paired bootstrap ------------------------------------------------------------------------


def test_a_gain_that_is_only_noise_is_not_significant_even_past_the_margin(
        holdout: pd.DataFrame, contract: DatasetContract, method: str) -> None:
    y = outcome(holdout, contract)
    champion = noisy(y, 40.0, seed=5)
    candidate = champion + np.random.default_rng(3).normal(0.0, 2.0, len(y))  # the champion, jittered
    policy = dataclasses.replace(POLICY, margin=0.0005, bootstrap_method=method)
    evidence = build_evidence(holdout, contract, policy, candidate, champion, train_mean=float(y.mean()))
    # Preconditions: by the point estimate alone this candidate would pass the margin.
    assert evidence["candidate"]["rmse"] < evidence["champion"]["rmse"] * (1 - policy.margin)

    boot = evidence["bootstrap"]
    assert boot["low"] < 0 < boot["high"]
    decision = decide_promotion(evidence, policy)
    assert decision.promote is False
    assert "not significant" in decision.reason
    assert "not better by the margin" not in decision.reason
    assert "worse by more than" not in decision.reason


def test_a_clearly_better_candidate_is_significant_and_promoted(clearly_better: dict[str, Any]) -> None:
    boot = clearly_better["bootstrap"]
    assert 0 < boot["low"] < boot["mean"] < boot["high"]
    assert (boot["confidence"], boot.get("max_samples", boot["samples"])) == (POLICY.confidence, POLICY.bootstrap_samples)
    assert boot.get("method", "exact") in RESAMPLING_METHODS and boot["samples"] <= POLICY.bootstrap_samples
    gain = clearly_better["champion"]["rmse"] - clearly_better["candidate"]["rmse"]
    assert boot["low"] < gain < boot["high"]

    decision = decide_promotion(clearly_better, POLICY)
    assert decision.promote is True
    assert decision.reason.startswith("beats the champion")
    assert f"[{boot['low']:+.3f}, {boot['high']:+.3f}]" in decision.reason


def independent_bootstrap(observed: np.ndarray, champion: np.ndarray, candidate: np.ndarray,
                          samples: int, seed: int) -> list[float]:
    """RMSE(champion) - RMSE(candidate) over resampled rows, one resample at a time."""
    rng = random.Random(seed)
    n, gains = len(observed), []
    for _ in range(samples):
        rows = [rng.randrange(n) for _ in range(n)]
        rmse_champion = (sum((champion[i] - observed[i]) ** 2 for i in rows) / n) ** 0.5
        rmse_candidate = (sum((candidate[i] - observed[i]) ** 2 for i in rows) / n) ** 0.5
        gains.append(rmse_champion - rmse_candidate)
    return gains


def test_bootstrap_agrees_with_an_independent_loop_and_is_seeded() -> None:
    rng = np.random.default_rng(5)
    observed = rng.normal(150.0, 60.0, 40)
    champion, candidate = observed + rng.normal(0, 30, 40), observed + rng.normal(0, 20, 40)
    samples = 4000

    result = bootstrap_improvement(observed, champion, candidate, samples, 0.95, seed=11)

    assert bootstrap_improvement(observed, champion, candidate, samples, 0.95, seed=11) == result
    assert bootstrap_improvement(observed, champion, candidate, samples, 0.95, seed=12)["low"] != result["low"]
    gains = np.array(independent_bootstrap(observed, champion, candidate, samples, seed=11))
    spread = float(gains.std())
    # Two estimates of the same expectation from 4000 resamples each: standard error about spread/45.
    assert result["mean"] == pytest.approx(gains.mean(), abs=0.1 * spread)
    assert result["low"] == pytest.approx(np.quantile(gains, 0.025), abs=0.25 * spread)
    assert result["high"] == pytest.approx(np.quantile(gains, 0.975), abs=0.25 * spread)
    narrower = bootstrap_improvement(observed, champion, candidate, samples, 0.5, seed=11)
    assert result["low"] < narrower["low"] < narrower["high"] < result["high"]


# --- slices --------------------------------------------------------------------------------------


def test_a_candidate_much_worse_on_one_slice_is_kept_naming_it(holdout: pd.DataFrame, contract: DatasetContract,
                                                              policy: PromotionPolicy) -> None:
    y = outcome(holdout, contract)
    female = (holdout["sex"] == "F").to_numpy()
    champion_errors = np.random.default_rng(3).normal(0.0, 40.0, len(y))
    champion = y + champion_errors
    # Far better for men, exactly 15 % worse for women: better on average, over the 10 % tolerance on one slice.
    candidate = np.where(female, y + 1.15 * champion_errors, y + 0.1 * champion_errors)
    evidence = build_evidence(holdout, contract, policy, candidate, champion, train_mean=float(y.mean()))
    assert evidence["candidate"]["rmse"] < 0.9 * evidence["champion"]["rmse"]
    assert evidence["bootstrap"]["low"] > 0
    women = slice_row(evidence, "sex", "F")
    assert women["judged"] is True and women["n"] == female.sum() == 235
    assert women["change"] == pytest.approx(0.15)

    decision = decide_promotion(evidence, POLICY)
    assert decision.promote is False
    assert "sex=F (+15.0%)" in decision.reason
    assert "sex=M" not in decision.reason
    assert "not significant" not in decision.reason and "not better by the margin" not in decision.reason


def test_a_slice_under_min_slice_rows_is_reported_but_not_judged(holdout: pd.DataFrame, contract: DatasetContract,
                                                                 policy: PromotionPolicy) -> None:
    female_rows = holdout.index[holdout["sex"] == "F"][:5]
    few_women = holdout.loc[(holdout["sex"] == "M") | holdout.index.isin(female_rows)]
    y = outcome(few_women, contract)
    female = (few_women["sex"] == "F").to_numpy()
    champion_errors = np.random.default_rng(4).normal(0.0, 40.0, len(y))
    candidate = y + np.where(female, 3.0, 0.3) * champion_errors  # three times worse on the 5 women
    evidence = build_evidence(few_women, contract, policy, candidate, y + champion_errors,
                              train_mean=float(y.mean()))
    women = slice_row(evidence, "sex", "F")
    assert (women["n"], women["judged"]) == (5, False)
    assert women["change"] == pytest.approx(2.0)

    decision = decide_promotion(evidence, POLICY)
    assert decision.promote is True, decision.reason
    # The same rows judged (a threshold of 5) block it: the row count is what let it through.
    judged_too = decide_promotion(evidence | {"slices": slice_table(
        few_women, contract, dataclasses.replace(POLICY, min_slice_rows=5), candidate, y + champion_errors)},
        POLICY)
    assert judged_too.promote is False and "sex=F (+200.0%)" in judged_too.reason


def test_a_slice_where_the_champion_is_exact_still_blocks_a_worse_candidate(
        holdout: pd.DataFrame, contract: DatasetContract, policy: PromotionPolicy) -> None:
    y = outcome(holdout, contract)
    female = (holdout["sex"] == "F").to_numpy()
    errors = np.random.default_rng(6).normal(0.0, 1.0, len(y))
    champion = np.where(female, y + 60.0 * errors, y)       # exact for the 207 men
    candidate = np.where(female, y + 5.0 * errors, y + 20.0 * errors)
    evidence = build_evidence(holdout, contract, policy, candidate, champion, train_mean=float(y.mean()))
    men = slice_row(evidence, "sex", "M")
    assert men["judged"] is True and men["champion_rmse"] == 0.0 and men["candidate_rmse"] > 15.0

    decision = decide_promotion(evidence, POLICY)
    assert decision.promote is False
    assert "sex=M" in decision.reason


def with_ages(frame: pd.DataFrame, ages: list[float]) -> pd.DataFrame:
    """`len(ages)` rows whose birth and visit dates are `ages` years (of 365.25 days) apart."""
    rows = frame.head(len(ages)).copy()
    visit = pd.Timestamp("2025-06-01")
    rows["visit_date"] = pd.Series([visit] * len(ages), index=rows.index).astype(rows["visit_date"].dtype)
    births = [visit - pd.Timedelta(days=round(age * 365.25)) for age in ages]
    rows["birth_date"] = pd.Series(births, index=rows.index).astype(rows["birth_date"].dtype)
    return rows


def test_age_bands_put_each_edge_in_the_band_above_it(demo_frame: pd.DataFrame, contract: DatasetContract) -> None:
    rows = with_ages(demo_frame, [39.9, 40.0, 59.9, 60.0, 18.0, 85.0])
    labels = slice_labels(rows, contract, SliceSpec("age", "age_years", (40.0, 60.0)))
    assert list(labels) == ["<40", "40-60", "40-60", ">=60", "<40", ">=60"]


def test_categories_and_missing_values_get_their_own_groups(demo_frame: pd.DataFrame,
                                                            contract: DatasetContract) -> None:
    rows = demo_frame.head(4).copy()
    rows["sex"] = pd.array(["F", "M", None, "F"], dtype="string")
    rows["bmi"] = [24.99, 25.0, np.nan, 30.0]
    assert list(slice_labels(rows, contract, SliceSpec("sex", "sex"))) == ["F", "M", "(missing)", "F"]
    assert list(slice_labels(rows, contract, SliceSpec("bmi", "bmi", (25.0, 30.0)))) == [
        "<25", "25-30", "(missing)", ">=30"]


# --- a first model -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_sd", "mean_shift", "min_r2", "promote", "said"),
    [
        (40.0, 0.0, 0.2, True, ["first model", "clears the floor 0.2"]),
        (72.0, 40.0, 0.2, False, ["under the floor 0.2"]),                    # beats a shifted mean, R² ~0.13
        (90.0, 0.0, -1.0, False, ["does not beat predicting the training mean"]),  # clears a floor of -1
        (90.0, 0.0, 0.2, False, ["under the floor 0.2", "does not beat predicting the training mean"]),
    ],
)
def test_a_first_model_must_clear_the_floor_and_beat_the_training_mean(
        holdout: pd.DataFrame, contract: DatasetContract, error_sd: float, mean_shift: float, min_r2: float,
        promote: bool, said: list[str]) -> None:
    y = outcome(holdout, contract)
    policy = dataclasses.replace(POLICY, min_r2=min_r2)
    evidence = build_evidence(holdout, contract, policy, noisy(y, error_sd, seed=8), None,
                              train_mean=float(y.mean()) + mean_shift)
    floor_ok = evidence["candidate"]["r2"] >= min_r2
    beats_mean = evidence["candidate"]["rmse"] < evidence["baseline"]["rmse"]
    assert (floor_ok and beats_mean) is promote  # the numbers really are on the side the case claims

    decision = decide_promotion(evidence, policy)
    assert decision.promote is promote
    for text in said:
        assert text in decision.reason
    if not promote:
        assert decision.reason.startswith("no champion, and")
        assert ("under the floor" in decision.reason) is (not floor_ok)
        assert ("training mean" in decision.reason) is (not beats_mean)


# --- failing closed ------------------------------------------------------------------------------


def test_the_thresholds_under_test_are_all_the_policy_has() -> None:
    unset = dataclasses.replace(POLICY, **dict.fromkeys(THRESHOLDS))
    assert unset.missing_thresholds() == THRESHOLDS
    assert POLICY.missing_thresholds() == []


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("has_champion", [True, False], ids=["challenger", "first-model"])
def test_a_missing_threshold_fails_closed_naming_it(holdout: pd.DataFrame, contract: DatasetContract,
                                                    clearly_better: dict[str, Any], threshold: str,
                                                    has_champion: bool) -> None:
    evidence = clearly_better if has_champion else clearly_better | {"champion": None, "bootstrap": None}
    assert decide_promotion(evidence, POLICY).promote is True  # would promote with every threshold set

    decision = decide_promotion(evidence, dataclasses.replace(POLICY, **{threshold: None}))

    assert decision.promote is False
    assert decision.reason.startswith("fail closed")
    assert decision.reason.endswith(f": {threshold}")


def test_every_missing_threshold_is_named() -> None:
    decision = decide_promotion({}, dataclasses.replace(POLICY, **dict.fromkeys(THRESHOLDS)))
    assert decision.promote is False
    assert decision.reason == f"fail closed: promotion thresholds not configured: {', '.join(THRESHOLDS)}"


def test_a_configured_min_slice_rows_of_zero_is_kept(tmp_path: Path) -> None:
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    raw["promotion"]["min_slice_rows"] = 0
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path).promotion.min_slice_rows == 0


# --- behaviour checks on fitted pipelines --------------------------------------------------------


def fit_ridge(config: PipelineConfig, contract: DatasetContract, rows: pd.DataFrame) -> Pipeline:
    policy = dataclasses.replace(config.training, families={"ridge": {"alpha": 1.0}})
    model = train.build_model(contract, "ridge", policy)
    return model.fit(model_inputs(rows, contract), outcome(rows, config.dataset))


@pytest.fixture(scope="module")
def split(demo_frame: pd.DataFrame, config: PipelineConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    return train.split_holdout(demo_frame, config.dataset, config.training.holdout_fraction)


@pytest.fixture(scope="module")
def shipped_model(config: PipelineConfig, split: tuple[pd.DataFrame, pd.DataFrame]) -> Pipeline:
    return fit_ridge(config, config.dataset, split[0])


def test_the_shipped_model_passes_the_shipped_behaviour_checks(
        config: PipelineConfig, shipped_model: Pipeline, split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    policy = config.promotion
    checks = behaviour_checks(shipped_model, split[1], config.dataset, policy)
    assert checks["failures"] == []
    assert checks["passed"] and checks["finite"] and checks["in_range"] and checks["id_invariant"]
    low, high = policy.prediction_range or (None, None)
    assert low <= checks["prediction_min"] <= checks["prediction_max"] <= high
    assert set(checks["directions"]) == set(policy.directions)
    assert checks["directions"]["bmi"]["worst_change"] > 0  # a higher BMI predicts more progression
    for feature, step in policy.directions.items():
        assert checks["directions"][feature]["step"] == step
        assert checks["directions"][feature]["worst_change"] >= -(policy.max_drop or 0.0)


def test_a_model_that_falls_with_bmi_fails_the_bmi_direction(
        config: PipelineConfig, split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    contract, (train_rows, holdout) = config.dataset, split
    inverted = train_rows.copy()
    inverted[contract.target_column] = 300.0 - 8.0 * inverted["bmi"]
    model = fit_ridge(config, contract, inverted)

    checks = behaviour_checks(model, holdout, contract, POLICY)

    assert checks["passed"] is False
    assert checks["directions"]["bmi"]["worst_change"] == pytest.approx(-80.0, rel=0.05)
    [bmi_failure] = [f for f in checks["failures"] if f.startswith("raising bmi by 10 lowers a prediction by")]
    assert "(limit 5)" in bmi_failure
    assert not any("glucose" in f for f in checks["failures"])
    # Otherwise a fine first model: the failed checks alone keep it.
    y = outcome(holdout, contract)
    evidence = build_evidence(holdout, contract, POLICY, noisy(y, 20.0, seed=1), None,
                              train_mean=float(outcome(train_rows, contract).mean()), behaviour=checks)
    assert decide_promotion(evidence | {"behaviour": BEHAVIOUR_PASSED}, POLICY).promote is True
    decision = decide_promotion(evidence, POLICY)
    assert decision.promote is False
    assert decision.reason.startswith("behaviour checks failed")
    assert "raising bmi by 10" in decision.reason


def test_a_prediction_range_that_excludes_the_predictions_fails_in_range(
        config: PipelineConfig, shipped_model: Pipeline, split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    policy = dataclasses.replace(POLICY, prediction_range=(0.0, 10.0))
    checks = behaviour_checks(shipped_model, split[1], config.dataset, policy)
    assert checks["finite"] is True and checks["in_range"] is False and checks["passed"] is False
    assert checks["prediction_max"] > 10.0
    [failure] = checks["failures"]
    assert failure.endswith("outside [0, 10]")


def test_a_model_fed_the_patient_id_fails_id_invariance(
        config: PipelineConfig, split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    contract = config.dataset
    leaky = dataclasses.replace(contract, features=(*contract.features, Feature(contract.id_column, "numeric", "integer")))
    model = fit_ridge(config, leaky, split[0])

    checks = behaviour_checks(model, split[1], leaky, POLICY)

    assert checks["id_invariant"] is False and checks["passed"] is False
    assert f"predictions change with {contract.id_column}" in checks["failures"]


class HalfNaN:
    """A stand-in fitted model that predicts NaN for every other row."""

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        values = np.full(len(X), 100.0)
        values[::2] = np.nan
        return values


def test_non_finite_predictions_fail(config: PipelineConfig, split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    checks = behaviour_checks(HalfNaN(), split[1], config.dataset, POLICY)
    assert checks["finite"] is False and checks["in_range"] is False and checks["passed"] is False
    assert "non-finite predictions on the holdout" in checks["failures"]
