"""
### rollback

Manual only (`rollback` for the primary model config, `rollback__<model>` for each other):
make an earlier version of the model champion again, in one transaction, recorded in
`pipeline.promotion_events`. The version's artifact is checked against its registered SHA-256
before it becomes champion. Leave `to_version` empty to go back to the version the current
champion replaced. A version that failed its policy checks when it was evaluated (behaviour,
prediction range, R² floor) is refused unless `force` is set; the checks are then recorded in
the event. The same as `python -m pipeline rollback [--to VERSION] --reason TEXT [--force]`.
A rollback emits the asset `champion_model` (`champion_model__<model>`), which starts `score_patients`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from retrain_assets import champion_model, models

from pipeline.config import ModelEntry


def rollback_dag(model: ModelEntry) -> Any:
    """The rollback DAG of one model config."""

    @dag(
        dag_id=model.dag_id("rollback"),
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["governance", model.name],
        doc_md=__doc__,
        params={
            "to_version": Param(None, type=["null", "integer"], minimum=1, title="Version",
                                description="The model version to make champion. Empty: the previous champion."),
            "reason": Param("", type="string", minLength=3, title="Reason",
                            description="Why: recorded with the event in the promotion history."),
            "force": Param(False, type="boolean", title="Force",
                           description="Roll back even to a version that failed its policy checks when evaluated "
                           "(they are named in the error, and recorded with the event)."),
        },
    )
    def rollback() -> None:
        @task(outlets=[champion_model(model)])  # a new champion: score_patients runs
        def rollback_champion(params: dict[str, Any] | None = None) -> dict[str, Any]:
            from pipeline.runs import in_airflow
            from pipeline.stages import rollback_champion

            dag_run = get_current_context()["dag_run"]
            user = getattr(dag_run, "triggering_user_name", None) or "operator"
            chosen = params or {}
            return in_airflow(model.config_path, lambda ws: rollback_champion(
                ws, model.run_id(dag_run.run_id), chosen["reason"], chosen.get("to_version"),
                actor=f"airflow:{user}", force=bool(chosen.get("force"))))

        rollback_champion()

    return rollback()


for _model in models():
    rollback_dag(_model)
