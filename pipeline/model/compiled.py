"""A fitted model compiled for scoring: its Pipeline converted to ONNX and run by ONNX Runtime, trusted only
after it predicts the version's holdout as the Pipeline does; the Pipeline itself wherever that fails.

The joblib `Pipeline` stays the system of record: the graph is built from it and checked on the version's
holdout once (`for_version`: the holdout from `train.holdout_rows`, then `compile_model`), at the first load
on a machine (never at promotion, which reads no artifact), and kept as a cache beside the artifacts
(`compiled/<artifact sha256>.json` and `.onnx`), found by the artifact's hash and checked against its own: another artifact, other libraries or a damaged
entry are never served from it, they are compiled again. `predict` takes the frame `Pipeline.predict` takes,
and `describe` is what `GET /v1/models/{model}` shows under `scoring`.

What runs where. ONNX has no date type and no missing text, so three things are prepared in numpy before the
graph, each exactly as the Pipeline's own first steps compute them: age in years from the date pair
(`features.AgeFromDates`: whole days between the dates, over 365.25), and each text column with its missing
values filled by the fitted most-frequent imputer (`missing_as_nan` and `SimpleImputer`). Everything fitted
after them (the median imputers, the scalers, the one-hot encoder, the estimator) is converted by skl2onnx
from the fitted objects themselves, in double precision; two converters are replaced because skl2onnx's
lose precision (`convert_double_imputer`, `convert_tree_ensemble`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from pipeline.contract.config import DatasetContract
from pipeline.model.features import AgeFromDates, missing_as_nan, model_inputs, typed_dates
from pipeline.registry import records
from pipeline.store import artifacts, crypto
from pipeline.store.artifacts import ArtifactIntegrityError
from pipeline.workspace import Workspace

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

RELATIVE_TOLERANCE = 1e-6   # |onnx - pipeline| <= 1e-6 |pipeline| + ABSOLUTE_TOLERANCE, row by row
ABSOLUTE_TOLERANCE = 1e-9   # in outcome units: only matters for a prediction within 1e-3 of zero
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}  # ml opset 3: tree ensembles with double thresholds and leaf values
FAMILIES = {Ridge: "ridge", RandomForestRegressor: "random_forest",
            HistGradientBoostingRegressor: "hist_gradient_boosting"}


class NotCompilable(ValueError):
    """A step of the Pipeline has no exact ONNX form here; the message names the step."""


@dataclass(frozen=True)
class Prepared:
    """One input of the graph and how a frame's columns become it: `kind` is "age" (a birth and event date
    pair), "number" (one numeric column) or "text" (one categorical column, missing filled with `fill`)."""

    name: str
    kind: str
    columns: tuple[str, ...]
    fill: str | None = None


def family_of(model: Pipeline) -> str:
    """The model family of a Pipeline's estimator, or its class name if it is not a shipped family."""
    estimator = model.steps[-1][1]
    return FAMILIES.get(type(estimator), type(estimator).__name__)


def ages_in_years(birth: np.ndarray, event: np.ndarray) -> np.ndarray:
    """`ages.age_in_years` on datetime64 arrays (NaN where either is NaT): whole days, floored, over 365.25."""
    missing = np.isnat(birth) | np.isnat(event)
    with np.errstate(invalid="ignore"):
        days = (event - birth) // np.timedelta64(1, "D")
    ages: np.ndarray = np.where(missing, np.nan, days.astype("float64") / 365.25)
    return ages


def as_datetime64(column: pd.Series, position: int) -> np.ndarray:
    """A date column as naive datetime64 values (UTC wall-clock for zoned ones), as `AgeFromDates` reads it."""
    if not pd.api.types.is_datetime64_any_dtype(column.dtype):
        column = typed_dates(column, position)  # refuses text with the Pipeline's own error
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        column = column.dt.tz_convert(None)
    values: np.ndarray = column.to_numpy()
    return values


def text_values(column: pd.Series, fill: str) -> np.ndarray | None:
    """A text column with missing values filled, shaped for the graph; None if it holds anything but text,
    which the graph could not compare the way the one-hot encoder compares objects."""
    values = column.to_numpy(dtype=object, copy=True)  # a copy: the caller's frame is not filled in
    missing = pd.isna(values)
    typed_text = isinstance(column.dtype, pd.StringDtype)  # holds only text and missing values: no need to look
    if not typed_text and not all(isinstance(value, str) for value in values[~missing]):
        return None
    values[missing] = fill
    text: np.ndarray = values.astype(str).reshape(-1, 1)
    return text


def number_values(column: pd.Series) -> np.ndarray | None:
    """A numeric column as float64 with NaN for missing, shaped for the graph; None if it is not numeric."""
    if not pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
        return None
    numbers: np.ndarray = column.to_numpy(dtype="float64", na_value=np.nan).reshape(-1, 1)
    return numbers


def prepared_values(X: pd.DataFrame, prepared: Prepared) -> np.ndarray | None:
    """One graph input from the frame's columns; None if they hold values it cannot take exactly."""
    if prepared.kind == "age":
        birth, event = (as_datetime64(X[name], i) for i, name in enumerate(prepared.columns))
        return ages_in_years(birth, event).reshape(-1, 1)
    if prepared.kind == "text":
        return text_values(X[prepared.columns[0]], str(prepared.fill))
    return number_values(X[prepared.columns[0]])


def graph_inputs(X: pd.DataFrame, inputs: tuple[Prepared, ...]) -> dict[str, np.ndarray] | None:
    """The graph's inputs from a frame of the contract's columns; None when a column holds values the graph
    cannot take exactly (the caller then asks the Pipeline, which predicts them or refuses them itself)."""
    feeds = {}
    for prepared in inputs:
        values = prepared_values(X, prepared)
        if values is None:
            return None
        feeds[prepared.name] = values
    return feeds


def row_values(rows: list[dict[str, Any]], prepared: Prepared) -> np.ndarray:
    """One graph input from plain typed rows (`pipeline.serving.records`: None for missing, dates as naive
    datetimes, numbers as int or float, text as str), as `prepared_values` makes it from their frame."""
    if prepared.kind == "age":
        birth, event = (np.array([np.datetime64("NaT") if r[c] is None else r[c] for r in rows],
                                 dtype="datetime64[us]") for c in prepared.columns)
        return ages_in_years(birth, event).reshape(-1, 1)
    [column] = prepared.columns
    if prepared.kind == "text":
        return np.array([str(prepared.fill) if r[column] is None else r[column] for r in rows], dtype=str).reshape(-1, 1)
    return np.array([np.nan if r[column] is None else float(r[column]) for r in rows], dtype="float64").reshape(-1, 1)


def unfit_columns(X: pd.DataFrame, inputs: tuple[Prepared, ...]) -> list[str]:
    """The columns whose values the graph cannot take exactly: a numeric column of another dtype, or a
    categorical one holding something other than text."""
    return [column for prepared in inputs if prepared_values(X, prepared) is None for column in prepared.columns]


def split_transformer(name: str, step: Any, columns: list[str], contract: DatasetContract) -> tuple[
        list[Prepared], Any]:
    """One ColumnTransformer entry as the graph inputs prepared for it (not yet named) and the fitted steps
    the graph runs on them."""
    steps = step.steps if isinstance(step, Pipeline) else [(name, step)]
    first = steps[0][1]
    if isinstance(first, AgeFromDates):
        return [Prepared("", "age", tuple(columns))], step[1:]
    if isinstance(first, FunctionTransformer) and first.func is missing_as_nan:
        imputer = steps[1][1] if len(steps) > 2 else None
        if not isinstance(imputer, SimpleImputer) or imputer.add_indicator or len(imputer.statistics_) != len(columns):
            raise NotCompilable(f"transformer '{name}': missing_as_nan is not followed by a SimpleImputer "
                                "with one statistic per column and a step after it")
        fills = [str(value) for value in imputer.statistics_]
        return [Prepared("", "text", (column,), fill) for column, fill in zip(columns, fills, strict=True)], step[2:]
    numeric = set(contract.names_with_role("numeric"))
    if not set(columns) <= numeric:
        raise NotCompilable(f"transformer '{name}' reads {sorted(set(columns) - numeric)}, which are not numeric "
                            f"features, through {type(first).__name__}: no prepared input for it")
    return [Prepared("", "number", (column,)) for column in columns], step


def graph_pipeline(model: Pipeline, contract: DatasetContract) -> tuple[Pipeline, tuple[Prepared, ...]]:
    """The fitted Pipeline as skl2onnx will convert it, and the prepared inputs it reads: the same fitted
    steps, each ColumnTransformer entry reading its prepared inputs (named input_0, input_1, ...: skl2onnx
    rewrites names that are not identifiers) instead of its columns."""
    features, estimator = model.steps[0][1], model.steps[-1][1]
    if len(model.steps) != 2 or not isinstance(features, ColumnTransformer):
        raise NotCompilable(f"the Pipeline's steps are {[name for name, _ in model.steps]}, not (features, model) "
                            "with a ColumnTransformer first")
    entries: list[tuple[str, Any, list[str]]] = []
    inputs: list[Prepared] = []
    for name, step, columns in features.transformers_:
        if isinstance(step, str):
            if step != "drop":
                raise NotCompilable(f"transformer '{name}' is '{step}'; only 'drop' is compiled")
            continue
        prepared, tail = split_transformer(name, step, list(columns), contract)
        named = [dataclasses.replace(p, name=f"input_{len(inputs) + i}") for i, p in enumerate(prepared)]
        entries.append((name, tail, [p.name for p in named]))
        inputs.extend(named)
    rewired = copy.copy(features)  # a shallow copy: the model's own ColumnTransformer is left as it was
    rewired.transformers_ = entries
    return Pipeline([("features", rewired), ("model", estimator)]), tuple(inputs)


def initial_types(inputs: tuple[Prepared, ...]) -> list[tuple[str, Any]]:
    """skl2onnx's declaration of the graph inputs: one column each, text as strings, the rest as doubles."""
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    return [(p.name, StringTensorType([None, 1]) if p.kind == "text" else DoubleTensorType([None, 1]))
            for p in inputs]


def convert_double_imputer(scope: Any, operator: Any, container: Any) -> None:
    """SimpleImputer on doubles: NaN replaced by the fitted statistics, in double (skl2onnx's Imputer
    node holds float32 statistics, and ONNX Runtime has no double Imputer)."""
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters.common import concatenate_variables
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer
    from skl2onnx.proto import onnx_proto

    imputer = operator.raw_operator
    if not isinstance(operator.inputs[0].type, DoubleTensorType):
        convert_sklearn_imputer(scope, operator, container)
        return
    statistics = np.asarray(imputer.statistics_, dtype="float64")
    if imputer.add_indicator or not pd.isna(imputer.missing_values) or np.isnan(statistics).any():
        raise NotCompilable("a SimpleImputer with an indicator, a missing value other than NaN, or a column "
                            "that was empty when fitted")
    features = concatenate_variables(scope, operator.inputs, container)
    fill, missing = scope.get_unique_variable_name("fill"), scope.get_unique_variable_name("missing")
    container.add_initializer(fill, onnx_proto.TensorProto.DOUBLE, [1, statistics.size], statistics.tolist())
    container.add_node("IsNaN", [features], [missing], name=scope.get_unique_operator_name("IsNaN"))
    container.add_node("Where", [missing, fill, features], operator.outputs[0].full_name,
                       name=scope.get_unique_operator_name("Where"))


def tree_attributes(estimator: Any) -> dict[str, Any]:
    """A forest's or a boosted ensemble's trees as TreeEnsembleRegressor attributes, values in double."""
    from skl2onnx.common.tree_ensemble import (
        add_tree_to_attribute_pairs,
        add_tree_to_attribute_pairs_hist_gradient_boosting,
        get_default_tree_regressor_attribute_pairs,
    )

    attributes: dict[str, Any] = get_default_tree_regressor_attribute_pairs()
    attributes["n_targets"] = 1
    if isinstance(estimator, RandomForestRegressor):
        for index, tree in enumerate(estimator.estimators_):
            add_tree_to_attribute_pairs(attributes, False, tree.tree_, index, 1.0 / len(estimator.estimators_),
                                        0, False, False, dtype=np.float64)
        return attributes
    for index, predictors in enumerate(estimator._predictors):
        if len(predictors) != 1 or predictors[0].nodes["is_categorical"].any():
            raise NotCompilable("a HistGradientBoostingRegressor with several trees per iteration or "
                                "categorical splits")
        add_tree_to_attribute_pairs_hist_gradient_boosting(attributes, False, predictors[0], index, 1.0, 0, False,
                                                           False, dtype=np.float64)
    attributes["base_values"] = [float(np.ravel(estimator._baseline_prediction)[0])]
    attributes["nodes_missing_value_tracks_true"] = [int(go_left) for go_left in
                                                     attributes["nodes_missing_value_tracks_true"]]
    return attributes


def convert_tree_ensemble(scope: Any, operator: Any, container: Any) -> None:
    """A random forest or histogram gradient boosting regressor with scikit-learn's double thresholds and
    leaf values (skl2onnx rounds both to float32). A forest compares float32 inputs to its double thresholds,
    as scikit-learn's trees do; boosting compares doubles. ONNX Runtime sums the trees in double and gives
    float32 (ml opset 3), cast back to double: within 6e-8 relative of scikit-learn's sum."""
    from onnx import numpy_helper
    from skl2onnx.proto import onnx_proto

    estimator = operator.raw_operator
    attributes = tree_attributes(estimator)
    for key in ("nodes_values", "nodes_hitrates", "target_weights", "base_values"):
        if key in attributes:
            values = np.asarray(attributes.pop(key), dtype="float64")
            attributes[f"{key}_as_tensor"] = numpy_helper.from_array(values, f"{key}_as_tensor")
    features = operator.inputs[0].full_name
    if isinstance(estimator, RandomForestRegressor):
        as_float, rounded = scope.get_unique_variable_name("as_float"), scope.get_unique_variable_name("rounded")
        container.add_node("Cast", [features], [as_float], to=onnx_proto.TensorProto.FLOAT,
                           name=scope.get_unique_operator_name("Cast"))
        container.add_node("Cast", [as_float], [rounded], to=onnx_proto.TensorProto.DOUBLE,
                           name=scope.get_unique_operator_name("Cast"))
        features = rounded
    summed = scope.get_unique_variable_name("summed")
    container.add_node("TreeEnsembleRegressor", [features], [summed], op_domain="ai.onnx.ml", op_version=3,
                       name=scope.get_unique_operator_name("TreeEnsembleRegressor"), **attributes)
    container.add_node("Cast", [summed], operator.outputs[0].full_name, to=onnx_proto.TensorProto.DOUBLE,
                       name=scope.get_unique_operator_name("Cast"))


CONVERTERS = {SimpleImputer: convert_double_imputer, RandomForestRegressor: convert_tree_ensemble,
              HistGradientBoostingRegressor: convert_tree_ensemble}


class OnnxScorer:
    """A converted graph in one ONNX Runtime session (one thread), with the inputs it reads. The graph is
    given as converted (a ModelProto) or as its serialized bytes (from the cache: no onnx import needed)."""

    def __init__(self, graph: onnx.ModelProto | bytes, inputs: tuple[Prepared, ...]) -> None:
        self.graph, self.inputs = graph, inputs
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # a request's few rows: no pool to wake,
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL  # and concurrent requests do not
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # spin on the two cores
        self.session = onnxruntime.InferenceSession(self.graph_bytes(), options, providers=["CPUExecutionProvider"])

    def graph_bytes(self) -> bytes:
        """The graph serialized, as ONNX Runtime and the cache take it."""
        return self.graph if isinstance(self.graph, bytes) else self.graph.SerializeToString()

    def predict(self, X: pd.DataFrame) -> np.ndarray | None:
        """Predictions for a frame holding the contract's feature columns, or None if its values need the Pipeline."""
        feeds = graph_inputs(X, self.inputs)
        if feeds is None:
            return None
        return self.run(feeds)

    def predict_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """Predictions for plain typed rows (`row_values`), with no frame built for them."""
        return self.run({prepared.name: row_values(rows, prepared) for prepared in self.inputs})

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        predicted: np.ndarray = np.asarray(self.session.run(None, feeds)[0], dtype="float64").ravel()
        return predicted


def convert(model: Pipeline, contract: DatasetContract) -> OnnxScorer:
    """The fitted Pipeline as an ONNX graph in a session; raises if a step has no exact ONNX form."""
    from skl2onnx import convert_sklearn  # heavy (seconds on a busy machine): only where a graph is built

    rewired, inputs = graph_pipeline(model, contract)
    graph = convert_sklearn(rewired, initial_types=initial_types(inputs), target_opset=TARGET_OPSET,
                            custom_conversion_functions=CONVERTERS)
    return OnnxScorer(graph, inputs)


@dataclass(frozen=True)
class Parity:
    """How far the graph's predictions are from the Pipeline's on the parity rows."""

    rows: int
    max_relative_difference: float
    worst_row: str
    failed: bool

    def reason(self) -> str:
        return (f"ONNX differs from the Pipeline on the holdout: worst relative difference "
                f"{self.max_relative_difference:.2e} at {self.worst_row} (tolerance {RELATIVE_TOLERANCE:g} "
                f"relative + {ABSOLUTE_TOLERANCE:g}), over {self.rows} rows")


def check_parity(expected: np.ndarray, got: np.ndarray, labels: list[str]) -> Parity:
    """Every prediction within RELATIVE_TOLERANCE of the Pipeline's (plus ABSOLUTE_TOLERANCE near zero)."""
    close = np.isclose(got, expected, rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE, equal_nan=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.abs(got - expected) / np.maximum(np.abs(expected), np.finfo("float64").tiny)
    relative = np.where(close & np.isnan(relative), 0.0, relative)
    worst = int(np.argmax(np.where(np.isnan(relative), np.inf, relative)))
    label = f"{labels[worst]} (ONNX {float(got[worst])!r}, Pipeline {float(expected[worst])!r})"
    return Parity(len(expected), float(relative[worst]), label, not bool(close.all()))


def row_labels(rows: pd.DataFrame, contract: DatasetContract) -> list[str]:
    """How a parity failure names a row: by its id where the rows carry it, else by position."""
    if contract.id_column in rows.columns:
        return [f"row {contract.id_column}={value}" for value in rows[contract.id_column]]
    return [f"row {position}" for position in range(len(rows))]


@dataclass(frozen=True)
class Compiled:
    """A model ready to score: ONNX (`method` "onnx") or the Pipeline itself ("pipeline", `reason` says why)."""

    model: Pipeline
    contract: DatasetContract
    family: str
    method: str
    reason: str | None
    parity: Parity | None
    scorer: OnnxScorer | None = None

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predictions for a typed frame of the contract's columns, as `model.predict(model_inputs(frame))`."""
        predicted = None
        if self.scorer is not None and set(self.contract.feature_names()) <= set(frame.columns):
            predicted = self.scorer.predict(frame)  # reads its columns from the frame: no copy of it
        if predicted is None:
            predicted = np.asarray(self.model.predict(model_inputs(frame, self.contract)), dtype="float64")
        return predicted

    def predict_rows(self, rows: list[dict[str, Any]]) -> np.ndarray | None:
        """Predictions for plain typed rows holding every contract column (`pipeline.serving.records`), through
        the graph with no frame; None when this model scores through its Pipeline, which needs the frame."""
        return None if self.scorer is None else self.scorer.predict_rows(rows)

    def describe(self) -> dict[str, Any]:
        """What `GET /v1/models/{model}` shows of how the model scores."""
        return {"scoring": self.method, "family": self.family, "reason": self.reason,
                "parity_rows": self.parity.rows if self.parity else None,
                "max_relative_difference": self.parity.max_relative_difference if self.parity else None}


def fallback(model: Pipeline, contract: DatasetContract, reason: str, parity: Parity | None = None) -> Compiled:
    """The Pipeline itself, with the reason it is not compiled (logged)."""
    family = family_of(model)
    log.warning("%s scores through its scikit-learn Pipeline, not ONNX: %s", family, reason)
    return Compiled(model, contract, family, "pipeline", f"{family}: {reason}", parity)


def checked(model: Pipeline, contract: DatasetContract, rows: pd.DataFrame, scorer: OnnxScorer) -> Compiled:
    """The converted model if it predicts `rows` as the Pipeline does, else the Pipeline with the worst row."""
    if rows.empty:
        return fallback(model, contract, "no holdout rows to check ONNX against the Pipeline on")
    X = model_inputs(rows, contract)
    got = scorer.predict(X)
    if got is None:
        return fallback(model, contract, f"the holdout's columns {unfit_columns(X, scorer.inputs)} hold values "
                                         "the ONNX inputs cannot carry exactly (numbers not typed as numbers, "
                                         "categories that are not text)")
    parity = check_parity(np.asarray(model.predict(X), dtype="float64"), got, row_labels(rows, contract))
    if parity.failed:
        return fallback(model, contract, parity.reason(), parity)
    log.debug("%s scores through ONNX: max relative difference %.2e from the Pipeline over %d holdout rows",
             family_of(model), parity.max_relative_difference, parity.rows)
    return Compiled(model, contract, family_of(model), "onnx", None, parity, scorer)


def compile_model(model: Pipeline, contract: DatasetContract, rows: pd.DataFrame) -> Compiled:
    """The Pipeline converted to ONNX and checked on `rows` (the version's holdout, contract columns);
    the Pipeline itself, with the reason, if it does not convert or does not match."""
    try:
        scorer = convert(model, contract)
    except Exception as exc:  # noqa: BLE001 - any failure to convert scores through the Pipeline, and says why
        return fallback(model, contract, f"does not convert to ONNX ({type(exc).__name__}: {first_line(exc)})")
    try:
        return checked(model, contract, rows, scorer)
    except Exception as exc:  # noqa: BLE001 - a graph that errors on the holdout is not trusted
        return fallback(model, contract, f"ONNX fails on the holdout ({type(exc).__name__}: {first_line(exc)})")


def first_line(exc: BaseException) -> str:
    """An exception's message, its first line (skl2onnx's run to a paragraph)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


CACHE_FORMAT = 1  # bump when what a cache entry holds, or how a graph is built, changes


def cache_fingerprint(contract: DatasetContract) -> dict[str, Any]:
    """What a compiled graph depends on besides the artifact: the converting and running libraries and the
    contract's feature columns and types. An entry made under another fingerprint is rebuilt."""
    types = contract.column_types()
    return {"format": CACHE_FORMAT, "onnx": metadata.version("onnx"), "onnxruntime": onnxruntime.__version__,
            "skl2onnx": metadata.version("skl2onnx"), "sklearn": metadata.version("scikit-learn"),
            "features": [[name, types.get(name)] for name in contract.feature_names()]}


def cache_paths(artifact_dir: Path, artifact_hash: str) -> tuple[Path, Path]:
    """A version's cache entry, named by its artifact's SHA-256: (the description, the graph)."""
    folder = artifact_dir / "compiled"
    return folder / f"{artifact_hash}.json", folder / f"{artifact_hash}.onnx"


def save_compiled(store: Path | artifacts.ArtifactStore, artifact_hash: str, result: Compiled) -> None:
    """Keep a compile's outcome (the graph, its inputs and parity; or the reason it falls back) for the
    artifact, so the next process loads it instead of converting and checking again. Both files are sealed
    (each under a data key of its own) when the store encrypts: the graph holds the model's parameters."""
    described, graph_path = cache_paths(artifacts.store_root(store), artifact_hash)
    entry: dict[str, Any] = {"artifact_hash": artifact_hash, "fingerprint": cache_fingerprint(result.contract),
                             "family": result.family, "method": result.method, "reason": result.reason,
                             "parity": dataclasses.asdict(result.parity) if result.parity else None}
    if result.scorer is not None:
        graph = result.scorer.graph_bytes()
        entry["graph_sha256"] = artifacts.sha256_bytes(graph)
        entry["inputs"] = [dataclasses.asdict(p) for p in result.scorer.inputs]
        described.parent.mkdir(parents=True, exist_ok=True)
        artifacts.write_sealed(store, "compiled", graph_path, graph)
    described.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_sealed(store, "compiled", described, json.dumps(entry, indent=1).encode())


def load_compiled(store: Path | artifacts.ArtifactStore, artifact_hash: str, model: Pipeline,
                  contract: DatasetContract) -> Compiled | None:
    """The artifact's cached compile, or None when there is none, or it was made for another artifact, other
    libraries or another contract, or its graph's bytes are not the ones it recorded, or it does not open with
    the store's keys (then it is rebuilt)."""
    described, graph_path = cache_paths(artifacts.store_root(store), artifact_hash)
    keys = artifacts.store_keys(store)
    try:
        entry = json.loads(crypto.read_plain(described, keys))
        if entry.get("artifact_hash") != artifact_hash or entry.get("fingerprint") != cache_fingerprint(contract):
            return None
        parity = Parity(**entry["parity"]) if entry.get("parity") else None
        if entry["method"] != "onnx":
            return Compiled(model, contract, entry["family"], entry["method"], entry["reason"], parity)
        graph = artifacts.read_verified(graph_path, entry["graph_sha256"], keys)
        inputs = tuple(Prepared(p["name"], p["kind"], tuple(p["columns"]), p["fill"]) for p in entry["inputs"])
        scorer = OnnxScorer(graph, inputs)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged entry is rebuilt, never trusted
        log.warning("compiled model cache %s not used, it is rebuilt: %s: %s", described, type(exc).__name__,
                    first_line(exc))
        return None
    return Compiled(model, contract, entry["family"], "onnx", None, parity, scorer)


def for_version(ws: Workspace, model: Pipeline, version: int) -> Compiled:
    """A registered version's model compiled for scoring, checked on the version's own holdout; the Pipeline
    itself, with the reason, where the holdout cannot be read or the check fails.

    The outcome is kept on disk beside the artifacts, named by the version's artifact hash (`compiled/`): the
    next process loads the checked graph instead of converting and checking it again. `model` must be the
    version's artifact as `ws.load_model` gives it (hash-checked): the cache is found by that hash."""
    from pipeline.model import train

    with ws.engine.connect() as conn:
        record = records.get_model(conn, version, ws.model)
    store, contract = ws.store, ws.config.dataset
    cached = load_compiled(store, record["artifact_hash"], model, contract)
    if cached is not None:
        return cached
    fraction = float(record["params"].get("holdout_fraction", ws.config.training.holdout_fraction))
    try:
        _, rows = train.holdout_rows(ws, record["snapshot_hash"], fraction)
    except (OSError, LookupError, ValueError, ArtifactIntegrityError) as exc:
        return fallback(model, contract, f"its holdout could not be read to check ONNX against "
                                         f"({type(exc).__name__}: {first_line(exc)})")
    result = compile_model(model, contract, rows)
    try:
        save_compiled(store, record["artifact_hash"], result)
    except OSError as exc:  # a read-only store still scores; the next process compiles again
        log.warning("compiled model of version %s not cached: %s", version, exc)
    return result
