"""Evaluate: score candidate and champion on the same held-out rows and decide promotion."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
from threadpoolctl import threadpool_limits

from pipeline.contract.ages import monitored_columns
from pipeline.contract.config import RESAMPLING_METHODS, DatasetContract, PromotionPolicy, SliceSpec
from pipeline.model.features import model_inputs
from pipeline.runtime import threads


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str

    @property
    def label(self) -> str:
        return "promote" if self.promote else "keep"


def regression_metrics(observed: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {
        "rmse": float(root_mean_squared_error(observed, predicted)),
        "mae": float(mean_absolute_error(observed, predicted)),
        "r2": float(r2_score(observed, predicted)),
        "n": int(len(observed)),
    }


def score_model(model: Any, holdout: pd.DataFrame, contract: DatasetContract) -> dict[str, float]:
    """Held-out metrics of a fitted model pipeline."""
    predicted = model.predict(model_inputs(holdout, contract))
    if not np.all(np.isfinite(predicted)):
        raise ValueError("model produced non-finite predictions on the holdout")
    return regression_metrics(holdout[contract.target_column].to_numpy(), predicted)


BOOTSTRAP_BLOCK = 16  # resamples drawn at once: 16 x the holdout's rows as int32 (13 MB at 200,000 rows)


def _resample_blocks(rng: np.random.Generator, n: int, samples: int) -> Iterator[np.ndarray]:
    """The row indices of every resample, BOOTSTRAP_BLOCK resamples at a time: the numbers
    `rng.integers(0, n, size=n)` would give resample after resample (the generator fills a block
    draw by draw, and int32 draws are the int64 ones' values for n < 2**31)."""
    for start in range(0, samples, BOOTSTRAP_BLOCK):
        yield rng.integers(0, n, size=(min(BOOTSTRAP_BLOCK, samples - start), n), dtype=np.int32)


def _ahead(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The blocks, the next one drawn on a second thread while this one is counted (numpy draws without
    the GIL): only when the task may use two threads."""
    if threads.task_threads() < 2:
        yield from blocks
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, blocks, None)
        while (block := pending.result()) is not None:
            pending = pool.submit(next, blocks, None)
            yield block


def bootstrap_improvement(observed: np.ndarray, champion: np.ndarray, candidate: np.ndarray,
                          samples: int, confidence: float, seed: int) -> dict[str, float]:
    """Paired bootstrap of RMSE(champion) - RMSE(candidate) over the same resampled holdout rows."""
    gains = exact_gains(observed, champion, candidate, samples, seed)
    tail = (1.0 - confidence) / 2.0
    return {"mean": float(gains.mean()), "low": float(np.quantile(gains, tail)),
            "high": float(np.quantile(gains, 1.0 - tail)), "confidence": confidence, "samples": samples}


def exact_gains(observed: np.ndarray, champion: np.ndarray, candidate: np.ndarray, samples: int,
                seed: int) -> np.ndarray:
    """The gain of each of the exact bootstrap's resamples, in the order they are drawn."""
    rng = np.random.default_rng(seed)
    n = len(observed)
    squared_errors = np.column_stack([(champion - observed) ** 2, (candidate - observed) ** 2])
    gains = np.empty(samples)
    sample = 0
    for block in _ahead(_resample_blocks(rng, n, samples)):
        for drawn in block:
            # How often each row was drawn, then both error sums in one pass over the rows: gathering
            # the drawn rows' errors instead was 2.4x slower at 2M rows (random reads miss the cache).
            times_drawn = np.bincount(drawn, minlength=n).astype(np.float64)
            champion_mse, candidate_mse = (times_drawn @ squared_errors) / n
            gains[sample] = np.sqrt(champion_mse) - np.sqrt(candidate_mse)
            sample += 1
    return gains


# --- how the gain is resampled: every method by name, so a recorded decision is redone by its own method ---

EXACT, POISSON = RESAMPLING_METHODS  # rows drawn with replacement, all resamples from one stream; Poisson(1) row
# weights, one stream per resample, stopped once the decision is settled
MC_Z = 3.29  # the Monte-Carlo band: 99.9 % (two-sided) around the decision probability and each interval endpoint
FIRST_LOOK, LOOK_EVERY = 400, 200  # resamples before the first look at the decision, and between looks
# Resamples weighed in one product: 8 x the holdout's rows as float64 (64 bytes a row, as the exact method's 16
# int32 draws; 64 MB at 10^6 rows). Always 8, the last chunk padded, so that every sum is added in the same order.
RESAMPLES_AT_ONCE = 8
# Poisson(1) by inversion of a 16-bit uniform: entry u is the smallest k with P(X <= k) > (u + 0.5) / 65536, so
# the distribution function is within 2**-17 of Poisson's at every k and each weight's probability within 2**-16
# (mean 1, variance 0.99997; weights above 8, probability 1e-6, never drawn). numpy's own Poisson draws were 4x
# slower than these 16 bits and a gather.
_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1)) for k in range(12)])
POISSON_WEIGHTS = np.searchsorted(_CDF, (np.arange(65536) + 0.5) / 65536, side="right").astype(np.float64)


def resample_gain(method: str, observed: np.ndarray, champion: np.ndarray, candidate: np.ndarray,
                  samples: int, confidence: float, seed: int, **stop: Any) -> dict[str, Any]:
    """The interval of RMSE(champion) - RMSE(candidate) by the named method, with the method and its parameters,
    so that `redo_resampling` gives the same numbers from the record alone. `stop`: a sequential method's
    first_look, look_every and mc_z, when not today's defaults."""
    if method == EXACT:
        return {"method": EXACT, "seed": seed,
                **bootstrap_improvement(observed, champion, candidate, samples, confidence, seed)}
    if method == POISSON:
        return poisson_improvement(observed, champion, candidate, samples, confidence, seed, **stop)
    raise ValueError(f"unknown resampling method {method!r}: one of {', '.join(RESAMPLING_METHODS)}")


def redo_resampling(recorded: dict[str, Any], observed: np.ndarray, champion: np.ndarray,
                    candidate: np.ndarray, seed: int) -> dict[str, Any]:
    """A recorded interval computed again by the method and parameters it names; a record without a method
    predates the choice (the exact bootstrap), and one without a seed was drawn with training.seed, `seed`."""
    redone = resample_gain(recorded.get("method", EXACT), observed, champion, candidate,
                           int(recorded.get("max_samples", recorded["samples"])), float(recorded["confidence"]),
                           int(recorded.get("seed", seed)),
                           **{k: recorded[k] for k in ("first_look", "look_every", "mc_z") if k in recorded})
    return redone if "method" in recorded else {k: v for k, v in redone.items() if k not in ("method", "seed")}


def poisson_weights(seed: int, resample: int, out: np.ndarray, rows: np.ndarray) -> None:
    """Resample `resample`'s Poisson(1) weight of each row, into `out`, from its own stream: the same numbers
    whatever the chunking or how many resamples were drawn before it. `rows`: scratch for the table's indices."""
    bits = np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(resample,)))
    np.copyto(rows, bits.random_raw((len(out) + 3) // 4).astype("<u8", copy=False).view("<u2")[:len(out)])
    np.take(POISSON_WEIGHTS, rows, out=out)


def poisson_gains(errors: np.ndarray, seed: int, first: int, count: int) -> np.ndarray:
    """The gain of resamples first..first+count-1; `errors` holds the champion's and candidate's squared errors
    and a row of ones (each resample's weight total), 3 by rows, so one product gives all three sums."""
    n = errors.shape[1]
    weights, rows = np.empty((RESAMPLES_AT_ONCE, n)), np.empty(n, dtype=np.intp)
    gains = np.empty(count)
    for start in range(0, count, RESAMPLES_AT_ONCE):
        drawn = min(count - start, RESAMPLES_AT_ONCE)
        for offset in range(drawn):
            poisson_weights(seed, first + start + offset, weights[offset], rows)
        weights[drawn:] = 0.0  # a short last chunk: the product keeps its shape, the padding is dropped
        champion_sum, candidate_sum, total = errors @ weights.T
        total = np.maximum(total, 1.0)  # no row drawn (probability e^-n): an empty resample, gain 0
        gains[start:start + drawn] = (np.sqrt(champion_sum / total) - np.sqrt(candidate_sum / total))[:drawn]
    return gains


def decision_band(gains: np.ndarray, z: float = MC_Z) -> tuple[float, float, float]:
    """The share of resamples whose gain is not above zero, with its exact (Clopper-Pearson) band at `z`."""
    from scipy.special import betaincinv

    b, k = len(gains), int(np.sum(gains <= 0))
    outside = math.erfc(z / math.sqrt(2.0)) / 2.0  # each side's probability: 0.0005 at z = 3.29
    low = 0.0 if k == 0 else float(betaincinv(k, b - k + 1, outside))
    high = 1.0 if k == b else float(betaincinv(k + 1, b - k, 1.0 - outside))
    return k / b, low, high


def endpoint_band(gains: np.ndarray, quantile: float, z: float = MC_Z) -> list[float]:
    """Where the bootstrap's `quantile` lies, as far as `len(gains)` resamples tell: the order statistics around
    it that bracket it with the band's probability (binomial counts, no assumption about the gains' shape)."""
    ordered, b = np.sort(gains), len(gains)
    spread = z * np.sqrt(b * quantile * (1 - quantile))
    low, high = int(np.floor(b * quantile - spread)), int(np.ceil(b * quantile + spread))
    return [float(ordered[max(low, 0)]), float(ordered[min(high, b - 1)])]


def poisson_improvement(observed: np.ndarray, champion: np.ndarray, candidate: np.ndarray, samples: int,
                        confidence: float, seed: int, first_look: int = FIRST_LOOK, look_every: int = LOOK_EVERY,
                        mc_z: float = MC_Z) -> dict[str, Any]:
    """The paired Poisson bootstrap of RMSE(champion) - RMSE(candidate), stopped at the first look where the
    decision (the interval's low end above zero) lies outside the Monte-Carlo band; at most `samples` resamples."""
    errors = np.vstack([(champion - observed) ** 2, (candidate - observed) ** 2, np.ones(len(observed))])
    tail = (1.0 - confidence) / 2.0
    first_look = min(first_look, samples)
    with threadpool_limits(1, user_api="blas"):  # sums added in one order whatever the task's threads
        gains = poisson_gains(errors, seed, 0, first_look)
        while True:
            share, share_low, share_high = decision_band(gains, mc_z)
            settled = share_high < tail or share_low > tail
            if settled or len(gains) >= samples:
                break
            more = poisson_gains(errors, seed, len(gains), min(look_every, samples - len(gains)))
            gains = np.concatenate([gains, more])
    return {"method": POISSON, "seed": seed, "mean": float(gains.mean()), "low": float(np.quantile(gains, tail)),
            "high": float(np.quantile(gains, 1.0 - tail)), "confidence": confidence, "samples": len(gains),
            "max_samples": samples, "first_look": first_look, "look_every": look_every, "mc_z": mc_z,
            "stop_rule": "first look where the Clopper-Pearson band of the share of gains <= 0 excludes (1 - confidence) / 2",
            "share_not_better": share, "share_band": [share_low, share_high], "settled": settled,
            "low_band": endpoint_band(gains, tail, mc_z), "high_band": endpoint_band(gains, 1.0 - tail, mc_z)}


def resampling_words(recorded: dict[str, Any]) -> str:
    """How an interval was resampled, in a few words: its method, resamples and, for a sequential one, whether
    the decision was settled outside the Monte-Carlo band (a record without a method predates the choice: exact)."""
    method, samples = recorded.get("method", EXACT), int(recorded.get("samples", 0))
    if method != POISSON:
        return f"{method} bootstrap, {samples} resamples"
    band = math.erfc(recorded["mc_z"] / math.sqrt(2.0))
    state = ("settled outside" if recorded["settled"] else "still inside, at the most it draws,")
    return f"{method} bootstrap, {samples} resamples: the decision {state} the {1 - band:.1%} Monte-Carlo band"


MISSING_GROUP = "(missing)"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"
_BAND = re.compile(rf"^(?:<(?P<below>{_NUMBER})|>=(?P<above>{_NUMBER})|(?P<low>{_NUMBER})-(?P<high>{_NUMBER}))$")


def group_order(group: str) -> tuple[int, float, int, str]:
    """Sort key of a slice group in its natural order: bands ('<40', '40-60', '>=60') and numbers by value,
    other categories alphabetically after them, '(missing)' last; never as text ('10' before '9')."""
    band = _BAND.match(group)
    if band:
        if band["below"] is not None:
            return 0, float(band["below"]), -1, group
        if band["above"] is not None:
            return 0, float(band["above"]), 1, group
        return 0, float(band["low"]), 0, group
    try:
        return 0, float(group), 0, group
    except ValueError:
        return (2, 0.0, 0, group) if group == MISSING_GROUP else (1, 0.0, 0, group.casefold())


def slice_labels(frame: pd.DataFrame, contract: DatasetContract, spec: SliceSpec) -> pd.Series:
    """Which group of a slice each row falls in: its category, or its band ('<40', '40-60', '>=60')."""
    values = monitored_columns(frame, contract)[spec.column]
    if not spec.edges:
        return values.astype("string").fillna(MISSING_GROUP)
    edges = list(spec.edges)
    names = [f"<{edges[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:], strict=False)] + [f">={edges[-1]:g}"]
    bands = np.searchsorted(np.array(edges), values.to_numpy(float), side="right")
    return pd.Series(np.array(names, dtype=object)[bands], index=frame.index).where(values.notna(), MISSING_GROUP)


def slice_table(holdout: pd.DataFrame, contract: DatasetContract, policy: PromotionPolicy,
                candidate: np.ndarray, champion: np.ndarray | None) -> list[dict[str, Any]]:
    """RMSE of candidate (and champion) per slice group, with whether the group is large enough to judge."""
    observed = holdout[contract.target_column].to_numpy()
    rows = []
    for spec in policy.slices:
        codes, groups = pd.factorize(slice_labels(holdout, contract, spec).astype(str))  # each row's group, as a number
        for code, group in sorted(enumerate(groups), key=lambda pair: group_order(pair[1])):
            mask = codes == code
            row: dict[str, Any] = {"slice": spec.name, "group": str(group), "n": int(mask.sum()),
                   "judged": bool(mask.sum() >= policy.min_slice_rows),
                   "candidate_rmse": float(root_mean_squared_error(observed[mask], candidate[mask]))}
            if champion is not None:
                row["champion_rmse"] = float(root_mean_squared_error(observed[mask], champion[mask]))
                # relative change; an exact champion (RMSE 0) makes any error a huge, finite change
                row["change"] = row["candidate_rmse"] / max(row["champion_rmse"], 1e-9) - 1.0
            rows.append(row)
    return rows


def behaviour_checks(model: Any, holdout: pd.DataFrame, contract: DatasetContract, policy: PromotionPolicy,
                     predicted: np.ndarray | None = None) -> dict[str, Any]:
    """Plausible range, invariance to the patient id, and the directions medicine is sure of; `predicted`:
    the model's predictions on the holdout, when the caller has them already."""
    X = model_inputs(holdout, contract)
    predicted = model.predict(X) if predicted is None else predicted
    failures = []
    finite = bool(np.all(np.isfinite(predicted)))
    low, high = policy.prediction_range or (-np.inf, np.inf)
    in_range = bool(finite and predicted.min() >= low and predicted.max() <= high)
    if not finite:
        failures.append("non-finite predictions on the holdout")
    elif not in_range:
        failures.append(f"predictions span [{predicted.min():.1f}, {predicted.max():.1f}], outside [{low:g}, {high:g}]")
    id_invariant = True  # a model that is not given the id cannot depend on it
    if contract.id_column in X.columns:  # only new columns are new memory: the others are shared, not copied
        with_ids = X.assign(**{contract.id_column: X[contract.id_column].to_numpy()[::-1]})
        id_invariant = bool(np.array_equal(model.predict(with_ids), predicted))
    if not id_invariant:
        failures.append(f"predictions change with {contract.id_column}")
    directions = {}
    for feature, step in policy.directions.items():
        raised = X.assign(**{feature: X[feature] + step})
        worst = float((model.predict(raised) - predicted).min())
        directions[feature] = {"step": step, "worst_change": worst}
        if policy.max_drop is not None and worst < -policy.max_drop:
            failures.append(f"raising {feature} by {step:g} lowers a prediction by {-worst:.1f} (limit {policy.max_drop:g})")
    shown = predicted[np.isfinite(predicted)]
    return {"finite": finite, "in_range": in_range,
            "prediction_min": float(shown.min()) if len(shown) else None,
            "prediction_max": float(shown.max()) if len(shown) else None, "id_invariant": id_invariant,
            "directions": directions, "max_drop": policy.max_drop,
            "prediction_range": list(policy.prediction_range) if policy.prediction_range else None,
            "failures": failures, "passed": not failures}


def decide_promotion(evidence: dict[str, Any], policy: PromotionPolicy) -> Decision:
    """Fail closed; promote a first model that clears the floor and the baseline, or a candidate
    that beats the champion by the margin, significantly, and without hurting any slice."""
    missing = policy.missing_thresholds()
    if missing:
        return Decision(False, f"fail closed: promotion thresholds not configured: {', '.join(missing)}")
    if not evidence["behaviour"]["passed"]:
        return Decision(False, f"behaviour checks failed: {'; '.join(evidence['behaviour']['failures'])}")
    candidate, champion, baseline = evidence["candidate"], evidence.get("champion"), evidence["baseline"]
    if champion is None:
        problems = []
        if policy.min_r2 is not None and not candidate["r2"] >= policy.min_r2:  # NaN fails too
            problems.append(f"holdout R² {candidate['r2']:.3f} is under the floor {policy.min_r2}")
        if not candidate["rmse"] < baseline["rmse"]:
            problems.append(f"RMSE {candidate['rmse']:.3f} does not beat predicting the training mean ({baseline['rmse']:.3f})")
        if problems:
            return Decision(False, "no champion, and " + "; ".join(problems))
        return Decision(True, f"first model: holdout R² {candidate['r2']:.3f} clears the floor {policy.min_r2}, "
                              f"RMSE {candidate['rmse']:.3f} beats the training mean's {baseline['rmse']:.3f}")
    return _challenge(candidate, champion, evidence, policy)


def _challenge(candidate: dict[str, float], champion: dict[str, float], evidence: dict[str, Any],
               policy: PromotionPolicy) -> Decision:
    needed = champion["rmse"] * (1.0 - policy.margin)  # type: ignore[operator]
    boot = evidence["bootstrap"]
    verdict = (f"candidate RMSE {candidate['rmse']:.3f} vs champion {champion['rmse']:.3f} "
               f"(needs < {needed:.3f}, margin {policy.margin:.1%}); "
               f"{boot['confidence']:.0%} interval of the gain [{boot['low']:+.3f}, {boot['high']:+.3f}] "
               f"({resampling_words(boot)})")
    problems = []
    if not candidate["rmse"] < needed:  # strictly: an equally good model is no reason to switch
        problems.append("not better by the margin")
    if not boot["low"] > 0:
        problems.append("the gain is not significant")
    worse = [f"{r['slice']}={r['group']} ({r['change']:+.1%})" for r in evidence["slices"]
             if r["judged"] and r["change"] > policy.slice_tolerance]
    if worse:
        problems.append(f"worse by more than {policy.slice_tolerance:.0%} on {', '.join(worse)}")
    if problems:
        return Decision(False, f"does not beat the champion ({'; '.join(problems)}): {verdict}")
    return Decision(True, f"beats the champion: {verdict}")
