"""Thread pools sized to a task's slot: the count from config and environment, the limits in effect inside a
stage (an Airflow task, a CLI stage command), and the same predictions whatever the count."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from threadpoolctl import threadpool_info

from pipeline import stages
from pipeline.cli import main as cli
from pipeline.contract.config import PipelineConfig
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.data import demo, ingest
from pipeline.model import train
from pipeline.model.features import model_inputs
from pipeline.runtime import threads
from pipeline.tasks import in_airflow

CELERY = {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}
LOCAL = {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}


@pytest.fixture(autouse=True)
def restored_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sized` writes the thread variables into os.environ; each test gets them back as they were."""
    for variable in (*threads.THREAD_VARIABLES, "OMP_WAIT_POLICY", "AIRFLOW__CORE__EXECUTOR",
                     "AIRFLOW__CELERY__WORKER_CONCURRENCY", "AIRFLOW__CORE__PARALLELISM"):
        monkeypatch.delenv(variable, raising=False)


def pools() -> dict[str, set[int]]:
    """Thread counts of the loaded BLAS and OpenMP libraries, by kind."""
    counts: dict[str, set[int]] = {}
    for library in threadpool_info():
        counts.setdefault(library["user_api"], set()).add(library["num_threads"])
    return counts


@pytest.mark.parametrize(("n_jobs", "environ", "cores", "expected"), [
    (3, {**CELERY, "AIRFLOW__CELERY__WORKER_CONCURRENCY": "8"}, 8, 3),  # the config's n_jobs wins
    (None, {**CELERY, "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4"}, 8, 2),
    (None, {**CELERY, "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4"}, 2, 1),  # never below 1
    (None, CELERY, 32, 2),  # Airflow's default concurrency, 16
    (None, {**LOCAL, "AIRFLOW__CORE__PARALLELISM": "4"}, 2, 1),
    (None, {**LOCAL, "AIRFLOW__CORE__PARALLELISM": "2"}, 8, 4),
    (None, LOCAL, 64, 2),  # Airflow's default parallelism, 32
    (None, {}, 6, 6),  # no executor: a process of its own (the CLI) takes every core
    (None, {"AIRFLOW__CELERY__WORKER_CONCURRENCY": "4"}, 6, 6),  # a concurrency without Celery says nothing
])
def test_slot_threads_from_config_or_the_workers_slots(n_jobs: int | None, environ: dict[str, str], cores: int,
                                                       expected: int) -> None:
    assert threads.slot_threads(n_jobs, environ, cores)[0] == expected


def test_slot_threads_say_where_the_count_comes_from() -> None:
    assert threads.slot_threads(2, {}, 8)[1] == "training.n_jobs"
    assert threads.slot_threads(None, {**CELERY, "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4"}, 8)[1] == \
        "8 cores // 4 task slots (AIRFLOW__CELERY__WORKER_CONCURRENCY)"


def test_a_slot_count_that_is_no_number_is_named() -> None:
    with pytest.raises(ValueError, match="AIRFLOW__CORE__PARALLELISM='four'"):
        threads.slot_threads(None, {**LOCAL, "AIRFLOW__CORE__PARALLELISM": "four"}, 2)


def test_without_n_jobs_the_slot_uses_the_cores_the_process_may_run_on() -> None:
    assert threads.slot_threads(None, {})[0] == threads.available_cores() >= 1


def test_prepare_environment_waits_passively_unless_the_operator_chose() -> None:
    environ: dict[str, str] = {}
    threads.prepare_environment(3, environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE", **{variable: "3" for variable in threads.THREAD_VARIABLES}}
    chosen = {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.prepare_environment(None, chosen)
    assert chosen == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_inside_sized_every_pool_has_the_slots_count(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.runtime.threads"), threads.sized(1) as count:
        assert count == 1
        assert pools() == {"blas": {1}, "openmp": {1}}
        assert joblib.effective_n_jobs(None) == 1  # a forest's n_jobs=None
    assert [r.getMessage() for r in caplog.records] == [
        "threads: 1 per pool (BLAS, OpenMP, joblib), from training.n_jobs"]


def test_sized_from_the_workers_slots_and_restored_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("AIRFLOW__CELERY__WORKER_CONCURRENCY", "1024")
    before = pools()
    with threads.sized(None) as count:
        assert count == 1
        assert pools() == {"blas": {1}, "openmp": {1}}
    assert pools() == before


@pytest.mark.parametrize(("rows", "pool", "n_jobs", "expected"), [
    (8_000, 2, None, 1),  # a clinic's search: each CV fold on one thread
    (160_000, 2, None, 1),  # a fold of the capped search (search_max_rows 200,000)
    (threads.ONE_THREAD_BELOW_ROWS - 1, 4, None, 1),
    (threads.ONE_THREAD_BELOW_ROWS, 4, None, 4),  # from the threshold on: the task's pool
    (800_000, 2, None, 2),  # the final fit at 10^6 rows
    (8_000_000, 1, None, 1),  # a pool of one stays one
    (8_000, 2, 2, 2),  # training.n_jobs wins at every size
    (800_000, 2, 1, 1),
])
def test_a_fit_gets_one_thread_below_the_size_and_the_pool_above(rows: int, pool: int, n_jobs: int | None,
                                                                 expected: int) -> None:
    assert threads.fit_threads(rows, pool, n_jobs) == expected


def test_inside_for_fit_blas_and_openmp_have_the_fits_count_and_the_pool_after() -> None:
    with threads.sized(2):
        with threads.for_fit(8_000) as small:
            assert small == 1 and pools() == {"blas": {1}, "openmp": {1}}
        with threads.for_fit(threads.ONE_THREAD_BELOW_ROWS) as large:
            assert large == 2 and pools() == {"blas": {2}, "openmp": {2}}
        assert pools() == {"blas": {2}, "openmp": {2}}


def test_openmp_loaded_inside_sized_gets_the_slots_count() -> None:
    """A task that trains imports scikit-learn (and OpenMP) inside `sized`, not before: the pool it loads then
    has the slot's count too, and a task that never trains never loads scikit-learn."""
    probe = (
        "import sys\n"
        "from threadpoolctl import threadpool_info\n"
        "from pipeline.runtime import threads\n"
        "with threads.sized(1):\n"
        "    print('before', 'sklearn' in sys.modules)\n"
        "    from sklearn.ensemble import HistGradientBoostingRegressor\n"
        "    print('openmp', sorted({p['num_threads'] for p in threadpool_info() if p['user_api'] == 'openmp'}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (*threads.THREAD_VARIABLES, "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-2:] == ["before False", "openmp [1]"]


def test_joblib_work_inside_sized_runs_on_threads_not_processes() -> None:
    """scikit-learn's own Parallel calls (a ColumnTransformer's, permutation importance's) run in the task's
    process: a process pool would copy the rows to each worker on every call."""
    with threads.sized(2):
        pids = joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(4))
    assert set(pids) == {os.getpid()}


class FakeWorkspace:
    """What a stage sees of its workspace here: the config, and an engine that never connects (the command
    disposes it when it ends)."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.engine = sa.create_engine("postgresql+psycopg2://")


def pools_and_jobs(_: Any, *__: Any) -> dict[str, Any]:
    return {"pools": pools(), "jobs": joblib.effective_n_jobs(None)}


def test_an_airflow_task_runs_in_its_slot(monkeypatch: pytest.MonkeyPatch, config: PipelineConfig) -> None:
    """`in_airflow`, the entry of every task: a Celery worker of 1024 slots gives each one thread."""
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("AIRFLOW__CELERY__WORKER_CONCURRENCY", "1024")
    monkeypatch.setattr(stages, "open_workspace", lambda settings: FakeWorkspace(config))
    seen = in_airflow(PROJECT_ROOT / "pipeline.yaml", pools_and_jobs)
    assert seen == {"pools": {"blas": {1}, "openmp": {1}}, "jobs": 1}


def test_a_cli_stage_command_runs_in_its_slot(monkeypatch: pytest.MonkeyPatch, config: PipelineConfig) -> None:
    one_job = dataclasses.replace(config, training=dataclasses.replace(config.training, n_jobs=1))
    monkeypatch.setattr(stages, "open_workspace", lambda settings: FakeWorkspace(one_job))
    args = cli.build_parser().parse_args(["train", "--run-id", "r", "--snapshot", "0" * 64])
    args.handler = pools_and_jobs
    assert cli.execute(args, Settings.from_env()) == {"pools": {"blas": {1}, "openmp": {1}}, "jobs": 1}


@pytest.fixture(scope="module")
def arrivals(config: PipelineConfig) -> pd.DataFrame:
    """3,000 plausible labelled rows: enough for OpenMP and the forest's threads to split the work."""
    records = demo.arrival_records(3000, seed=5)
    records.insert(0, "patient_id", np.arange(1, len(records) + 1))
    records["recorded_at"] = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(records)), unit="h")
    records["label_recorded_at"] = records["recorded_at"]
    return ingest.cast_to_contract(records, config.dataset)


def search_and_fit(config: PipelineConfig, frame: pd.DataFrame, threads_per_pool: int) -> tuple[Any, np.ndarray]:
    """What train_candidate computes (the CV table, the best family's predictions), on `threads_per_pool`."""
    policy = dataclasses.replace(config.training, n_jobs=None, cv_folds=3, families={
        "ridge": {"alpha": 1.0},
        "random_forest": {"n_estimators": 24, "min_samples_leaf": 5, "max_features": 0.5},
        "hist_gradient_boosting": {"max_iter": 40, "max_leaf_nodes": 15},
    })
    with threads.sized(threads_per_pool):
        table = train.cross_validate_families(frame, config.dataset, policy)
        models = {family: train.fit_family(frame, config.dataset, policy, family) for family in policy.families}
    inputs = model_inputs(frame, config.dataset)
    return table, np.stack([model.predict(inputs) for model in models.values()])


def test_predictions_are_bit_identical_on_one_thread_and_on_two(config: PipelineConfig,
                                                                arrivals: pd.DataFrame) -> None:
    """Every family, cross-validated and fitted on 1 and on 2 threads: the same CV scores and the same bits.
    A forest seeds each tree; gradient boosting's OpenMP sums do not depend on the thread count."""
    one_table, one = search_and_fit(config, arrivals, 1)
    two_table, two = search_and_fit(config, arrivals, 2)
    assert {family: (row["cv_rmse_mean"], row["cv_rmse_std"]) for family, row in one_table.items()} == \
        {family: (row["cv_rmse_mean"], row["cv_rmse_std"]) for family, row in two_table.items()}
    assert one.tobytes() == two.tobytes()
