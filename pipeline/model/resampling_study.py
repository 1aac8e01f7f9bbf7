"""The agreement study: does the sequential Poisson bootstrap decide as the exact paired bootstrap does?

Generated candidate/champion pairs (clear wins, clear losses, ties, small gains near the decision's edge,
heavy-tailed errors: t with 2 and 3 degrees of freedom, lognormal), holdouts of 50 to 10^6 rows, each
judged by both methods with the same policy (confidence, at most `samples` resamples). Two things must hold:
- wherever the sequential method says its decision is settled (the Clopper-Pearson band of the share of
  resamples where the candidate is not better excludes (1 - confidence) / 2), that decision (the interval's
  low end above zero) is the exact bootstrap's;
- each interval endpoint agrees within the Monte-Carlo band: the two methods' 99.9 % bands of where the
  bootstrap's quantile lies (order statistics of each one's resamples) overlap.
A pair whose decision is not settled after the most resamples is inside the band: reported, never counted
as agreement or disagreement. `bench.resampling` runs the 300 pairs; the unit tests run a smaller seeded set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.model import evaluate

# kind -> (error distribution, candidate's error scale against the champion's, correlation of the two errors)
KINDS: dict[str, tuple[str, float, float]] = {
    "clear win": ("normal", 0.80, 0.5),
    "clear loss": ("normal", 1.25, 0.5),
    "tie": ("normal", 1.00, 0.9),
    "small gain": ("normal", 0.98, 0.95),
    "t, 2 df": ("t2", 0.90, 0.5),
    "t, 3 df": ("t3", 0.95, 0.5),
    "lognormal": ("lognormal", 0.90, 0.5),
}


@dataclass(frozen=True)
class Pair:
    kind: str
    rows: int
    seed: int


def study_pairs(count: int, min_rows: int = 50, max_rows: int = 1_000_000, seed: int = 36) -> list[Pair]:
    """`count` pairs, the kinds taken in turn, holdout sizes spread evenly in log scale from min_rows to max_rows."""
    sizes = np.round(np.geomspace(min_rows, max_rows, count)).astype(int)
    kinds = list(KINDS)
    return [Pair(kinds[i % len(kinds)], int(n), seed * 100_003 + i) for i, n in enumerate(sizes)]


def _noise(rng: np.random.Generator, distribution: str, n: int) -> np.ndarray:
    if distribution in ("t2", "t3"):
        return np.asarray(rng.standard_t(int(distribution[1]), n), dtype=np.float64)
    if distribution == "lognormal":
        return np.asarray(rng.lognormal(0.0, 1.0, n) * rng.choice([-1.0, 1.0], n), dtype=np.float64)
    return rng.standard_normal(n)


def pair_predictions(pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed outcomes and the champion's and candidate's predictions of one pair."""
    distribution, scale, correlation = KINDS[pair.kind]
    rng = np.random.default_rng(pair.seed)
    observed = rng.normal(150.0, 75.0, pair.rows)
    champion_error = 40.0 * _noise(rng, distribution, pair.rows)
    own = 40.0 * _noise(rng, distribution, pair.rows)
    candidate_error = scale * (correlation * champion_error + np.sqrt(1 - correlation ** 2) * own)
    return observed, observed + champion_error, observed + candidate_error


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def compare(pair: Pair, samples: int = 2000, confidence: float = 0.95, seed: int = 42) -> dict[str, Any]:
    """One pair judged by both methods: decisions, endpoints with their bands, resamples and seconds."""
    observed, champion, candidate = pair_predictions(pair)
    tail = (1.0 - confidence) / 2.0
    started = time.perf_counter()
    gains = evaluate.exact_gains(observed, champion, candidate, samples, seed)
    exact_seconds = time.perf_counter() - started
    exact_low, exact_high = float(np.quantile(gains, tail)), float(np.quantile(gains, 1.0 - tail))
    started = time.perf_counter()
    new = evaluate.resample_gain(evaluate.POISSON, observed, champion, candidate, samples, confidence, seed)
    new_seconds = time.perf_counter() - started
    exact_low_band, exact_high_band = evaluate.endpoint_band(gains, tail), evaluate.endpoint_band(gains, 1.0 - tail)
    settled = bool(new["settled"])
    return {"kind": pair.kind, "rows": pair.rows, "exact_low": exact_low, "exact_high": exact_high,
            "exact_promotes": exact_low > 0, "exact_seconds": exact_seconds,
            "low": new["low"], "high": new["high"], "promotes": new["low"] > 0, "samples": new["samples"],
            "settled": settled, "share_not_better": new["share_not_better"], "seconds": new_seconds,
            "decision_agrees": (new["low"] > 0) == (exact_low > 0) if settled else None,
            "low_agrees": _overlap(new["low_band"], exact_low_band),
            "high_agrees": _overlap(new["high_band"], exact_high_band),
            "exact_low_in_band": new["low_band"][0] <= exact_low <= new["low_band"][1],
            "exact_high_in_band": new["high_band"][0] <= exact_high <= new["high_band"][1]}


def run_study(pairs: list[Pair], samples: int = 2000, confidence: float = 0.95, seed: int = 42,
              progress: Any = None) -> list[dict[str, Any]]:
    """Every pair compared; `progress`, when given, is called with each row as it is done."""
    rows = []
    for pair in pairs:
        rows.append(compare(pair, samples, confidence, seed))
        if progress is not None:
            progress(rows[-1])
    return rows


def verdict(rows: list[dict[str, Any]]) -> tuple[bool, list[str]]:
    """Whether the study holds (every settled decision the exact one's, every endpoint's bands overlapping), and
    the lines that say so."""
    settled = [r for r in rows if r["settled"]]
    disagree = [r for r in settled if not r["decision_agrees"]]
    endpoints = [r for r in rows if not (r["low_agrees"] and r["high_agrees"])]
    inside = [r for r in rows if not r["settled"]]
    inside_differ = [r for r in inside if r["promotes"] != r["exact_promotes"]]
    in_band = sum(r["exact_low_in_band"] + r["exact_high_in_band"] for r in rows)
    ok = not disagree and not endpoints
    lines = [
        f"pairs: {len(rows)}; settled outside the Monte-Carlo band: {len(settled)}, decisions the exact "
        f"bootstrap's: {len(settled) - len(disagree)}" + (f" (DIFFERENT: {_names(disagree)})" if disagree else ""),
        f"inside the band (not settled at the most resamples): {len(inside)}, of which the decision differs from "
        f"the exact one's: {len(inside_differ)}",
        f"endpoints whose 99.9 % bands overlap the exact bootstrap's: {2 * len(rows) - _failed_ends(rows)} of "
        f"{2 * len(rows)}" + (f" (NOT: {_names(endpoints)})" if endpoints else ""),
        f"exact endpoints inside the new method's own band: {in_band} of {2 * len(rows)}",
        f"verdict: {'AGREES' if ok else 'DOES NOT AGREE'} with the exact paired bootstrap outside the band",
    ]
    return ok, lines


def _failed_ends(rows: list[dict[str, Any]]) -> int:
    return sum((not r["low_agrees"]) + (not r["high_agrees"]) for r in rows)


def _names(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['kind']} n={r['rows']}" for r in rows[:10]) + (" ..." if len(rows) > 10 else "")


def table(rows: list[dict[str, Any]]) -> list[str]:
    """One line a pair: its kind and rows, both decisions and intervals, resamples drawn and seconds."""
    lines = [f"{'kind':<11} {'rows':>8} {'exact [low, high]':>23} {'new [low, high]':>23} {'B':>5} "
             f"{'settled':>7} {'same':>5} {'ends':>4} {'exact s':>8} {'new s':>7}"]
    for r in rows:
        same = "-" if r["decision_agrees"] is None else ("yes" if r["decision_agrees"] else "NO")
        ends = "ok" if r["low_agrees"] and r["high_agrees"] else "NO"
        lines.append(f"{r['kind']:<11} {r['rows']:>8} [{r['exact_low']:+9.4f}, {r['exact_high']:+9.4f}] "
                     f"[{r['low']:+9.4f}, {r['high']:+9.4f}] {r['samples']:>5} {str(r['settled']):>7} {same:>5} "
                     f"{ends:>4} {r['exact_seconds']:>8.3f} {r['seconds']:>7.3f}")
    return lines
