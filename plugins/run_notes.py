"""The outcome of every `retrain` run as its DAG run note ("promoted v3: RMSE 46.9 → 45.1", "skipped: no new data").

A task cannot write its run's note in Airflow 3: the Task SDK reads `dag_run.note` but has no call that
sets it, and a task process has no access to the metadata database. So the note is written by a
listener, in the process that sets the run's final state (the scheduler, or the one running `dag.test()`),
which may use Airflow's ORM: `on_dag_run_success` / `on_dag_run_failed`. The words come from
`pipeline.views.run_notes`, read from the registry, so a run that failed, was skipped or was refused
gets its note too. A note the operator gave at trigger time is kept below the outcome.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)


def _engine() -> Engine:
    from pipeline.contract.settings import Settings
    from pipeline.store import db

    return _engine_on(db.database_url(Settings.from_env()))


@cache
def _engine_on(url: str) -> Engine:
    from pipeline.store import db

    return db.create_engine(url)


def _registry_run_id(dag_id: str, run_id: str) -> str | None:
    """The registry's id of a retrain DAG run; None for any other DAG."""
    from retrain_assets import models

    return next((m.run_id(run_id) for m in models() if m.dag_id("retrain") == dag_id), None)


def write_outcome_note(dag_run: Any) -> None:
    """Set the note of a finished retrain run to its outcome, keeping a note given at trigger time."""
    from pipeline.views.run_notes import note_of_run

    run_id = _registry_run_id(dag_run.dag_id, dag_run.run_id)
    if run_id is None:
        return
    try:
        with _engine().connect() as conn:
            outcome = note_of_run(conn, run_id)
    except Exception:  # noqa: BLE001 - a note never fails the scheduler; the run's state stands
        log.warning("no outcome note for run %s: the registry could not be read", run_id, exc_info=True)
        return
    try:
        _set_note(dag_run.id, outcome)
    except Exception:  # noqa: BLE001 - a note never fails the scheduler; the run's state stands
        log.warning("no outcome note for run %s: it could not be written", run_id, exc_info=True)


def _set_note(dag_run_pk: int, outcome: str) -> None:
    """Write the note in a session and on a connection of its own, never Airflow's `settings.Session`: in the
    scheduler that is the scheduler's own (scoped, per thread) session, and committing it in the middle of its
    loop breaks its row locks ("UNEXPECTED COMMIT") and detaches the runs it holds. The scheduler's lock on the
    run's row (FOR NO KEY UPDATE) lets a note row reference it; a short lock timeout makes sure this can never
    wait on the scheduler's own transaction."""
    import sqlalchemy as sa
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from sqlalchemy.orm import Session

    with Session(bind=settings.engine) as session:
        if settings.engine.dialect.name == "postgresql":
            session.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
        run = session.get(DagRun, dag_run_pk)
        given = run.note if run else None
        if run is not None and given != outcome:
            run.note = outcome if not given or given.startswith(outcome) else f"{outcome}\n\n{given}"
            session.commit()


class _RunNotes:
    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        write_outcome_note(dag_run)

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        write_outcome_note(dag_run)


class RunNotesPlugin(AirflowPlugin):
    name = "run_notes"
    listeners = [_RunNotes()]
