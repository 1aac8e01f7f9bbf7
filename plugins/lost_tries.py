"""A try lost with its worker is given back: the task is retried without spending a retry a real failure needs.

Airflow 3.3 charges a lost try like a failure. A task whose worker dies stops heartbeating; the scheduler's
`_find_and_purge_task_instances_without_heartbeats` logs a "heartbeat timeout" event for that try and tells the
executor the try failed; on its next loop `process_executor_events` finds the task instance still `running` and
calls `TaskInstance.handle_failure`, which sets `up_for_retry` while `try_number <= max_tries` (else `failed`) and
then calls the listeners' `on_task_instance_failed`, in the scheduler's process, with the very task instance it
saves (merges) afterwards. No setting changes that.

This listener runs there: when the failed try is one the scheduler logged as a heartbeat timeout and Airflow let
it retry, it raises the task instance's `max_tries` by one, so the retries a real failure gets are as many as the
task declares, and logs a "lost try given back" event beside Airflow's. A task whose tries keep being lost (one
that kills its worker) is given back at most `MAX_GIVEN_BACK` tries, then charged as before. A lost try that was
already the last one stays failed: Airflow has queued the task's failure callback before any listener runs.

A failure the task itself reports (in its worker, through the Task SDK) never reaches this code path with a
heartbeat-timeout event, so it is charged as always.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT = "heartbeat timeout"  # the event Airflow's scheduler logs for a try without heartbeat
GIVEN_BACK = "lost try given back"
MAX_GIVEN_BACK = 3


def _same_task(log_model: Any, ti: Any) -> list[Any]:
    return [log_model.dag_id == ti.dag_id, log_model.task_id == ti.task_id, log_model.run_id == ti.run_id,
            log_model.map_index == ti.map_index]


def give_back_lost_try(ti: Any) -> bool:
    """Raise `max_tries` of a task instance whose try the scheduler just failed for a heartbeat timeout and set to
    retry; True if it did. `ti` is the scheduler's task instance, which `handle_failure` saves (merges) next.

    It is read and logged in a session of its own, never Airflow's scoped `settings.Session`: when the task has a
    failure callback, `process_executor_events` has already closed that session by sending the callback (the
    database callback sink's `provide_session`), so `ti` arrives detached; committing it here would end the
    scheduler's transaction otherwise."""
    import sqlalchemy as sa
    from airflow import settings
    from airflow.models.log import Log
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy.orm import Session

    if ti.state != TaskInstanceState.UP_FOR_RETRY:
        return False
    with Session(bind=settings.engine) as session:
        lost = session.scalar(sa.select(sa.func.count()).select_from(Log).where(
            *_same_task(Log, ti), Log.event == HEARTBEAT_TIMEOUT, Log.try_number == ti.try_number))
        if not lost:
            return False
        given = session.scalar(sa.select(sa.func.count()).select_from(Log).where(*_same_task(Log, ti),
                                                                               Log.event == GIVEN_BACK))
        if given >= MAX_GIVEN_BACK:
            log.warning("try %s of %s lost with its worker is charged: %s lost tries were given back already",
                        ti.try_number, ti.key, given)
            return False
        ti.max_tries += 1
        session.add(Log(event=GIVEN_BACK, task_instance=ti.key,
                        extra=f"try {ti.try_number} was lost with its worker (heartbeat timeout): max_tries raised "
                              f"to {ti.max_tries}, so it does not count against the task's retries"))
        session.commit()
    log.info("try %s of %s was lost with its worker: given back (max_tries %s)", ti.try_number, ti.key,
             ti.max_tries)
    return True


class _LostTries:
    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        # In a worker the task instance is the Task SDK's, not the database's: a real failure, charged as always.
        if not hasattr(task_instance, "_sa_instance_state"):
            return
        try:
            give_back_lost_try(task_instance)
        except Exception:  # noqa: BLE001 - a listener never fails the scheduler; the try stays charged
            log.warning("lost try of %s not given back", task_instance, exc_info=True)


class LostTriesPlugin(AirflowPlugin):
    name = "lost_tries"
    listeners = [_LostTries()]
