"""Training: the time-ordered holdout, family selection, reproducibility and provenance."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sklearn
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline

from pipeline.contract.config import DatasetContract, PipelineConfig, TrainingPolicy
from pipeline.contract.settings import PROJECT_ROOT
from pipeline.model import train
from pipeline.model.features import model_inputs

COMMIT = re.compile(r"[0-9a-f]{40}")
FAST_FAMILIES: dict[str, dict[str, Any]] = {
    "ridge": {"alpha": 1.0},
    "random_forest": {"n_estimators": 20, "min_samples_leaf": 5, "max_features": 0.5},
    "hist_gradient_boosting": {"max_iter": 20, "max_leaf_nodes": 7},
}


def fast_policy(config: PipelineConfig, seed: int | None = None, n_jobs: int = 1) -> TrainingPolicy:
    """The shipped policy with small models and three folds, so a whole selection takes a second.

    One job by default; the shipped n_jobs is covered by its own test below.
    """
    return dataclasses.replace(
        config.training, families=FAST_FAMILIES, cv_folds=3, n_jobs=n_jobs,
        seed=config.training.seed if seed is None else seed,
    )


def fitted(config: PipelineConfig, family: str, policy: TrainingPolicy, frame: pd.DataFrame) -> Pipeline:
    model = train.build_model(config.dataset, family, policy)
    return model.fit(model_inputs(frame, config.dataset), frame[config.dataset.target_column].to_numpy())


def rows_with_times(contract: DatasetContract, times: list[str], ids: list[int]) -> pd.DataFrame:
    """A minimal snapshot: only the id and timestamp matter to the holdout split."""
    return pd.DataFrame({
        contract.id_column: pd.array(ids, dtype="Int64"),
        contract.timestamp_column: pd.to_datetime(times, utc=True),
    })


def order_keys(frame: pd.DataFrame, contract: DatasetContract) -> list[tuple[pd.Timestamp, int]]:
    return list(zip(frame[contract.timestamp_column], frame[contract.id_column].astype(int), strict=True))


def without_seconds(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A CV table without its timings, which differ from run to run."""
    return {family: {k: v for k, v in row.items() if k != "seconds"} for family, row in table.items()}


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run git with an identity and no signing, whatever the machine's configuration."""
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def selection(config: PipelineConfig, demo_frame: pd.DataFrame) -> tuple[Pipeline, str, dict[str, dict[str, float]]]:
    train_rows, _ = train.split_holdout(demo_frame, config.dataset, config.training.holdout_fraction)
    return train.fit_best_family(train_rows, config.dataset, fast_policy(config))


# --- split_holdout -------------------------------------------------------------------------------


def test_holdout_is_the_most_recent_rows_by_timestamp_then_id(contract: DatasetContract) -> None:
    times = ["2024-01-01", "2024-01-03", "2024-01-02", "2024-01-03", "2024-01-02",
             "2024-01-04", "2024-01-03", "2024-01-01", "2024-01-04", "2024-01-02"]
    ids = [10, 4, 7, 2, 1, 9, 8, 3, 5, 6]  # ties on a timestamp are broken by id
    frame = rows_with_times(contract, times, ids)
    train_rows, holdout = train.split_holdout(frame, contract, 0.4)
    expected_holdout = sorted(order_keys(frame, contract))[-4:]
    assert order_keys(holdout, contract) == expected_holdout
    assert max(order_keys(train_rows, contract)) < min(order_keys(holdout, contract))


def test_holdout_is_the_most_recently_labelled_rows_when_the_contract_has_a_label_time(
        contract: DatasetContract) -> None:
    label_time = contract.labelled_at_column()
    assert label_time != contract.timestamp_column
    frame = rows_with_times(contract, ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"],
                            [1, 2, 3, 4, 5])
    # Row 1 was recorded first and labelled last; row 5 carries no label time: labelled when recorded.
    frame[label_time] = pd.to_datetime(["2025-06-01", "2024-01-02", "2024-01-03", "2024-01-04", None], utc=True)
    train_rows, holdout = train.split_holdout(frame, contract, 0.4)
    assert holdout[contract.id_column].tolist() == [5, 1]
    assert train_rows[contract.id_column].tolist() == [2, 3, 4]
    plain = dataclasses.replace(contract, label_timestamp_column=None)
    assert train.split_holdout(frame, plain, 0.4)[1][contract.id_column].tolist() == [4, 5]


def test_holdout_and_train_partition_the_rows(contract: DatasetContract, demo_frame: pd.DataFrame) -> None:
    train_rows, holdout = train.split_holdout(demo_frame, contract, 0.2)
    train_ids, holdout_ids = set(train_rows[contract.id_column]), set(holdout[contract.id_column])
    assert not train_ids & holdout_ids
    assert train_ids | holdout_ids == set(demo_frame[contract.id_column])
    assert len(train_rows) + len(holdout) == len(demo_frame)


@pytest.mark.parametrize(("rows", "fraction"), [(442, 0.2), (100, 0.25), (10, 0.3), (7, 0.5), (3, 0.1)])
def test_holdout_takes_the_configured_share(contract: DatasetContract, rows: int, fraction: float) -> None:
    times = pd.date_range("2024-01-01", periods=rows, freq="D").astype(str).tolist()
    _, holdout = train.split_holdout(rows_with_times(contract, times, list(range(1, rows + 1))), contract, fraction)
    assert len(holdout) >= 1
    assert abs(len(holdout) - rows * fraction) <= 0.5 or len(holdout) == 1


def test_split_leaves_the_input_frame_as_it_was(contract: DatasetContract) -> None:
    frame = rows_with_times(contract, ["2024-01-02", "2024-01-01", "2024-01-03", "2024-01-01"], [1, 2, 3, 4])
    before = frame.copy()
    train.split_holdout(frame, contract, 0.25)
    pd.testing.assert_frame_equal(frame, before)


def pandas_order(at: pd.Series, ids: pd.Series) -> np.ndarray:
    """The split's order as pandas' stable sort on both keys gives it (what `labelled_order` must equal)."""
    keys = pd.DataFrame({"at": at, "id": ids}).reset_index(drop=True)
    return keys.sort_values(["at", "id"], kind="stable").index.to_numpy()


@settings(max_examples=200, deadline=None)
@given(days=st.lists(st.one_of(st.none(), st.integers(0, 6)), min_size=1, max_size=60),
       id_range=st.integers(1, 8), utc=st.booleans(), nullable=st.booleans(), data=st.data())
def test_labelled_order_is_pandas_stable_sort_on_ties_and_missing_times(
        days: list[int | None], id_range: int, utc: bool, nullable: bool, data: st.DataObject) -> None:
    ids = data.draw(st.lists(st.integers(-id_range, id_range), min_size=len(days), max_size=len(days)))
    at = pd.Series(pd.to_datetime([None if d is None else f"2024-01-0{d + 1}" for d in days], utc=utc))
    at.index = at.index[::-1] + 100  # labels that are not positions: the order is of positions
    id_series = pd.Series(ids, index=at.index, dtype="Int64" if nullable else "int64")
    assert np.array_equal(train.labelled_order(at, id_series), pandas_order(at, id_series))


@pytest.mark.parametrize("ids", [pd.array([3, None, 1, 2], dtype="Int64"), pd.array(["b", "a", "c", "a"], dtype="str")],
                         ids=["missing-id", "text-ids"])
def test_labelled_order_sorts_other_ids_through_pandas(ids: Any) -> None:
    at = pd.Series(pd.to_datetime(["2024-01-02", "2024-01-01", "2024-01-02", "2024-01-01"], utc=True))
    assert np.array_equal(train.labelled_order(at, pd.Series(ids)), pandas_order(at, pd.Series(ids)))


@pytest.mark.parametrize(("rows", "fraction"), [(2, 0.2), (1, 0.5), (10, 0.9)])
def test_too_few_rows_raise_with_the_row_count(contract: DatasetContract, rows: int, fraction: float) -> None:
    times = pd.date_range("2024-01-01", periods=rows, freq="D").astype(str).tolist()
    with pytest.raises(ValueError, match=rf"\b{rows}\b.*rows"):
        train.split_holdout(rows_with_times(contract, times, list(range(1, rows + 1))), contract, fraction)


# --- model families ------------------------------------------------------------------------------


def test_fit_best_family_picks_the_lowest_cv_rmse_of_its_own_table(
    selection: tuple[Pipeline, str, dict[str, dict[str, float]]],
) -> None:
    model, best, table = selection
    assert set(table) == set(FAST_FAMILIES)
    assert all(np.isfinite(row["cv_rmse_mean"]) and row["cv_rmse_mean"] > 0 for row in table.values())
    assert best == min(table, key=lambda family: table[family]["cv_rmse_mean"])
    assert type(model.named_steps["model"]) is type(train.make_estimator(best, FAST_FAMILIES[best], 0, 1))


def test_fit_best_family_follows_the_table_not_the_family_order(
    monkeypatch: pytest.MonkeyPatch, config: PipelineConfig, demo_frame: pd.DataFrame
) -> None:
    table = {"ridge": 60.0, "random_forest": 55.0, "hist_gradient_boosting": 58.0}
    monkeypatch.setattr(
        train, "cross_validate_families",
        lambda *_, **__: {family: {"cv_rmse_mean": rmse, "cv_rmse_std": 1.0} for family, rmse in table.items()},
    )
    model, best, _ = train.fit_best_family(demo_frame, config.dataset, fast_policy(config))
    assert best == "random_forest"
    assert isinstance(model.named_steps["model"], RandomForestRegressor)


def test_training_twice_with_the_same_seed_is_bit_identical(
    selection: tuple[Pipeline, str, dict[str, dict[str, float]]], config: PipelineConfig, demo_frame: pd.DataFrame
) -> None:
    contract = config.dataset
    train_rows, holdout = train.split_holdout(demo_frame, contract, config.training.holdout_fraction)
    model, best, table = train.fit_best_family(train_rows, contract, fast_policy(config))
    first_model, first_best, first_table = selection
    assert (best, without_seconds(table)) == (first_best, without_seconds(first_table))
    assert np.array_equal(model.predict(model_inputs(holdout, contract)),
                          first_model.predict(model_inputs(holdout, contract)))


@pytest.mark.parametrize("family", ["random_forest", "hist_gradient_boosting"])
def test_seeded_families_fit_identically_twice(family: str, config: PipelineConfig, demo_frame: pd.DataFrame) -> None:
    X = model_inputs(demo_frame, config.dataset)
    first, second = (fitted(config, family, fast_policy(config, seed=1), demo_frame) for _ in range(2))
    assert np.array_equal(first.predict(X), second.predict(X))


def test_forest_predictions_change_with_the_seed(config: PipelineConfig, demo_frame: pd.DataFrame) -> None:
    """Guards the test above: a seed that never reached the forest would pass it too."""
    X = model_inputs(demo_frame, config.dataset)
    one, two = (fitted(config, "random_forest", fast_policy(config, seed=s), demo_frame) for s in (1, 2))
    assert not np.array_equal(one.predict(X), two.predict(X))


def test_forest_fitted_on_parallel_jobs_grows_the_same_trees(config: PipelineConfig, demo_frame: pd.DataFrame) -> None:
    """Fitting on several jobs is reproducible; compare on one job so prediction order is fixed."""
    X = model_inputs(demo_frame, config.dataset)
    first, second = (
        fitted(config, "random_forest", fast_policy(config, n_jobs=2), demo_frame) for _ in range(2)
    )
    for model in (first, second):
        model.named_steps["model"].set_params(n_jobs=1)
    assert np.array_equal(first.predict(X), second.predict(X))


def test_forest_with_the_shipped_n_jobs_predicts_bit_identically(
    config: PipelineConfig, demo_frame: pd.DataFrame
) -> None:
    X = model_inputs(demo_frame, config.dataset)
    model = fitted(config, "random_forest", fast_policy(config, n_jobs=config.training.n_jobs), demo_frame)
    first = model.predict(X)
    assert all(np.array_equal(first, model.predict(X)) for _ in range(5))


def test_make_estimator_passes_seed_and_parameters() -> None:
    forest = train.make_estimator("random_forest", {"n_estimators": 7}, seed=11, n_jobs=3)
    assert isinstance(forest, RandomForestRegressor)
    assert (forest.n_estimators, forest.random_state, forest.n_jobs) == (7, 11, 3)
    boosting = train.make_estimator("hist_gradient_boosting", {"max_iter": 9}, seed=12, n_jobs=1)
    assert isinstance(boosting, HistGradientBoostingRegressor)
    assert (boosting.max_iter, boosting.random_state) == (9, 12)
    ridge = train.make_estimator("ridge", {"alpha": 3.5}, seed=13, n_jobs=1)
    assert isinstance(ridge, Ridge) and ridge.alpha == 3.5


def test_make_estimator_names_an_unknown_family() -> None:
    with pytest.raises(ValueError, match="'lasso'"):
        train.make_estimator("lasso", {}, seed=0, n_jobs=1)


# --- provenance ----------------------------------------------------------------------------------


def test_library_versions_report_the_installed_versions() -> None:
    versions = train.library_versions()
    assert versions["scikit-learn"] == sklearn.__version__
    assert versions["numpy"] == np.__version__
    assert versions["pandas"] == pd.__version__
    assert all(isinstance(v, str) and v for v in versions.values())


def test_code_version_of_this_repository_agrees_with_git() -> None:
    head = git(PROJECT_ROOT, "rev-parse", "HEAD")
    version = train.code_version()
    if head.returncode != 0:  # a repository without commits (or no git): nothing to pin
        assert version == "unknown"
        return
    commit = head.stdout.strip()
    assert COMMIT.fullmatch(commit)
    assert version in (commit, f"{commit}-dirty")


def test_code_version_is_unknown_outside_a_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(train, "PROJECT_ROOT", tmp_path)
    assert train.code_version() == "unknown"


def test_code_version_is_unknown_before_the_first_commit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert git(tmp_path, "init", "-q").returncode == 0
    monkeypatch.setattr(train, "PROJECT_ROOT", tmp_path)
    assert train.code_version() == "unknown"


def test_code_version_is_the_commit_then_dirty_after_an_edit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tracked = tmp_path / "model.py"
    tracked.write_text("alpha = 1\n")
    for args in (("init", "-q"), ("add", "model.py"), ("commit", "-q", "-m", "first")):
        assert git(tmp_path, *args).returncode == 0
    commit = git(tmp_path, "rev-parse", "HEAD").stdout.strip()
    monkeypatch.setattr(train, "PROJECT_ROOT", tmp_path)

    (tmp_path / "notes.txt").write_text("untracked files do not make the tree dirty\n")
    assert train.code_version() == commit
    assert COMMIT.fullmatch(commit)

    tracked.write_text("alpha = 2\n")
    assert train.code_version() == f"{commit}-dirty"


def test_a_spent_search_budget_skips_the_remaining_families(config: PipelineConfig, demo_frame: pd.DataFrame) -> None:
    policy = dataclasses.replace(fast_policy(config), search_budget_seconds=0.0)

    table = train.cross_validate_families(demo_frame, config.dataset, policy)

    first, *rest = list(policy.families)
    assert "cv_rmse_mean" in table[first]
    assert rest and all("search budget of 0 s used up" in table[family]["skipped"] for family in rest)
    assert all("(0 of 3 folds done)" in table[family]["skipped"] for family in rest)
    _, best, _ = train.fit_best_family(demo_frame, config.dataset, policy)
    assert best == first


class FoldClock:
    """A clock that only moves when a CV fold runs: each fold takes `fold_seconds[family]`."""

    def __init__(self, fold_seconds: dict[str, float]) -> None:
        self.now, self.fold_seconds, self.folds_run = 0.0, fold_seconds, Counter[str]()

    def __call__(self) -> float:
        return self.now

    def timed_fold(self, real_fold: Any) -> Any:
        def fold(contract: DatasetContract, family: str, *args: Any) -> Any:
            self.folds_run[family] += 1
            self.now += self.fold_seconds[family]
            return real_fold(contract, family, *args)
        return fold


def search_on_fold_clock(config: PipelineConfig, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch,
                         fold_seconds: dict[str, float], budget: float) -> tuple[FoldClock, dict[str, dict[str, Any]]]:
    """Cross-validate the fast families within `budget` seconds of a clock that folds alone move."""
    clock = FoldClock(fold_seconds)
    monkeypatch.setattr(train, "fold_predictions", clock.timed_fold(train.fold_predictions))
    policy = dataclasses.replace(fast_policy(config), search_budget_seconds=budget)
    return clock, train.cross_validate_families(frame, config.dataset, policy, clock=clock)


def test_the_budget_stops_a_family_before_a_fold_that_would_end_past_it(
    config: PipelineConfig, demo_frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, table = search_on_fold_clock(config, demo_frame, monkeypatch, budget=100.0, fold_seconds={
        "ridge": 10.0, "random_forest": 30.0, "hist_gradient_boosting": 3.0})

    # ridge: 3 folds, 30 s. forest: folds end at 60 and 90; a third would end at 120 > 100.
    # gradient boosting: its folds end at 93, 96 and 99, within.
    assert clock.folds_run == {"ridge": 3, "random_forest": 2, "hist_gradient_boosting": 3}
    assert "cv_rmse_mean" in table["ridge"] and table["ridge"]["seconds"] == 30.0
    assert table["random_forest"]["skipped"] == (
        "search budget of 100 s would run out: 90.0 s spent and a fold takes about 30.0 s (2 of 3 folds done)")
    assert table["random_forest"]["seconds"] == 60.0
    assert "cv_rmse_mean" in table["hist_gradient_boosting"]


def test_the_first_family_finishes_however_long_its_folds_take(
    config: PipelineConfig, demo_frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, table = search_on_fold_clock(config, demo_frame, monkeypatch, budget=100.0, fold_seconds={
        "ridge": 500.0, "random_forest": 1.0, "hist_gradient_boosting": 1.0})

    assert clock.folds_run == {"ridge": 3}
    assert "cv_rmse_mean" in table["ridge"]
    assert all(table[f]["skipped"].startswith("search budget of 100 s used up after 1500.0 s")
               for f in ("random_forest", "hist_gradient_boosting"))


def test_selection_rows_is_every_row_under_the_limit(config: PipelineConfig, demo_frame: pd.DataFrame) -> None:
    for limit in (None, len(demo_frame)):
        policy = dataclasses.replace(fast_policy(config), search_max_rows=limit)
        assert train.selection_rows(demo_frame, policy) is demo_frame


def test_selection_rows_is_a_seeded_sample_in_the_original_order(
    config: PipelineConfig, demo_frame: pd.DataFrame
) -> None:
    policy = dataclasses.replace(fast_policy(config), search_max_rows=100)

    sample = train.selection_rows(demo_frame, policy)
    again = train.selection_rows(demo_frame, policy)
    other_seed = train.selection_rows(demo_frame, dataclasses.replace(policy, seed=policy.seed + 1))

    assert len(sample) == 100 and sample.index.is_unique
    assert list(sample.index) == sorted(sample.index)
    pd.testing.assert_frame_equal(sample, demo_frame.loc[sample.index])
    assert list(again.index) == list(sample.index)
    assert list(other_seed.index) != list(sample.index)


def test_families_are_compared_on_the_sample_and_the_winner_fitted_on_every_row(
    config: PipelineConfig, demo_frame: pd.DataFrame
) -> None:
    contract = config.dataset
    policy = dataclasses.replace(fast_policy(config), search_max_rows=120)

    model, best, table = train.fit_best_family(demo_frame, contract, policy)

    assert {row["rows"] for row in table.values()} == {120}
    on_every_row = fitted(config, best, policy, demo_frame)
    X = model_inputs(demo_frame, contract)
    np.testing.assert_array_equal(model.predict(X), on_every_row.predict(X))
    sample = train.selection_rows(demo_frame, policy)
    assert not np.array_equal(model.predict(X), fitted(config, best, policy, sample).predict(X))


def test_a_forest_cross_validated_on_two_threads_scores_as_on_one(
    config: PipelineConfig, demo_frame: pd.DataFrame
) -> None:
    policy = dataclasses.replace(fast_policy(config), families={"random_forest": FAST_FAMILIES["random_forest"]})

    one = train.cross_validate_families(demo_frame, config.dataset, dataclasses.replace(policy, n_jobs=1))
    two = train.cross_validate_families(demo_frame, config.dataset, dataclasses.replace(policy, n_jobs=2))

    assert one["random_forest"]["cv_rmse_mean"] == two["random_forest"]["cv_rmse_mean"]
    assert one["random_forest"]["cv_rmse_std"] == two["random_forest"]["cv_rmse_std"]


def test_folds_prepared_once_for_every_family_score_as_each_familys_own_pipeline(
    config: PipelineConfig, demo_frame: pd.DataFrame
) -> None:
    policy = fast_policy(config)
    X, y, folds = train.search_data(demo_frame, config.dataset, policy)
    prepared = train.PreparedFolds(config.dataset, X, y, last=list(policy.families)[-1])
    shared: dict[str, np.ndarray] = {}
    own: dict[str, np.ndarray] = {}

    for family in policy.families:  # as the search runs them: the first family prepares, the others reuse
        with_shared = train.cross_validate_family(config.dataset, family, policy, X, y, folds,
                                                  train.SearchBudget(None), shared, prepared)
        alone = train.cross_validate_family(config.dataset, family, policy, X, y, folds, train.SearchBudget(None), own)
        assert with_shared["cv_rmse_mean"] == alone["cv_rmse_mean"], family
        assert with_shared["cv_rmse_std"] == alone["cv_rmse_std"], family
        np.testing.assert_array_equal(shared[family], own[family])  # every out-of-fold residual, bit for bit

    assert len(policy.families) >= 3
    assert prepared._folds == {}  # the last family let each fold go once used
