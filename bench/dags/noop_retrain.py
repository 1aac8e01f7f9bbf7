"""`noop_retrain`: the retrain DAG's shape (tasks, edges, the mapped search, the short circuits) with tasks
that do nothing. What a run of it costs is Airflow's own: the orchestration floor `python -m bench.orchestration`
sets beside a real retrain. Only the bench puts it in a DAGs folder. Its shape is
written out here, not read from retrain; tests/dags/test_dag_integrity.py holds the two together and runs it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import dag, get_current_context, task

FAMILIES = 3  # the mapped search's width: pipeline.yaml's families (the bench passes its own count in the plan)


@dag(dag_id="noop_retrain", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
     tags=["bench"], default_args={"retries": 0})
def noop_retrain() -> None:
    @task
    def ingest_snapshot() -> dict[str, Any]:
        return {"snapshot_hash": "noop"}

    @task.short_circuit
    def has_new_data(snapshot: dict[str, Any]) -> bool:
        return True

    @task
    def validate_snapshot(snapshot: dict[str, Any]) -> str:
        return str(snapshot["snapshot_hash"])

    @task
    def plan_search(snapshot_hash: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return [{"family": f"family-{i}"} for i in range(int((params or {}).get("families", FAMILIES)))]

    @task(map_index_template="{{ family }}")
    def search_family(snapshot_hash: str, plan: dict[str, Any]) -> dict[str, Any]:
        get_current_context()["family"] = plan["family"]  # type: ignore[typeddict-unknown-key]  # the map index's name
        return plan

    @task
    def train_candidate(snapshot_hash: str, searched: list[dict[str, Any]]) -> int:
        return len(list(searched))

    @task
    def evaluate_candidate(version: int) -> dict[str, Any]:
        return {"version": version}

    @task
    def promote_candidate(evaluation: dict[str, Any]) -> dict[str, Any]:
        return {"status": "kept"}

    @task.short_circuit
    def champion_changed(result: dict[str, Any]) -> bool:
        return True

    @task
    def announce_champion(result: dict[str, Any]) -> None:
        return None

    snapshot = ingest_snapshot()
    checked = validate_snapshot(snapshot)
    has_new_data(snapshot) >> checked
    searched = search_family.partial(snapshot_hash=checked).expand(plan=plan_search(checked))
    promoted = promote_candidate(evaluate_candidate(train_candidate(checked, searched)))
    champion_changed(promoted) >> announce_champion(promoted)


noop_retrain()
