"""Train: cross-validate each model family on the training rows and fit the best one."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.metrics import root_mean_squared_error
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline

from pipeline.contract.config import ConfigError, DatasetContract, TrainingPolicy
from pipeline.contract.settings import PROJECT_ROOT
from pipeline.data import ingest
from pipeline.model.features import build_preprocessor, model_inputs
from pipeline.registry import records
from pipeline.runtime import memory, threads
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)

TRACKED_LIBRARIES = ("scikit-learn", "numpy", "pandas", "pyarrow", "joblib", "scipy", "great-expectations")


def make_estimator(family: str, params: dict[str, Any], seed: int, n_jobs: int | None) -> RegressorMixin:
    """The estimator of a model family, seeded."""
    if family == "ridge":  # centred in place: its input is the pipeline's own copy (one copy of it fewer)
        return Ridge(**{"copy_X": False, **params})
    if family == "random_forest":
        return RandomForestRegressor(random_state=seed, n_jobs=n_jobs, **params)
    if family == "hist_gradient_boosting":
        return HistGradientBoostingRegressor(random_state=seed, **params)
    raise ValueError(
        f"unknown model family '{family}' in training.families; "
        "use ridge, random_forest or hist_gradient_boosting"
    )


SET_BY_PIPELINE = {"random_state": "training.seed", "n_jobs": "training.n_jobs"}


def check_families(policy: TrainingPolicy) -> None:
    """Every family's parameters build its estimator and pass its own checks, without fitting anything: a
    parameter the estimator does not have, or a value it refuses, is a ConfigError naming the config key."""
    for family, params in policy.families.items():
        where = f"training.families.{family}"
        default = make_estimator(family, {}, policy.seed, 1)
        known = default.get_params(deep=False)
        for key in params:
            if key in SET_BY_PIPELINE and family != "ridge":
                raise ConfigError(f"{where}.{key}: set by {SET_BY_PIPELINE[key]}, not per family; remove it here")
            if key not in known:
                raise ConfigError(f"{where}.{key}: {family} ({type(default).__name__}) "
                                  f"has no parameter '{key}'; it takes {', '.join(sorted(known))}")
        estimator = make_estimator(family, params, policy.seed, 1)
        try:
            estimator._validate_params()  # scikit-learn's own parameter constraints, as fit checks them
        except (ValueError, TypeError) as exc:
            named = next((f".{k}" for k in params if f"'{k}' parameter" in str(exc)), "")
            raise ConfigError(f"{where}{named}: {exc}") from None


def build_model(contract: DatasetContract, family: str, policy: TrainingPolicy, n_jobs: int | None = 1) -> Pipeline:
    """Feature preparation and estimator as one scikit-learn Pipeline."""
    estimator = make_estimator(family, policy.families[family], policy.seed, n_jobs)
    return Pipeline([("features", build_preprocessor(contract)), ("model", estimator)])


def labelled_at(frame: pd.DataFrame, contract: DatasetContract) -> pd.Series:
    """When each row's label became known: its label time, or its record time where it has none (and for
    every row of a contract without one, or of a snapshot taken before the contract had one)."""
    recorded = frame[contract.timestamp_column]
    column = contract.labelled_at_column()
    if column == contract.timestamp_column or column not in frame.columns:
        return recorded
    return frame[column].where(frame[column].notna(), recorded)


def split_holdout(frame: pd.DataFrame, contract: DatasetContract, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out the most recently labelled rows (by `labelled_at`, then id) for evaluation."""
    trained, held = split_positions(frame, contract, fraction)
    return frame.iloc[trained], frame.iloc[held]


def split_positions(frame: pd.DataFrame, contract: DatasetContract, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The positions of `split_holdout`'s training rows and of its holdout rows, each in the split's order:
    a caller can take only the columns it needs."""
    order = labelled_order(labelled_at(frame, contract), frame[contract.id_column])
    n_holdout = max(1, int(round(len(order) * fraction)))
    if len(order) - n_holdout < 2:
        raise ValueError(f"only {len(order)} labelled rows: too few to hold out {fraction:.0%} and train")
    return order[:-n_holdout], order[-n_holdout:]


def split_columns(contract: DatasetContract) -> list[str]:
    """The columns a holdout split reads, and the outcome."""
    return list(dict.fromkeys([contract.timestamp_column, contract.labelled_at_column(), contract.id_column,
                               contract.target_column]))


def holdout_rows(ws: Workspace, snapshot_hash: str, fraction: float) -> tuple[float, pd.DataFrame]:
    """The mean outcome of a snapshot's training rows, and its holdout rows with every column
    (`split_holdout`'s rows, in its order), read without holding the whole snapshot: the split's
    keys are dropped before the holdout is read."""
    contract = ws.config.dataset
    with ws.engine.connect() as conn:
        records.get_snapshot(conn, snapshot_hash)  # registered, or a clear error naming it
    snapshot_hash = ws.live_snapshot(snapshot_hash)  # its redacted copy, when an erasure rewrote it
    with ingest.SnapshotFile(ws.snapshot_path(snapshot_hash), snapshot_hash, ws.store.keyring) as snapshot:
        keys = snapshot.read(split_columns(contract))
        trained, held = split_positions(keys, contract, fraction)
        train_mean = float(keys[contract.target_column].iloc[trained].mean())
        del keys, trained
        memory.give_back()
        return train_mean, snapshot.rows(held)


def labelled_order(at: pd.Series, ids: pd.Series) -> np.ndarray:
    """Row positions sorted by label time, then id, stably, missing times last: pandas' stable sort on both
    columns. Dates with whole-number ids that all have a value sort as int64 pairs by numpy's lexsort, which
    builds no hash table of every value (pandas factorizes each key); anything else goes through pandas."""
    dated = isinstance(at.dtype, pd.DatetimeTZDtype) or at.dtype.kind == "M"
    if dated and ids.dtype.kind == "i" and not ids.isna().any():
        when = at.array.asi8.copy()
        when[at.isna().to_numpy()] = np.iinfo(np.int64).max  # NaT sorts last, as in pandas
        order: np.ndarray = np.lexsort((ids.to_numpy(dtype="int64"), when))
        return order
    keys = pd.DataFrame({"at": at, "id": ids}).reset_index(drop=True)
    return np.asarray(keys.sort_values(["at", "id"], kind="stable").index, dtype=np.int64)


def selection_rows(train: pd.DataFrame, policy: TrainingPolicy) -> pd.DataFrame:
    """The rows model selection cross-validates on: every training row, or a seeded sample of
    `search_max_rows` of them in their original order (the chosen family is then fitted on all)."""
    limit = policy.search_max_rows
    if limit is None or len(train) <= limit:
        return train
    return train.sample(n=limit, random_state=policy.seed).sort_index()


class SearchBudget:
    """Seconds of model search left; `None` seconds is no limit."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.perf_counter,
                 started: float | None = None) -> None:
        self.seconds, self.clock = seconds, clock
        self.started = clock() if started is None else started

    @classmethod
    def since(cls, seconds: float | None, started_at: float) -> SearchBudget:
        """The budget of a search that started at `started_at` (wall-clock seconds since the epoch) on
        another machine: one deadline for every task of a mapped search."""
        return cls(seconds, time.time, started_at)

    def unlimited(self) -> SearchBudget:
        """The same clock without a limit: for the family that must finish."""
        return SearchBudget(None, self.clock)

    def spent(self) -> float:
        return self.clock() - self.started

    def refusal(self, next_fold_seconds: float) -> str | None:
        """Why a fold expected to take `next_fold_seconds` may not start, or None when it may."""
        if self.seconds is None:
            return None
        spent = self.spent()
        if spent > self.seconds:
            return f"search budget of {self.seconds:g} s used up after {spent:.1f} s"
        if spent + next_fold_seconds > self.seconds:
            return (f"search budget of {self.seconds:g} s would run out: {spent:.1f} s spent and "
                    f"a fold takes about {next_fold_seconds:.1f} s")
        return None


class PreparedFolds:
    """Each fold's rows as the features step makes them, fitted on the fold's fit rows: made by the first family
    cross-validated and kept for the others. Every family's Pipeline starts with the same step
    (`build_preprocessor`), and a Pipeline fits its estimator on that step's `fit_transform` of the rows and
    predicts on its `transform`: the estimator gets the same arrays either way, so the scores are the same, and
    the step is fitted once a fold rather than once a family and fold. `last`: the family that uses each fold
    last, which drops it once used."""

    def __init__(self, contract: DatasetContract, X: pd.DataFrame, y: np.ndarray, last: str | None = None) -> None:
        self.contract, self.X, self.y, self.last = contract, X, y, last
        self._folds: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def fold(self, index: int, fold: tuple[np.ndarray, np.ndarray], family: str) -> tuple[np.ndarray, np.ndarray]:
        """(fit rows, test rows) of fold `index` prepared, fitting the step on the fit rows the first time."""
        if index not in self._folds:
            fit_rows, test_rows = fold
            features = build_preprocessor(self.contract)
            prepared = features.fit_transform(self.X.iloc[fit_rows], self.y[fit_rows])
            self._folds[index] = (prepared, features.transform(self.X.iloc[test_rows]))
        return self._folds.pop(index) if family == self.last else self._folds[index]


def fold_predictions(contract: DatasetContract, family: str, policy: TrainingPolicy, X: pd.DataFrame,
                     y: np.ndarray, fold: tuple[np.ndarray, np.ndarray],
                     prepared: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Predictions for one fold's test rows of the family fitted on its other rows; fitted on `n_jobs`
    threads (a forest's trees are seeded one by one, so the fit does not depend on them), its BLAS and OpenMP
    on the threads its size gets (`threads.for_fit`), predicted on one. `prepared`: the fold's rows as the
    features step makes them (`PreparedFolds`), for the estimator alone."""
    fit_rows, test_rows = fold
    model = build_model(contract, family, policy, n_jobs=policy.n_jobs)
    with threads.for_fit(len(fit_rows), policy.n_jobs):
        if prepared is None:
            model.fit(X.iloc[fit_rows], y[fit_rows])
            freeze_threads(model)
            return np.asarray(model.predict(X.iloc[test_rows]), dtype="float64")
        estimator = model.named_steps["model"]
        if "copy_X" in estimator.get_params():  # the rows are the other families' too: never centred in place
            estimator.set_params(copy_X=True)
        estimator.fit(prepared[0], y[fit_rows])
        freeze_threads(model)
        return np.asarray(estimator.predict(prepared[1]), dtype="float64")


def cross_validate_family(contract: DatasetContract, family: str, policy: TrainingPolicy, X: pd.DataFrame,
                          y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                          budget: SearchBudget, residuals: dict[str, np.ndarray] | None = None,
                          prepared: PreparedFolds | None = None) -> dict[str, Any]:
    """CV RMSE of one family, fold by fold; with a budget, it stops before a fold that would end
    past the budget (judged by its slowest fold so far) and is recorded as skipped. A family that
    finishes leaves its out-of-fold |residuals| in `residuals` (the interval of versions trained before issue 32).
    `prepared`: the folds' rows prepared once for every family of a search."""
    scores: list[float] = []
    fold_seconds: list[float] = []
    out_of_fold = np.full(len(y), np.nan)
    for index, fold in enumerate(folds):
        refusal = budget.refusal(max(fold_seconds, default=0.0))
        if refusal:
            return {"skipped": f"{refusal} ({len(scores)} of {len(folds)} folds done)",
                    "seconds": sum(fold_seconds)}
        started = budget.clock()
        rows = prepared.fold(index, fold, family) if prepared is not None else None
        predicted = fold_predictions(contract, family, policy, X, y, fold, rows)
        out_of_fold[fold[1]] = predicted
        scores.append(float(root_mean_squared_error(y[fold[1]], predicted)))
        fold_seconds.append(budget.clock() - started)
    if residuals is not None:
        residuals[family] = np.abs(y - out_of_fold)
    return {"cv_rmse_mean": float(np.mean(scores)), "cv_rmse_std": float(np.std(scores)),
            "seconds": sum(fold_seconds), "rows": len(X)}


def search_data(train: pd.DataFrame, contract: DatasetContract, policy: TrainingPolicy) -> tuple[
        pd.DataFrame, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The rows, targets and seeded folds every family is cross-validated on."""
    rows = selection_rows(train, policy)
    X, y = model_inputs(rows, contract), rows[contract.target_column].to_numpy(dtype="float64")
    return X, y, list(KFold(n_splits=policy.cv_folds, shuffle=True, random_state=policy.seed).split(X))


def cross_validate_families(train: pd.DataFrame, contract: DatasetContract, policy: TrainingPolicy,
                            clock: Callable[[], float] = time.perf_counter,
                            residuals: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, Any]]:
    """Mean and spread of CV RMSE for each configured family, in order, on the same seeded folds
    of `selection_rows`. Within `search_budget_seconds`: the first family always finishes (there
    must be a candidate); a later one stops before a fold that would end past the budget."""
    X, y, folds = search_data(train, contract, policy)
    budget = SearchBudget(policy.search_budget_seconds, clock)
    prepared = PreparedFolds(contract, X, y, last=list(policy.families)[-1])
    table: dict[str, dict[str, Any]] = {}
    for family in policy.families:
        # Folds run one after another: fold-level threads made HistGradientBoosting 3x slower (GIL);
        # each fit uses the cores itself (forest trees over n_jobs, HistGradientBoosting's OpenMP, BLAS).
        finished = any("cv_rmse_mean" in row for row in table.values())
        table[family] = cross_validate_family(contract, family, policy, X, y, folds,
                                              budget if finished else budget.unlimited(), residuals, prepared)
        log.info("%s: %s", family, table[family])
    return table


def best_family(cv_table: dict[str, dict[str, Any]]) -> str:
    """The family with the lowest CV RMSE among those searched to the end; ties go to the first configured."""
    searched = {family: row for family, row in cv_table.items() if "cv_rmse_mean" in row}
    return min(searched, key=lambda family: searched[family]["cv_rmse_mean"])


def fit_family(train: pd.DataFrame, contract: DatasetContract, policy: TrainingPolicy, family: str) -> Pipeline:
    """One family fitted on all training rows (on the threads their count gets: `threads.for_fit`), ready to
    predict (one thread)."""
    model = build_model(contract, family, policy, n_jobs=policy.n_jobs)
    with threads.for_fit(len(train), policy.n_jobs):
        model.fit(model_inputs(train, contract), train[contract.target_column].to_numpy())
    freeze_threads(model)
    return model


def fit_best_family(train: pd.DataFrame, contract: DatasetContract, policy: TrainingPolicy,
                    residuals: dict[str, np.ndarray] | None = None) -> tuple[Pipeline, str, dict[str, dict[str, Any]]]:
    """Pick the family with the lowest CV RMSE and fit it on all training rows; `residuals` gets each
    searched family's out-of-fold |residuals|."""
    cv_table = cross_validate_families(train, contract, policy, residuals=residuals)
    best = best_family(cv_table)
    return fit_family(train, contract, policy, best), best, cv_table


def out_of_fold_residuals(train: pd.DataFrame, contract: DatasetContract, policy: TrainingPolicy,
                          family: str) -> np.ndarray:
    """One family's out-of-fold |residuals| on the search's rows and folds, as the search computed them."""
    X, y, folds = search_data(train, contract, policy)
    residuals: dict[str, np.ndarray] = {}
    cross_validate_family(contract, family, policy, X, y, folds, SearchBudget(None), residuals)
    return residuals[family]


def freeze_threads(model: Pipeline) -> None:
    """Predict in one thread: a forest's threads sum tree outputs in finishing order, which
    changes the last bits of a prediction from call to call."""
    if "n_jobs" in model.named_steps["model"].get_params():
        model.named_steps["model"].set_params(n_jobs=1)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape a model."""
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def code_version() -> str:
    """The git commit of the project, with '-dirty' when files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit
