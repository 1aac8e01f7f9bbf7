"""
### rollback

Manual only: make an earlier model version champion again, in one transaction, recorded in
`pipeline.promotion_events`. The version's artifact is checked against its registered SHA-256
before it becomes champion. Leave `to_version` empty to go back to the version the current
champion replaced. The same as `python -m pipeline rollback [--to VERSION] --reason TEXT`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["governance"],
    doc_md=__doc__,
    params={
        "to_version": Param(None, type=["null", "integer"], minimum=1, title="Version",
                            description="The model version to make champion. Empty: the previous champion."),
        "reason": Param("", type="string", minLength=3, title="Reason",
                        description="Why: recorded with the event in the promotion history."),
    },
)
def rollback() -> None:
    @task
    def rollback_champion(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from pipeline.settings import Settings
        from pipeline.stages import Workspace, rollback_champion

        dag_run = get_current_context()["dag_run"]
        user = getattr(dag_run, "triggering_user_name", None) or "operator"
        return rollback_champion(Workspace.open(Settings.from_env()), dag_run.run_id, (params or {})["reason"],
                                 (params or {}).get("to_version"), actor=f"airflow:{user}")

    rollback_champion()


rollback()
