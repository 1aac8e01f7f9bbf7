"""What a task found, told: its run's note (`pipeline.run_notes`) and alerts, through an Airflow notifier.

`PipelineNotifier` is an Airflow notifier (BaseNotifier) for one model config: as a task's
`on_failure_callback` it tells of the failed run, with its failure kind (a refused Set champion as a refused
promotion); called by a task with an event it found (`PipelineNotifier(model, alert)(context)`) it tells of
that event: a new champion, drift, a degraded champion. Delivery, channels and de-duplication are
`pipeline.monitoring.alerts`; nothing a notifier does ever fails a task. `on_failure` is what every DAG's
tasks call when they fail: the note, then the alert.
"""

from __future__ import annotations

import logging
from functools import cache, partial
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from pipeline.contract.config import ModelEntry
    from pipeline.monitoring.alerts import Alert

log = logging.getLogger(__name__)


@cache
def _engine_on(url: str) -> Engine:
    from pipeline.store import db

    return db.create_engine(url)


def pipeline_engine() -> Engine:
    """The pipeline's database, as the tasks reach it (PIPELINE_DATABASE_URL)."""
    from pipeline.contract.settings import Settings
    from pipeline.store import db

    return _engine_on(db.database_url(Settings.from_env()))


def _failure(context: Any) -> tuple[str, str, str]:
    """The failed task's id, its one-line reason and the failure's kind."""
    from pipeline.registry.runs import failure_kind

    error = context.get("exception")
    line = str(error).strip().splitlines()[0] if error and str(error).strip() else "see the task log"
    return context["task_instance"].task_id, line, failure_kind(error) if error else "data"


class PipelineNotifier(BaseNotifier):
    """Tells of one event of a model config (`alert`), or, as a failure callback, of the failed run."""

    def __init__(self, model: ModelEntry, alert: Alert | None = None, refusals: bool = False) -> None:
        super().__init__()
        self.model, self.alert, self.refusals = model, alert, refusals

    def notify(self, context: Any) -> None:
        try:
            from pipeline.contract.config import load_config
            from pipeline.monitoring import alerts

            alert = self.alert or self._failed(context)
            alerts.send(pipeline_engine(), load_config(self.model.config_path).alerts, alert)
        except Exception:  # noqa: BLE001 - an alert never fails the task, nor the run
            log.warning("no alert for %s: it could not be sent", self.model.name, exc_info=True)

    def _failed(self, context: Any) -> Alert:
        from pipeline.monitoring import alerts

        dag_run = context["dag_run"]
        task_id, line, kind = _failure(context)
        if self.refusals and kind == "data":
            return alerts.refused_promotion(self.model.name, dag_run.dag_id, dag_run.run_id, line)
        return alerts.failed_run(self.model.name, dag_run.dag_id, dag_run.run_id, task_id, kind, line)


def record_note(dag_run: Any, note: str) -> None:
    """The outcome note of this Airflow run; the `run_notes` plugin puts it on the run when it ends."""
    from pipeline.registry import records

    records.record_run_note(pipeline_engine(), dag_run.dag_id, dag_run.run_id, note)


def _failure_note(refusals: bool, context: Any) -> None:
    from pipeline.views.run_notes import failure_note

    task_id, line, kind = _failure(context)
    try:
        record_note(context["dag_run"], failure_note(task_id, line, kind, refused=refusals and kind == "data"))
    except Exception:  # noqa: BLE001 - a note never fails the task
        log.warning("no outcome note for %s: it could not be recorded", context["dag_run"].run_id, exc_info=True)


def on_failure(model: ModelEntry, refusals: bool = False) -> list[Any]:
    """A task's failure callbacks: the run's note, then its alert. `refusals`: a failure on the data is the
    operator's request refused (Set champion), not a failed run."""
    return [partial(_failure_note, refusals), PipelineNotifier(model, refusals=refusals)]
