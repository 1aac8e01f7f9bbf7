"""Thread pools sized to a task's slot on its worker, so tasks sharing a machine do not thrash.

A worker runs several tasks at once (Celery's worker concurrency, the LocalExecutor's parallelism). Each
task's OpenMP (HistGradientBoosting), BLAS (ridge) and joblib (a forest's trees) pools would otherwise
take every core, and spin on cores another task holds: on 2 cores beside one busy process, the train
stage ran 10 to 30 times slower than on a quiet machine. A stage runs with every pool limited to its slot's
count, from `training.n_jobs` when the config sets it, else the cores it may use // the worker's task
slots, at least 1. OpenMP's idle threads also wait passively (`OMP_WAIT_POLICY=PASSIVE`) instead of
spinning on a core another process needs; that is read when OpenMP loads, so a process entry sets it
first (`prepare_environment`). Thread counts never change results: see `pipeline.model.train`.

Inside a task, each fit then takes threads by its size (`for_fit`): one below ONE_THREAD_BELOW_ROWS rows, the
task's pool above. A small fit's parallel regions are too short to pay for waking a sleeping thread: on a
quiet VM, HistGradientBoosting's five CV folds on 8,000 rows took 14.7 s on 2 passive threads and 2.3 s on
one (issue 16), while a large fit's regions are long enough that a second core helps.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# Airflow's defaults when the environment does not set them: [celery] worker_concurrency, [core] parallelism.
CELERY_CONCURRENCY = ("AIRFLOW__CELERY__WORKER_CONCURRENCY", 16)
LOCAL_PARALLELISM = ("AIRFLOW__CORE__PARALLELISM", 32)
MACHINE_SLOTS = "PIPELINE_TASK_SLOTS"  # tasks every worker on this machine runs at once, when several share it
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# A fit on fewer rows than this runs on one thread; from this many, on the task's pool. The search's CV folds
# (at most training.search_max_rows, 200,000 shipped, of which a fold fits 4/5) stay below it; the final fit
# of a large snapshot goes above.
ONE_THREAD_BELOW_ROWS = 250_000


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: taskset, cpusets), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def task_threads() -> int:
    """The threads this task may keep busy: its pools' size when `sized` set it, else the available cores."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS") or available_cores()))
    except ValueError:
        return available_cores()


def task_slots(environ: MutableMapping[str, str]) -> tuple[int, str]:
    """How many tasks this process's worker runs at once, and where that number comes from: PIPELINE_TASK_SLOTS
    (the workers sharing this machine, together), a Celery worker's concurrency, a LocalExecutor's parallelism,
    else 1 (a process of its own, as the CLI is)."""
    executor = environ.get("AIRFLOW__CORE__EXECUTOR", "")
    if environ.get(MACHINE_SLOTS):  # several workers on one machine (pipeline.cli.cluster): their slots together
        variable, default = MACHINE_SLOTS, 1
    elif "Celery" in executor:
        variable, default = CELERY_CONCURRENCY
    elif "Local" in executor:
        variable, default = LOCAL_PARALLELISM
    else:
        return 1, "no executor in AIRFLOW__CORE__EXECUTOR"
    text = environ.get(variable)
    try:
        slots = default if text is None else int(text)
    except ValueError:
        raise ValueError(f"{variable}={text!r} is not a whole number; set it to the tasks the worker runs at "
                         "once, or set training.n_jobs in the model's config") from None
    return max(1, slots), f"{variable}" if text is not None else f"{variable} unset: Airflow's default"


def slot_threads(n_jobs: int | None, environ: MutableMapping[str, str] | None = None,
                 cores: int | None = None) -> tuple[int, str]:
    """Threads for each pool of one task, and why: `n_jobs` when the config sets it, else the available
    cores // the worker's task slots, at least 1."""
    if n_jobs is not None:
        return n_jobs, "training.n_jobs"
    cores = available_cores() if cores is None else cores
    slots, source = task_slots(os.environ if environ is None else environ)
    return max(1, cores // slots), f"{cores} cores // {slots} task slots ({source})"


def prepare_environment(threads: int | None = None, environ: MutableMapping[str, str] | None = None) -> None:
    """What OpenMP and BLAS read once, when they load: passive waits (unless the environment chose a policy)
    and, when given, the thread count, also for threads other than the caller's. Call it before numpy and
    scikit-learn are imported; later, only `threadpool_limits` reaches them."""
    environ = os.environ if environ is None else environ
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is not None:
        environ.update({variable: str(threads) for variable in THREAD_VARIABLES})


@contextmanager
def sized(n_jobs: int | None, level: int = logging.INFO) -> Iterator[int]:
    """Inside, every BLAS and OpenMP pool and scikit-learn's `n_jobs=None` use the slot's thread count
    (`slot_threads`); it is logged once, at `level`. Yields the count."""
    threads, why = slot_threads(n_jobs)
    prepare_environment(threads)  # OpenMP, when scikit-learn loads it later (a stage that trains), reads these
    import joblib
    import numpy  # noqa: F401 - loads BLAS, so the limits below reach it
    from threadpoolctl import threadpool_limits

    from pipeline.runtime import memory

    memory.system_arrow_pool()  # a task's freed snapshots go back to the machine (pipeline.runtime.memory)
    log.log(level, "threads: %d per pool (BLAS, OpenMP, joblib), from %s", threads, why)
    # threads, not processes: a process pool copies the rows to each worker (scikit-learn's ColumnTransformer
    # took 0.5 s per fit for that at 200,000 rows, more than its transformers' work)
    with threadpool_limits(limits=threads), joblib.parallel_config(n_jobs=threads, prefer="threads"):
        yield threads


@contextmanager
def for_task(config_path: Path) -> Iterator[int]:
    """`sized` for the model config at `config_path` (its `training.n_jobs`)."""
    from pipeline.contract.config import load_config

    with sized(load_config(config_path).training.n_jobs) as threads:
        yield threads


def fit_threads(rows: int, pool: int, n_jobs: int | None = None) -> int:
    """Threads for one fit on `rows` rows in a task whose pools have `pool`: `n_jobs` when the config sets it
    (training.n_jobs), else one below ONE_THREAD_BELOW_ROWS rows and the pool from there."""
    if n_jobs is not None:
        return n_jobs
    return max(1, pool) if rows >= ONE_THREAD_BELOW_ROWS else 1


@contextmanager
def for_fit(rows: int, n_jobs: int | None = None) -> Iterator[int]:
    """Inside, BLAS and OpenMP (HistGradientBoosting, ridge) use `fit_threads` for a fit on `rows` rows in this
    task's pool (`task_threads`). A forest's trees stay spread over joblib's threads: each is a long piece of
    work. Yields the count."""
    from threadpoolctl import threadpool_limits

    count = fit_threads(rows, task_threads(), n_jobs)
    with threadpool_limits(limits=count):
        yield count


def in_background(name: str, function: Callable[..., T], *args: Any) -> Future[T]:
    """`function(*args)` started now on a thread of its own (named `name`), for work that waits on a server
    while the caller goes on; its result, or its error, at the Future's `result`."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        return pool.submit(function, *args)
    finally:
        pool.shutdown(wait=False)
