"""Prediction intervals with a stated coverage, and the guarantee their method really has.

Split conformal (every version trained since issue 32): the version's model never saw its holdout, so the
holdout is a calibration set. With its n |residuals| sorted, the k-th smallest, k = ceil((n + 1) *
coverage), is the half-width. When the holdout's records and a new record are exchangeable, the new
outcome falls inside forecast ± half-width with probability at least `coverage` (and at most coverage +
1 / (n + 1)), averaged over calibration sets and new records: a marginal guarantee, not one per patient
or per slice. `serving.interval_conditional_on` names a slice (promotion.slices) to calibrate within
each of its groups instead (Mondrian split conformal): the same guarantee within every group, a wider
interval for a small group, and none (an infinite half-width, cut to the possible outcomes) for a group
with fewer than 1 / (1 - coverage) - 1 holdout rows or none.

Out-of-fold (versions trained before): the residuals of the model search's cross-validation around the
model fitted on all rows, MAPIE's CrossConformalRegressor(method="base"). That rule has no finite-sample
guarantee; it reached its nominal coverage on this study because ridge is stable. A version keeps the
method it recorded.

What the interval rests on is stored with the version (`pipeline.model_intervals`): the method, the
coverage, the rank, the number of residuals and their hash, a few of their quantiles, the groups'
half-widths when conditional, and the inputs that recompute them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline.contract.config import DatasetContract, SliceSpec, TrainingPolicy
from pipeline.data.casting import DTYPES
from pipeline.model import evaluate, train
from pipeline.model.features import model_inputs
from pipeline.registry import records
from pipeline.workspace import Workspace

METHOD = ("split conformal: the ceil((n + 1) * coverage)-th smallest |residual| of the version's holdout, a "
          "calibration set it never trained on")
OUT_OF_FOLD = "split conformal: the ceil((n + 1) * coverage)-th smallest out-of-fold |residual| of the model search"
GUARANTEES = {
    METHOD: ("at least the stated share of outcomes inside, at most 1 / (n + 1) more, when the holdout and new "
             "records are exchangeable: on average over records, not per patient"),
    OUT_OF_FOLD: ("none in finite samples: out-of-fold residuals around the model fitted on all rows (MAPIE's "
                  "CrossConformalRegressor, method 'base'); it reached its coverage here because ridge is stable"),
}
MARGINAL = ""  # conditional_on of an interval calibrated on the whole holdout
QUANTILE_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Interval:
    version: int
    coverage: float
    half_width: float
    method: str
    bounds: tuple[float, float] | None = None  # outcomes outside are impossible (promotion.prediction_range)
    conditional_on: SliceSpec | None = None  # calibrated within each group of this slice (Mondrian)
    group_half_widths: Mapping[str, float] | None = None  # the half-width of each group it was calibrated in

    @property
    def guarantee(self) -> str:
        """What the method promises, in a sentence."""
        promise = GUARANTEES.get(self.method, "unknown method")
        if self.conditional_on is not None and self.method == METHOD:
            return f"{promise}; within each {self.conditional_on.name} group (Mondrian), not only overall"
        return promise

    def half_widths(self, frame: pd.DataFrame, contract: DatasetContract) -> np.ndarray:
        """Each record's half-width: its group's when calibrated per group (infinite for a group never seen)."""
        if self.conditional_on is None or self.group_half_widths is None:
            return np.full(len(frame), self.half_width)
        labels = evaluate.slice_labels(frame, contract, self.conditional_on)
        widths: np.ndarray = labels.map(dict(self.group_half_widths)).astype("float64").fillna(math.inf).to_numpy()
        return widths


def conformal_quantile(abs_residuals: np.ndarray, coverage: float) -> tuple[float, int, np.ndarray]:
    """The ceil((n + 1) * coverage)-th smallest finite |residual| (infinite when n is too small), its rank, and
    the sorted residuals."""
    ordered = np.sort(np.asarray(abs_residuals, dtype="float64")[np.isfinite(abs_residuals)])
    rank = math.ceil((len(ordered) + 1) * coverage)
    return (float(ordered[rank - 1]) if 0 < rank <= len(ordered) else math.inf), rank, ordered


def conformal_record(abs_residuals: np.ndarray, coverage: float, inputs: dict[str, Any],
                     method: str = METHOD) -> dict[str, Any]:
    """The half-width at `coverage` and everything needed to check or recompute it."""
    half_width, rank, ordered = conformal_quantile(abs_residuals, coverage)
    n = len(ordered)
    return {"coverage": coverage, "method": method, "half_width": half_width, "residuals": n, "rank": rank,
            "residuals_sha256": hashlib.sha256(ordered.tobytes()).hexdigest(),
            "residual_quantiles": {str(q): float(np.quantile(ordered, q)) for q in QUANTILE_LEVELS} if n else {},
            "inputs": inputs, "conditional_on": MARGINAL, "group_half_widths": None}


def calibration_record(abs_residuals: np.ndarray, labels: pd.Series | None, spec: SliceSpec | None,
                       coverage: float, inputs: dict[str, Any]) -> dict[str, Any]:
    """Split conformal on a calibration set's |residuals|: over all of them, or (`spec` and each row's group
    in `labels`) within each group of the slice."""
    record = conformal_record(abs_residuals, coverage, inputs)
    if spec is None or labels is None:
        return record
    residuals = np.asarray(abs_residuals, dtype="float64")
    groups = {str(g): conformal_quantile(residuals[(labels == g).to_numpy()], coverage)[0]
              for g in sorted(labels.unique(), key=evaluate.group_order)}
    return {**record, "conditional_on": spec.name, "group_half_widths": groups}


def holdout_record(model: Any, holdout: pd.DataFrame, contract: DatasetContract, coverage: float,
                   spec: SliceSpec | None, inputs: dict[str, Any]) -> dict[str, Any]:
    """The version's split conformal interval, calibrated on its holdout (per group of `spec` if given)."""
    predicted = np.asarray(model.predict(model_inputs(holdout, contract)), dtype="float64")
    residuals = np.abs(holdout[contract.target_column].to_numpy(dtype="float64") - predicted)
    labels = evaluate.slice_labels(holdout, contract, spec).reset_index(drop=True) if spec is not None else None
    return calibration_record(residuals, labels, spec, coverage, {**inputs, "calibration_rows": len(holdout)})


def calibration_inputs(snapshot_hash: str, artifact_hash: str, holdout_fraction: float) -> dict[str, Any]:
    """What recomputes a version's calibration residuals: its model, its snapshot and the holdout it splits."""
    return {"calibration": "holdout", "snapshot_hash": snapshot_hash, "artifact_hash": artifact_hash,
            "holdout_fraction": holdout_fraction}


def search_inputs(family: str, policy: TrainingPolicy, rows: int) -> dict[str, Any]:
    """What recomputes a version's out-of-fold residuals: the search's family, parameters, folds and rows."""
    return {"family": family, "family_params": policy.families[family], "seed": policy.seed,
            "cv_folds": policy.cv_folds, "search_max_rows": policy.search_max_rows, "train_rows": rows}


def record(conn: Connection, version: int, interval: dict[str, Any]) -> None:
    """Store a version's interval inputs once per coverage and slice (append-only: a second write keeps the first)."""
    conn.execute(sa.text("""
        INSERT INTO pipeline.model_intervals (version, coverage, conditional_on, method, half_width, residuals, rank,
                                              residuals_sha256, residual_quantiles, inputs, group_half_widths)
        VALUES (:version, :coverage, :conditional_on, :method, :half_width, :residuals, :rank, :residuals_sha256,
                CAST(:quantiles AS jsonb), CAST(:inputs AS jsonb), CAST(:groups AS jsonb))
        ON CONFLICT (version, coverage, conditional_on) DO NOTHING
    """), {**interval, "version": version, "quantiles": json.dumps(interval["residual_quantiles"]),
           "inputs": json.dumps(interval["inputs"], default=str),
           "conditional_on": interval.get("conditional_on") or MARGINAL,
           "groups": json.dumps(_finite_or_none(interval.get("group_half_widths")))})


def _finite_or_none(groups: Mapping[str, float] | None) -> dict[str, float | None] | None:
    """Group half-widths as jsonb holds them: an infinite one (no finite bound) as null."""
    return None if groups is None else {k: (v if math.isfinite(v) else None) for k, v in groups.items()}


def stored(conn: Connection, version: int, coverage: float, conditional_on: str = MARGINAL) -> dict[str, Any] | None:
    row = conn.execute(sa.text("""
        SELECT * FROM pipeline.model_intervals WHERE version = :v AND coverage = :c AND conditional_on = :on
    """), {"v": version, "c": coverage, "on": conditional_on}).mappings().first()
    return dict(row) if row is not None else None


def recorded_method(conn: Connection, version: int) -> str:
    """The method the version's intervals were recorded with (its first); METHOD for one with none yet."""
    method = conn.scalar(sa.text("""
        SELECT method FROM pipeline.model_intervals WHERE version = :v ORDER BY created_at, coverage LIMIT 1
    """), {"v": version})
    return str(method) if method is not None else METHOD


def recompute(ws: Workspace, version: int, coverage: float, spec: SliceSpec | None = None) -> dict[str, Any]:
    """A version's interval at another coverage (or slice) with the method it recorded: calibrated on its
    holdout again, or (a version trained before issue 32) from the search's same folds, so the same residuals."""
    with ws.engine.connect() as conn:
        model = records.get_model(conn, version, ws.model)
        method = recorded_method(conn, version)
    recorded = model["params"]
    fraction = float(recorded["holdout_fraction"])
    if method == OUT_OF_FOLD:
        return out_of_fold_record(ws, model, coverage)
    _, holdout = train.holdout_rows(ws, model["snapshot_hash"], fraction)
    return holdout_record(ws.load_model(model["artifact_hash"]), holdout, ws.config.dataset, coverage, spec,
                          calibration_inputs(model["snapshot_hash"], model["artifact_hash"], fraction))


def out_of_fold_record(ws: Workspace, model: dict[str, Any], coverage: float) -> dict[str, Any]:
    """The out-of-fold interval of a version that recorded that method: the search's folds, refitted."""
    recorded = model["params"]
    policy = replace(ws.config.training, seed=recorded["seed"], cv_folds=recorded["cv_folds"],
                     search_max_rows=recorded.get("search_max_rows", ws.config.training.search_max_rows),
                     families={model["model_family"]: recorded["family_params"]})
    frame = ws.load_snapshot(model["snapshot_hash"])
    train_rows, _ = train.split_holdout(frame, ws.config.dataset, recorded["holdout_fraction"])
    residuals = train.out_of_fold_residuals(train_rows, ws.config.dataset, policy, model["model_family"])
    return conformal_record(residuals, coverage, search_inputs(model["model_family"], policy, len(train_rows)),
                            OUT_OF_FOLD)


def conditional_spec(ws: Workspace) -> SliceSpec | None:
    """The slice `serving.interval_conditional_on` names (None: one interval for all records)."""
    name = ws.config.serving.interval_conditional_on
    return next((s for s in ws.config.promotion.slices if s.name == name), None) if name else None


def for_version(ws: Workspace, version: int, coverage: float | None = None, spec: SliceSpec | None = None,
                marginal: bool = False) -> Interval:
    """The version's interval at `coverage` (default `serving.interval_coverage`), calibrated per group of
    `spec` (default `serving.interval_conditional_on`; `marginal`: over all records): stored, or recomputed
    with the method the version recorded and stored. A version with the out-of-fold method keeps one
    interval for all records."""
    coverage = ws.config.serving.interval_coverage if coverage is None else coverage
    spec = None if marginal else spec or conditional_spec(ws)
    with ws.engine.connect() as conn:
        if spec is not None and recorded_method(conn, version) == OUT_OF_FOLD:
            spec = None
        found = stored(conn, version, coverage, spec.name if spec else MARGINAL)
    if found is None:
        found = recompute(ws, version, coverage, spec)
        with ws.engine.begin() as conn:
            record(conn, version, found)
    groups = found.get("group_half_widths")
    return Interval(version, float(found["coverage"]), float(found["half_width"]), str(found["method"]),
                    ws.config.promotion.prediction_range, spec if groups else None,
                    {str(k): math.inf if v is None else float(v) for k, v in groups.items()} if groups else None)


def forecast(model: Any, frame: pd.DataFrame, contract: DatasetContract, interval: Interval) -> pd.DataFrame:
    """Each record's forecast and the interval around it, cut to the outcomes that are possible (which
    loses no coverage: no outcome lies outside them)."""
    predicted = np.asarray(model.predict(model_inputs(frame, contract)), dtype="float64")
    lower, upper = around(predicted, interval.half_widths(frame, contract), interval)
    return pd.DataFrame({"prediction": predicted, "lower": lower, "upper": upper}, index=frame.index)


def forecast_rows(model: Any, rows: list[dict[str, Any]], interval: Interval) -> tuple[
        np.ndarray, np.ndarray, np.ndarray] | None:
    """`forecast` of plain typed rows (`pipeline.serving.records`) with no frame: predictions, lower and upper
    bounds; None when the model needs a frame (`Compiled.predict_rows`) or the interval is per group."""
    if not scores_rows(model, interval):
        return None
    predicted = model.predict_rows(rows)
    if predicted is None:
        return None
    return (predicted, *around(predicted, np.full(len(rows), interval.half_width), interval))


def scores_rows(model: Any, interval: Interval) -> bool:
    """Whether `forecast_rows` forecasts plain rows with this model and interval: a compiled graph (not the
    Pipeline, which reads a frame) and one half-width for every record (the groups need the frame's slice)."""
    return getattr(model, "scorer", None) is not None and (
        interval.conditional_on is None or interval.group_half_widths is None)


def around(predicted: np.ndarray, half_widths: np.ndarray, interval: Interval) -> tuple[np.ndarray, np.ndarray]:
    """The interval's bounds around each prediction, cut to the possible outcomes."""
    lower, upper = predicted - half_widths, predicted + half_widths
    if interval.bounds is not None:
        lower, upper = np.clip(lower, *interval.bounds), np.clip(upper, *interval.bounds)
    return lower, upper


def holdout_coverage(observed: np.ndarray, predicted: np.ndarray, half_width: float | np.ndarray) -> float:
    """The share of held-out outcomes inside forecast ± half-width."""
    return float(np.mean(np.abs(np.asarray(observed, dtype="float64") - predicted) <= half_width))


def slice_coverage(inside: np.ndarray, labels: pd.Series, coverage: float, confidence: float = 0.95
                   ) -> list[dict[str, Any]]:
    """Per group of a slice: outcomes, the share inside their intervals, its exact (Clopper-Pearson) interval,
    and whether that interval excludes the stated coverage ('below', 'above' or 'ok')."""
    from scipy import stats

    rows = []
    hits = pd.Series(np.asarray(inside, dtype=bool), index=labels.index)
    for group in sorted(labels.unique(), key=evaluate.group_order):
        part = hits[labels == group]
        k, n = int(part.sum()), len(part)
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
        verdict = "below" if ci.high < coverage else "above" if ci.low > coverage else "ok"
        rows.append({"group": str(group), "rows": n, "coverage": k / n, "low": float(ci.low), "high": float(ci.high),
                     "verdict": verdict})
    return rows


def input_hashes(frame: pd.DataFrame, contract: DatasetContract) -> list[str]:
    """SHA-256 of each record's model input values as text (`column=value` in the contract's order, a
    missing value empty), built by Arrow; the same values always give the same hash."""
    return [h.decode() for h in input_digests(frame, contract).tolist()]


def input_digests(frame: pd.DataFrame, contract: DatasetContract) -> np.ndarray:
    """`input_hashes` as one numpy array of 64-byte hex texts (dtype S64): what a binary COPY writes as it is,
    with no Python string per record."""
    return table_digests(pa.Table.from_pandas(model_inputs(frame, contract), preserve_index=False))


def row_hashes(rows: list[dict[str, Any]], contract: DatasetContract) -> list[str]:
    """`input_hashes` of plain typed rows (`pipeline.serving.records`: None for missing, dates as naive
    datetimes), with no frame: the values go to Arrow as the type `Table.from_pandas` gives their column's
    dtype and are cast to text by the same cast, one array per type rather than per column (a cast reads each
    value alone), so the same values give the same text and the same hash."""
    features = contract.feature_names()
    types = arrow_types(tuple((c, DTYPES[t]) for c, t in contract.column_types().items() if c in features))
    by_type: dict[pa.DataType, list[str]] = {}
    for column in features:
        by_type.setdefault(types[column], []).append(column)
    texts: dict[str, list[str]] = {}
    for kind, columns in by_type.items():
        values = pa.array([r[c] for c in columns for r in rows], type=kind, from_pandas=True)
        cast = ["" if text is None else text for text in values.cast(pa.string()).to_pylist()]  # fill_null's text
        for k, column in enumerate(columns):
            texts[column] = cast[k * len(rows):(k + 1) * len(rows)]
    return [hashlib.sha256("\x1f".join(f"{c}={texts[c][n]}" for c in features).encode()).hexdigest()
            for n in range(len(rows))]


@functools.lru_cache(maxsize=8)
def arrow_types(dtypes: tuple[tuple[str, str], ...]) -> dict[str, pa.DataType]:
    """The Arrow type `Table.from_pandas` gives each (column, pandas dtype)."""
    empty = pd.DataFrame({c: pd.Series([], dtype=d) for c, d in dtypes})
    schema = pa.Schema.from_pandas(empty, preserve_index=False)
    return {c: schema.field(c).type for c, _ in dtypes}


def table_hashes(inputs: pa.Table) -> list[str]:
    """SHA-256 of each row of `inputs` as `column=value` text joined by \x1f, a missing value empty."""
    return [h.decode() for h in table_digests(inputs).tolist()]


def table_digests(inputs: pa.Table) -> np.ndarray:
    """`table_hashes` as one numpy array of 64-byte hex texts (S64): each row's digest taken in one loop, the
    hex text of all of them made at once."""
    parts = []
    for column in inputs.column_names:
        values = inputs.column(column)
        text = values.cast(pa.string()) if not pa.types.is_null(values.type) else pa.nulls(len(values), pa.string())
        parts.append(pc.binary_join_element_wise(f"{column}=", pc.fill_null(text, ""), ""))
    joined = pc.binary_join_element_wise(*parts, "\x1f") if parts else pa.array([""] * len(inputs))
    sha256 = hashlib.sha256
    digests = b"".join([sha256(value).digest() for value in joined.cast(pa.binary()).to_pylist()])  # UTF-8 bytes
    return np.frombuffer(digests.hex().encode(), dtype="S64")
