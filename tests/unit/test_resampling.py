"""The sequential Poisson bootstrap: it decides as the exact paired bootstrap does outside its Monte-Carlo band
(a seeded, smaller agreement study than `python -m bench.resampling`'s 300 pairs), it is seeded and the same
whatever the chunking and the threads, and every recorded interval is redone by the method it names."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from pipeline.model import evaluate, resampling_study


def gains_data(rows: int, candidate_sd: float, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    observed = rng.normal(150.0, 60.0, rows)
    return observed, observed + rng.normal(0.0, 40.0, rows), observed + rng.normal(0.0, candidate_sd, rows)


@pytest.mark.timeout(300)
def test_the_smaller_agreement_study_agrees_with_the_exact_bootstrap_outside_the_band() -> None:
    pairs = resampling_study.study_pairs(30, max_rows=10_000, seed=7)
    assert {p.kind for p in pairs} == set(resampling_study.KINDS) and max(p.rows for p in pairs) == 10_000
    rows = resampling_study.run_study(pairs)
    ok, lines = resampling_study.verdict(rows)
    assert ok, "\n".join(resampling_study.table(rows) + lines)
    settled = [r for r in rows if r["settled"]]
    assert len(settled) >= 25  # the study is about settled decisions: most must be
    assert all(r["decision_agrees"] for r in settled)
    assert {r["promotes"] for r in settled} == {True, False}  # both decisions occur among them
    assert all(r["samples"] < 2000 for r in settled if r["share_not_better"] in (0.0, 1.0))  # clear ones stop early


def test_a_study_that_disagrees_says_so() -> None:
    row = {"kind": "tie", "rows": 50, "settled": True, "decision_agrees": False, "low_agrees": True,
           "high_agrees": False, "promotes": True, "exact_promotes": False, "exact_low_in_band": False,
           "exact_high_in_band": True}
    ok, lines = resampling_study.verdict([row])
    assert not ok
    assert "DIFFERENT: tie n=50" in lines[0] and "NOT: tie n=50" in lines[2] and "DOES NOT AGREE" in lines[-1]


def test_the_poisson_weights_are_poisson_1_to_16_bits() -> None:
    weights = evaluate.POISSON_WEIGHTS
    counts = np.bincount(weights.astype(int)) / len(weights)
    poisson = np.array([math.exp(-1) / math.factorial(k) for k in range(len(counts))])
    assert np.abs(np.cumsum(counts) - np.cumsum(poisson)).max() <= 2.0 ** -17
    assert np.abs(counts - poisson).max() <= 2.0 ** -16 and len(counts) == 9
    assert weights.mean() == pytest.approx(1.0, abs=1e-5) and weights.var() == pytest.approx(1.0, abs=1e-4)


def test_the_poisson_bootstrap_is_seeded_and_the_same_whatever_the_threads_and_the_looks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    observed, champion, candidate = gains_data(5_000, 39.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    first = evaluate.resample_gain(evaluate.POISSON, observed, champion, candidate, 2000, 0.95, seed=42)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert evaluate.resample_gain(evaluate.POISSON, observed, champion, candidate, 2000, 0.95, seed=42) == first
    assert evaluate.resample_gain(evaluate.POISSON, observed, champion, candidate, 2000, 0.95, seed=43) != first
    # A resample's gain is its own: drawn 21 at once or 13 then 8, in a padded chunk or a full one.
    errors = np.vstack([(champion - observed) ** 2, (candidate - observed) ** 2, np.ones(len(observed))])
    at_once = evaluate.poisson_gains(errors, 42, 0, 21)
    assert np.array_equal(at_once, np.concatenate([evaluate.poisson_gains(errors, 42, 0, 13),
                                                   evaluate.poisson_gains(errors, 42, 13, 8)]))


def test_a_clear_decision_stops_at_the_first_look_and_an_unclear_one_draws_the_most() -> None:
    clear = evaluate.resample_gain(evaluate.POISSON, *gains_data(2_000, 30.0), 2000, 0.95, seed=1)
    assert (clear["samples"], clear["settled"], clear["share_not_better"]) == (400, True, 0.0)
    assert clear["low"] > 0 and clear["share_band"][1] < 0.025
    unclear = evaluate.resample_gain(evaluate.POISSON, *gains_data(2_000, 40.0), 2000, 0.95, seed=1)
    assert unclear["samples"] in (400, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000)
    if not unclear["settled"]:
        assert unclear["samples"] == 2000 and unclear["share_band"][0] <= 0.025 <= unclear["share_band"][1]
    for end in ("low", "high"):
        band = unclear[f"{end}_band"]
        assert band[0] <= unclear[end] <= band[1]


def test_the_record_names_the_method_and_every_parameter_it_needs() -> None:
    data = gains_data(1_000, 30.0)
    exact = evaluate.resample_gain(evaluate.EXACT, *data, 500, 0.9, seed=5)
    assert exact == {"method": "exact", "seed": 5, **evaluate.bootstrap_improvement(*data, 500, 0.9, seed=5)}
    poisson = evaluate.resample_gain(evaluate.POISSON, *data, 500, 0.9, seed=5)
    assert {"method", "seed", "samples", "max_samples", "first_look", "look_every", "mc_z", "stop_rule",
            "share_not_better", "share_band", "settled", "low_band", "high_band", "confidence"} <= set(poisson)
    assert "99.9% Monte-Carlo band" in evaluate.resampling_words(poisson)
    assert evaluate.resampling_words(exact) == "exact bootstrap, 500 resamples"
    with pytest.raises(ValueError, match="unknown resampling method 'jackknife': one of exact, poisson-sequential"):
        evaluate.resample_gain("jackknife", *data, 500, 0.9, seed=5)


@pytest.mark.parametrize("method", ["exact", "poisson-sequential"])
def test_a_recorded_interval_is_redone_by_its_own_method(method: str) -> None:
    data = gains_data(3_000, 38.0)
    recorded = evaluate.resample_gain(method, *data, 1000, 0.95, seed=9)
    assert evaluate.redo_resampling(recorded, *data, seed=123) == recorded  # its own seed, not today's


def test_a_record_from_before_the_method_was_recorded_is_redone_by_the_exact_bootstrap() -> None:
    data = gains_data(800, 35.0)
    old: dict[str, Any] = evaluate.bootstrap_improvement(*data, 2000, 0.95, seed=42)  # what evidence held then
    assert "method" not in old
    assert evaluate.redo_resampling(old, *data, seed=42) == old
    sequential_stop = {"first_look": 600, "look_every": 300, "mc_z": 2.58}
    changed = evaluate.resample_gain(evaluate.POISSON, *data, 2000, 0.95, seed=42, **sequential_stop)
    assert {k: changed[k] for k in sequential_stop} == sequential_stop
    assert evaluate.redo_resampling(changed, *data, seed=0) == changed  # its recorded stop rule, not today's
