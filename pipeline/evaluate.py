"""Evaluate: score candidate and champion on the same held-out rows and decide promotion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from pipeline.config import DatasetContract, PromotionPolicy
from pipeline.features import model_inputs


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


def decide_promotion(
    candidate: dict[str, float], champion: dict[str, float] | None, policy: PromotionPolicy
) -> Decision:
    """Promote a first model that clears the floor, or a candidate that beats the champion by the margin."""
    if champion is None:
        if candidate["r2"] >= policy.min_r2:
            return Decision(True, f"first model: holdout R² {candidate['r2']:.3f} clears the floor {policy.min_r2}")
        return Decision(False, f"no champion, and holdout R² {candidate['r2']:.3f} is under the floor {policy.min_r2}")
    needed = champion["rmse"] * (1.0 - policy.margin)
    verdict = (
        f"candidate RMSE {candidate['rmse']:.3f} vs champion {champion['rmse']:.3f} "
        f"(needs < {needed:.3f}, margin {policy.margin:.1%})"
    )
    if candidate["rmse"] < needed:  # strictly: an equally good model is no reason to switch
        return Decision(True, f"beats the champion: {verdict}")
    return Decision(False, f"does not beat the champion: {verdict}")
