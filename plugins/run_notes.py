"""The outcome of every run of the project's DAGs as its DAG run note ("promoted v3: RMSE 46.9 → 45.1", "skipped:
no new data", "v3 scored 34 of 40 records; 6 refused: ...", "refused: ...; nothing changed").

A task cannot write its run's note in Airflow 3: the Task SDK reads `dag_run.note` but has no call that
sets it, and a task process has no access to the metadata database. So the note is written by a
listener, in the process that sets the run's final state (the scheduler, or the one running `dag.test()`),
which may use Airflow's ORM: `on_dag_run_success` / `on_dag_run_failed`. The words come from
`pipeline.views.run_notes`: a retrain's are read from the registry, so a run that failed, was skipped or was
refused gets its note too; every other DAG's task records its outcome, or its failure, in `pipeline.run_notes`
(`plugins/alerting.py`), read here. A note the operator gave at trigger time is kept below the outcome.
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
MAX_NOTE = 1000  # dag_run_note.content is a varchar(1000)


def _engine() -> Engine:
    from pipeline.contract.settings import Settings
    from pipeline.store import db

    return _engine_on(db.database_url(Settings.from_env()))


@cache
def _engine_on(url: str) -> Engine:
    from pipeline.store import db

    return db.create_engine(url)


NOTED_DAGS = ("retrain", "score_patients", "monitor_drift", "monitor_performance", "set_champion", "rollback",
              "set_shadow")


def _kind_of(dag_id: str) -> tuple[str, Any] | None:
    """Which of the project's DAGs this is ('retrain', 'score_patients', ...) and its model; None for another."""
    from retrain_assets import models

    return next(((base, m) for m in models() for base in NOTED_DAGS if m.dag_id(base) == dag_id), None)


def _outcome(dag_run: Any, failed: bool) -> str | None:
    """The note of a finished run: a retrain's from the registry (or, refused before it wrote its run, as its failed
    task recorded it), any other's as its task recorded it."""
    from pipeline.registry import records
    from pipeline.views.run_notes import note_of_run

    found = _kind_of(dag_run.dag_id)
    if found is None:
        return None
    base, model = found
    with _engine().connect() as conn:
        if base == "retrain" and records.get_run(conn, model.run_id(dag_run.run_id)) is not None:
            return note_of_run(conn, model.run_id(dag_run.run_id))
        recorded = records.run_note(conn, dag_run.dag_id, dag_run.run_id)
    return recorded or ("failed before any stage ran: see the task log" if failed else None)


def write_outcome_note(dag_run: Any, failed: bool = False) -> None:
    """Set the note of a finished run of the project's DAGs to its outcome, keeping a note given at trigger time."""
    run_id = dag_run.run_id
    try:
        outcome = _outcome(dag_run, failed)
    except Exception:  # noqa: BLE001 - a note never fails the scheduler; the run's state stands
        log.warning("no outcome note for run %s: the registry could not be read", run_id, exc_info=True)
        return
    if outcome is None:
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
            note = outcome if not given or given.startswith(outcome) else f"{outcome}\n\n{given}"
            run.note = note if len(note) <= MAX_NOTE else note[: MAX_NOTE - 1] + "…"
            session.commit()


class _RunNotes:
    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        write_outcome_note(dag_run)

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        write_outcome_note(dag_run, failed=True)


class RunNotesPlugin(AirflowPlugin):
    name = "run_notes"
    listeners = [_RunNotes()]
