"""A stage as an Airflow task: the workspace opened inside the task's thread sizing, abandoned runs reaped, and a
failure reported as one line, retried only when infrastructure failed.

Every DAG's tasks call `in_airflow`; this module imports no Airflow until a task fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipeline.contract.settings import Settings
from pipeline.registry.runs import InfrastructureFailure, error_line, failure_kind

log = logging.getLogger(__name__)


def airflow_task(settings: Settings, work: Callable[[], Any]) -> Any:
    """Run a stage inside an Airflow task. A failure becomes one line (the full traceback goes to the debug
    log): an infrastructure failure raises `InfrastructureFailure`, which Airflow retries with backoff
    (the DAG's `RETRY`); any other raises AirflowFailException, which fails the task at once, because the same rows,
    contract and config would fail the same way again."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return work()
    except Exception as exc:  # noqa: BLE001 - every failure is reported as one line, by kind
        line, kind = error_line(exc, settings), failure_kind(exc)
        if kind != "data" or isinstance(exc, ValueError | LookupError | RuntimeError | sa.exc.SQLAlchemyError):
            log.debug("stage failed", exc_info=exc)
        else:  # not one of ours: most likely a bug, whose traceback is wanted
            log.exception("stage failed unexpectedly")
        log.error("%s", line)
        if kind == "infrastructure":
            raise InfrastructureFailure(line) from None
        raise AirflowFailException(line) from None


def in_airflow(config_path: str | Path, work: Callable[[Any], Any]) -> Any:
    """`work(workspace)` for the model config at `config_path`, as an Airflow task (`airflow_task`), its thread
    pools sized to its slot on the worker (`threads.for_task`): opening the workspace (the database) fails the
    same way as the work itself."""
    from pipeline.runtime import threads
    from pipeline.runtime.logs import quiet_libraries

    quiet_libraries()  # before the stage imports Great Expectations: its import alone logs ~210 lines
    settings = replace(Settings.from_env(), config_path=Path(config_path))

    def task() -> Any:
        with threads.for_task(settings.config_path):  # before the stages import OpenMP: see pipeline.runtime.threads
            from pipeline import stages

            return work(stages.open_workspace(settings))

    return airflow_task(settings, task)
