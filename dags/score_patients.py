"""
### score_patients

The champion's forecast for every record that needs one, for the CRM (`score_patients` for the
primary model config, `score_patients__<model>` for each other). Runs nightly at 03:30 UTC, after
the 02:00 retrain, and whenever the model's champion changes: a promotion, or the `rollback`
(set champion) DAG, emits the asset `champion_model` (`champion_model__<model>`).

**score_records** - reads the records `serving.score_records` selects (awaiting their outcome, or
all) in chunks of `serving.batch_rows`, checks each against the data contract as training does,
writes each valid record's forecast and interval to `pipeline.predictions` and each invalid one to
`pipeline.scoring_refusals` with its reasons. `pipeline.latest_forecasts` is what the CRM reads:
one current forecast per record, from the current champion. Each version in shadow
(`python -m pipeline shadow`) scores the same records beside it, as source `shadow`: stored for the
live comparison, never shown to the CRM; a shadow that cannot be loaded or cannot score is stopped,
named in `pipeline.scoring_runs.shadows`, and the champion's forecasts go on. A retried run replaces
its own rows, shadow ones too. The same as `python -m pipeline score --run-id ID`.

A failure of the infrastructure (database, disk, a missing artifact) is retried twice, after 30 s
and 60 s; any other (no champion yet, a schema problem) fails at once in one line.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, get_current_context, task
from alerting import on_failure
from retrain_assets import champion_model, models

from pipeline.contract.config import ModelEntry

# As the retrain's stages: an infrastructure failure is retried after 30 s, then 60 s; any other is not.
RETRY: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": 2.0,
                         "max_retry_delay": timedelta(minutes=10)}


def score_patients_dag(model: ModelEntry) -> Any:
    """The batch scoring DAG of one model config."""

    @dag(
        dag_id=model.dag_id("score_patients"),
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable("30 3 * * *", timezone="UTC"), assets=champion_model(model)
        ),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["serving", model.name],
        description=("Nightly at 03:30 UTC, or when the champion changes (asset "
                     f"{champion_model(model).name}): the champion's forecast for every record awaiting one, for the CRM"),
        doc_md=__doc__,
    )
    def score_patients() -> None:
        @task(on_failure_callback=on_failure(model), **RETRY)
        def score_records() -> dict[str, Any]:
            from alerting import record_note

            from pipeline.serving.scoring import score_batch
            from pipeline.tasks import in_airflow
            from pipeline.views.run_notes import score_note

            dag_run = get_current_context()["dag_run"]
            summary: dict[str, Any] = in_airflow(model.config_path, lambda ws: score_batch(ws, model.run_id(dag_run.run_id)))
            record_note(dag_run, score_note(summary))
            return summary

        score_records()

    return score_patients()


for _model in models():
    score_patients_dag(_model)
