"""Prediction intervals with a stated coverage: split conformal on out-of-fold residuals.

The model search cross-validates the chosen family on seeded folds; each training row then has a
prediction from a model that never saw it. With n such |residuals| sorted, the k-th smallest, for
k = ceil((n + 1) * coverage), is the half-width: a new record's outcome falls inside forecast ±
half-width with probability at least `coverage` when records are exchangeable (split conformal
prediction). The residuals come from models fitted on (cv_folds - 1) / cv_folds of the rows, so the
interval is, if anything, a little wide for the model fitted on all of them.

What the interval rests on is stored with the version (`pipeline.model_intervals`): the method, the
coverage, the rank, the number of residuals and their hash, a few of their quantiles, and the inputs
that recompute them (family, parameters, folds, seed, rows). The model card shows the coverage it
reached on the holdout, which no residual came from.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline.contract.config import DatasetContract, TrainingPolicy
from pipeline.model import train
from pipeline.model.features import model_inputs
from pipeline.registry import records
from pipeline.workspace import Workspace

METHOD = "split conformal: the ceil((n + 1) * coverage)-th smallest out-of-fold |residual| of the model search"
QUANTILE_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Interval:
    version: int
    coverage: float
    half_width: float
    method: str
    bounds: tuple[float, float] | None = None  # outcomes outside are impossible (promotion.prediction_range)


def conformal_record(abs_residuals: np.ndarray, coverage: float, inputs: dict[str, Any]) -> dict[str, Any]:
    """The half-width at `coverage` and everything needed to check or recompute it."""
    ordered = np.sort(np.asarray(abs_residuals, dtype="float64")[np.isfinite(abs_residuals)])
    n = len(ordered)
    rank = math.ceil((n + 1) * coverage)
    half_width = float(ordered[rank - 1]) if 0 < rank <= n else math.inf  # too few residuals: no finite bound
    return {"coverage": coverage, "method": METHOD, "half_width": half_width, "residuals": n, "rank": rank,
            "residuals_sha256": hashlib.sha256(ordered.tobytes()).hexdigest(),
            "residual_quantiles": {str(q): float(np.quantile(ordered, q)) for q in QUANTILE_LEVELS} if n else {},
            "inputs": inputs}


def search_inputs(family: str, policy: TrainingPolicy, rows: int) -> dict[str, Any]:
    """What recomputes a version's out-of-fold residuals: the search's family, parameters, folds and rows."""
    return {"family": family, "family_params": policy.families[family], "seed": policy.seed,
            "cv_folds": policy.cv_folds, "search_max_rows": policy.search_max_rows, "train_rows": rows}


def record(conn: Connection, version: int, interval: dict[str, Any]) -> None:
    """Store a version's interval inputs once per coverage (append-only: a second write keeps the first)."""
    conn.execute(sa.text("""
        INSERT INTO pipeline.model_intervals (version, coverage, method, half_width, residuals, rank,
                                              residuals_sha256, residual_quantiles, inputs)
        VALUES (:version, :coverage, :method, :half_width, :residuals, :rank, :residuals_sha256,
                CAST(:quantiles AS jsonb), CAST(:inputs AS jsonb))
        ON CONFLICT (version, coverage) DO NOTHING
    """), {**interval, "version": version, "quantiles": json.dumps(interval["residual_quantiles"]),
           "inputs": json.dumps(interval["inputs"], default=str)})


def stored(conn: Connection, version: int, coverage: float) -> dict[str, Any] | None:
    row = conn.execute(sa.text("SELECT * FROM pipeline.model_intervals WHERE version = :v AND coverage = :c"),
                       {"v": version, "c": coverage}).mappings().first()
    return dict(row) if row is not None else None


def recompute(ws: Workspace, version: int, coverage: float) -> dict[str, Any]:
    """A version's interval from its recorded snapshot and search parameters (a version trained before
    intervals were stored, or another coverage): the same folds, so the same residuals."""
    with ws.engine.connect() as conn:
        model = records.get_model(conn, version, ws.model)
    recorded = model["params"]
    policy = replace(ws.config.training, seed=recorded["seed"], cv_folds=recorded["cv_folds"],
                     search_max_rows=recorded.get("search_max_rows", ws.config.training.search_max_rows),
                     families={model["model_family"]: recorded["family_params"]})
    frame = ws.load_snapshot(model["snapshot_hash"])
    train_rows, _ = train.split_holdout(frame, ws.config.dataset, recorded["holdout_fraction"])
    residuals = train.out_of_fold_residuals(train_rows, ws.config.dataset, policy, model["model_family"])
    return conformal_record(residuals, coverage, search_inputs(model["model_family"], policy, len(train_rows)))


def for_version(ws: Workspace, version: int, coverage: float | None = None) -> Interval:
    """The version's interval at `coverage` (default `serving.interval_coverage`): stored, or recomputed
    from its record and stored."""
    coverage = ws.config.serving.interval_coverage if coverage is None else coverage
    with ws.engine.connect() as conn:
        found = stored(conn, version, coverage)
    if found is None:
        found = recompute(ws, version, coverage)
        with ws.engine.begin() as conn:
            record(conn, version, found)
    return Interval(version, float(found["coverage"]), float(found["half_width"]), str(found["method"]),
                    ws.config.promotion.prediction_range)


def forecast(model: Any, frame: pd.DataFrame, contract: DatasetContract, interval: Interval) -> pd.DataFrame:
    """Each record's forecast and the interval around it, cut to the outcomes that are possible (which
    loses no coverage: no outcome lies outside them)."""
    predicted = np.asarray(model.predict(model_inputs(frame, contract)), dtype="float64")
    lower, upper = predicted - interval.half_width, predicted + interval.half_width
    if interval.bounds is not None:
        lower, upper = np.clip(lower, *interval.bounds), np.clip(upper, *interval.bounds)
    return pd.DataFrame({"prediction": predicted, "lower": lower, "upper": upper}, index=frame.index)


def holdout_coverage(observed: np.ndarray, predicted: np.ndarray, half_width: float) -> float:
    """The share of held-out outcomes inside forecast ± half-width."""
    return float(np.mean(np.abs(np.asarray(observed, dtype="float64") - predicted) <= half_width))


def input_hashes(frame: pd.DataFrame, contract: DatasetContract) -> list[str]:
    """SHA-256 of each record's model input values as text (`column=value` in the contract's order, a
    missing value empty), built by Arrow; the same values always give the same hash."""
    inputs = pa.Table.from_pandas(model_inputs(frame, contract), preserve_index=False)
    parts = []
    for column in inputs.column_names:
        values = inputs.column(column)
        text = values.cast(pa.string()) if not pa.types.is_null(values.type) else pa.nulls(len(values), pa.string())
        parts.append(pc.binary_join_element_wise(f"{column}=", pc.fill_null(text, ""), ""))
    joined = pc.binary_join_element_wise(*parts, "\x1f") if parts else pa.array([""] * len(inputs))
    return [hashlib.sha256(value.encode()).hexdigest() for value in joined.to_pylist()]
