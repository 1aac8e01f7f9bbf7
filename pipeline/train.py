"""Train: cross-validate each model family on the training rows and fit the best one."""

from __future__ import annotations

import logging
import subprocess
import time
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold, cross_val_score
from sklearn.pipeline import Pipeline

from pipeline.config import DatasetContract, TrainingPolicy
from pipeline.features import build_preprocessor, model_inputs
from pipeline.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

TRACKED_LIBRARIES = ("scikit-learn", "numpy", "pandas", "pyarrow", "joblib", "scipy", "great-expectations")


def make_estimator(family: str, params: dict[str, Any], seed: int, n_jobs: int) -> RegressorMixin:
    """The estimator of a model family, seeded."""
    if family == "ridge":
        return Ridge(**params)
    if family == "random_forest":
        return RandomForestRegressor(random_state=seed, n_jobs=n_jobs, **params)
    if family == "hist_gradient_boosting":
        return HistGradientBoostingRegressor(random_state=seed, **params)
    raise ValueError(
        f"unknown model family '{family}' in training.families; "
        "use ridge, random_forest or hist_gradient_boosting"
    )


def build_model(contract: DatasetContract, family: str, policy: TrainingPolicy, n_jobs: int = 1) -> Pipeline:
    """Feature preparation and estimator as one scikit-learn Pipeline."""
    estimator = make_estimator(family, policy.families[family], policy.seed, n_jobs)
    return Pipeline([("features", build_preprocessor(contract)), ("model", estimator)])


def split_holdout(frame: pd.DataFrame, contract: DatasetContract, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out the most recent labelled rows (by timestamp, then id) for evaluation."""
    ordered = frame.sort_values([contract.timestamp_column, contract.id_column], kind="stable")
    n_holdout = max(1, int(round(len(ordered) * fraction)))
    if len(ordered) - n_holdout < 2:
        raise ValueError(f"only {len(ordered)} labelled rows: too few to hold out {fraction:.0%} and train")
    return ordered.iloc[:-n_holdout], ordered.iloc[-n_holdout:]


def cross_validate_families(train: pd.DataFrame, contract: DatasetContract, policy: TrainingPolicy) -> dict[str, dict[str, Any]]:
    """Mean and spread of CV RMSE for each configured family, in order, on the same seeded folds;
    families past `search_budget_seconds` are recorded as skipped (the first always runs)."""
    folds = KFold(n_splits=policy.cv_folds, shuffle=True, random_state=policy.seed)
    X, y = model_inputs(train, contract), train[contract.target_column].to_numpy()
    table: dict[str, dict[str, Any]] = {}
    search_started = time.perf_counter()
    for family in policy.families:
        spent = time.perf_counter() - search_started
        if table and policy.search_budget_seconds is not None and spent > policy.search_budget_seconds:
            table[family] = {"skipped": f"search budget of {policy.search_budget_seconds:g} s used up after {spent:.1f} s"}
            log.info("%s: %s", family, table[family]["skipped"])
            continue
        started = time.perf_counter()
        # Folds run one after another, each model single-threaded apart from HistGradientBoosting's
        # OpenMP: a forest predicting on several threads sums its trees in finishing order, which
        # changes the last bits, and fold-level threads made HistGradientBoosting 3x slower (GIL).
        scores = -cross_val_score(
            build_model(contract, family, policy), X, y, cv=folds, scoring="neg_root_mean_squared_error"
        )
        table[family] = {"cv_rmse_mean": float(np.mean(scores)), "cv_rmse_std": float(np.std(scores))}
        log.info("%s: CV RMSE %.2f ± %.2f in %.1f s", family, table[family]["cv_rmse_mean"],
                 table[family]["cv_rmse_std"], time.perf_counter() - started)
    return table


def fit_best_family(train: pd.DataFrame, contract: DatasetContract, policy: TrainingPolicy) -> tuple[Pipeline, str, dict[str, dict[str, Any]]]:
    """Pick the family with the lowest CV RMSE and fit it on all training rows."""
    cv_table = cross_validate_families(train, contract, policy)
    searched = {family: row for family, row in cv_table.items() if "cv_rmse_mean" in row}
    best = min(searched, key=lambda family: searched[family]["cv_rmse_mean"])
    model = build_model(contract, best, policy, n_jobs=policy.n_jobs)
    model.fit(model_inputs(train, contract), train[contract.target_column].to_numpy())
    freeze_threads(model)
    return model, best, cv_table


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
