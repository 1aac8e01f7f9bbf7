"""A try lost with its worker is given back (`plugins/lost_tries.py`): the scheduler's own heartbeat-timeout code
fails a `running` try whose heartbeat is stale, and the retry it queues does not spend one of the task's retries.
Real metadata database, the task instance of a real `dag.test()` run, Airflow's scheduler functions and the
project's plugins as Airflow loads them; no executor process (its event buffer is the hand-off under test)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.contract.settings import Settings
from pipeline.store import db
from pipeline.workspace import Workspace


@pytest.fixture
def failed_run(airflow_db: None, dag_bag: Any, pipeline_env: Settings) -> Any:
    """A `retrain` run whose first task (`ingest_snapshot`, retries=2) failed at once: its source table is gone."""
    Workspace.open(pipeline_env).engine.dispose()
    engine = db.create_engine(db.database_url(pipeline_env))
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE public.patient_records"))
    engine.dispose()
    return dag_bag.dags["retrain"].test()


def test_a_try_lost_with_its_worker_is_retried_without_spending_a_retry(failed_run: Any) -> None:
    from airflow.callbacks.database_callback_sink import DatabaseCallbackSink
    from airflow.executors.local_executor import LocalExecutor
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.log import Log
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from lost_tries import GIVEN_BACK, MAX_GIVEN_BACK

    executor = LocalExecutor()
    executor.callback_sink = DatabaseCallbackSink()
    with create_session() as session:
        job = Job(job_type="SchedulerJob")
        session.add(job)
    runner = SchedulerJobRunner(job=job, executors=[executor])
    key = {"dag_id": "retrain", "run_id": failed_run.run_id, "task_id": "ingest_snapshot", "map_index": -1}

    def ti_now(session: Any) -> Any:
        return session.scalar(sa.select(TI).filter_by(**key))

    def lose(try_number: int, *, heartbeat_timeout: bool = True) -> tuple[str, int]:
        """Try `try_number` runs on a worker that is gone: its heartbeat is older than the timeout. The scheduler's
        loop finds it (or, without a heartbeat timeout, the executor alone reports the try failed) and handles the
        executor's event; the task instance's state and max_tries after it."""
        with create_session() as session:
            ti = ti_now(session)
            ti.state, ti.try_number, ti.queued_by_job_id = "running", try_number, job.id
            ti.last_heartbeat_at = datetime.now(UTC) - timedelta(hours=1)
        if heartbeat_timeout:
            runner._find_and_purge_task_instances_without_heartbeats()
        else:
            with create_session() as session:
                executor.change_state(ti_now(session).key, "failed", remove_running=True)
        with create_session() as session:
            runner._process_executor_events(executor, session)
        with create_session() as session:
            ti = ti_now(session)
            return ti.state, ti.max_tries

    with create_session() as session:
        assert ti_now(session).max_tries == 2  # retries=2
    # Try 1 lost: retried, and the budget is raised by the lost try: two real failures still get their retries.
    assert lose(1) == ("up_for_retry", 3)
    # A failure the scheduler did not find by its heartbeat (the executor's word alone) is charged as always.
    assert lose(2, heartbeat_timeout=False) == ("up_for_retry", 3)
    # A task whose tries keep being lost is given back MAX_GIVEN_BACK tries in all, then charged.
    assert [lose(n) for n in (3, 4)] == [("up_for_retry", 4), ("up_for_retry", 5)]
    assert lose(5) == ("up_for_retry", 5)
    # The last try lost stays failed (its failure callback was queued before any listener ran).
    assert lose(6) == ("failed", 5)

    with create_session() as session:
        given = session.scalars(sa.select(Log).filter_by(**key, event=GIVEN_BACK).order_by(Log.id)).all()
        history = session.scalars(sa.select(sa.text("try_number")).select_from(sa.text("task_instance_history"))
                                  .where(sa.text("dag_id = 'retrain' AND task_id = 'ingest_snapshot' "
                                                 "AND run_id = :run")).params(run=failed_run.run_id)).all()
    assert [g.try_number for g in given] == [1, 3, 4] and len(given) == MAX_GIVEN_BACK
    assert "try 1 was lost with its worker (heartbeat timeout): max_tries raised to 3" in given[0].extra
    assert sorted(history) == [1, 2, 3, 4, 5]  # every retried try kept in the history, as Airflow records it
