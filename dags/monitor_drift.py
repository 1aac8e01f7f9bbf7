"""
### monitor_drift

Hourly: compares the records that arrived since the champion's training snapshot (labelled or
not) with that snapshot, feature by feature (PSI and Kolmogorov-Smirnov for numeric features,
PSI and chi-squared for categorical ones; thresholds under `monitoring.drift` in pipeline.yaml).
The result is stored in `pipeline.drift_reports` with an HTML report. Drift starts a retrain
through the `labelled_patient_records` asset, and the retrain run records that drift started it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import dag, get_current_context, task
from retrain_assets import LABELLED_RECORDS


@dag(schedule="@hourly", start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
     tags=["monitoring"], doc_md=__doc__)
def monitor_drift() -> None:
    @task(retries=2)
    def check_drift() -> dict[str, Any]:
        from pipeline.settings import Settings
        from pipeline.stages import Run, Workspace, monitor_drift

        context = get_current_context()
        dag_run = context["dag_run"]
        run = Run(run_id=dag_run.run_id, watermark=context.get("data_interval_end") or dag_run.run_after,
                  triggered_by="monitor_drift")
        result = monitor_drift(Workspace.open(Settings.from_env()), run)
        return {k: result[k] for k in ("run_id", "verdict", "drifted_features", "recent_rows", "report_path")}

    @task.short_circuit
    def drift_found(result: dict[str, Any]) -> bool:
        return bool(result["verdict"] == "drift")

    @task(outlets=[LABELLED_RECORDS])
    def request_retrain(result: dict[str, Any]) -> None:
        get_current_context()["outlet_events"][LABELLED_RECORDS].extra = {
            "source": "drift", "drift_run_id": result["run_id"], "drifted_features": result["drifted_features"],
        }

    result = check_drift()
    drift_found(result) >> request_retrain(result)


monitor_drift()
