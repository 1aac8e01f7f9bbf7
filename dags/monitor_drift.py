"""
### monitor_drift

Hourly, for one model (`monitor_drift` for the primary config, `monitor_drift__<model>` for
each other): compares the records that arrived since the champion's training snapshot (labelled or
not) with that snapshot, feature by feature (PSI and Kolmogorov-Smirnov for numeric features,
PSI and chi-squared for categorical ones; thresholds under `monitoring.drift` in pipeline.yaml).
The result is stored in `pipeline.drift_reports` with an HTML report. Drift starts a retrain
through the model's asset (`labelled_patient_records` for the primary one), and the retrain run records that drift started it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, get_current_context, task
from alerting import on_failure
from retrain_assets import labelled_records, models

from pipeline.contract.config import ModelEntry


def monitor_drift_dag(model: ModelEntry) -> Any:
    """The drift monitor of one model config."""
    asset = labelled_records(model)

    @dag(dag_id=model.dag_id("monitor_drift"), schedule="@hourly", start_date=datetime(2026, 1, 1), catchup=False,
         max_active_runs=1, tags=["monitoring", model.name], doc_md=__doc__,
         description="Hourly: recent records against the champion's training rows, feature by feature; drift starts "
                     f"a retrain (asset {asset.name})")
    def monitor_drift() -> None:
        @task(retries=2, retry_delay=timedelta(seconds=30), retry_exponential_backoff=2.0,
              on_failure_callback=on_failure(model))
        def check_drift() -> dict[str, Any]:
            from alerting import PipelineNotifier, record_note

            from pipeline.monitoring import alerts
            from pipeline.registry.runs import Run
            from pipeline.stages import monitor_drift
            from pipeline.tasks import in_airflow
            from pipeline.views.run_notes import drift_note

            context = get_current_context()
            dag_run = context["dag_run"]
            run = Run(run_id=model.run_id(dag_run.run_id),
                      watermark=context.get("data_interval_end") or dag_run.run_after, triggered_by="monitor_drift")
            result = in_airflow(model.config_path, lambda ws: monitor_drift(ws, run))
            record_note(dag_run, drift_note(result))
            alarm = alerts.drift_alarm(model.name, result, result["champion_version"])
            if alarm is not None:
                PipelineNotifier(model, alarm)(context)
            return {k: result[k] for k in ("run_id", "verdict", "drifted_features", "recent_rows", "report_path")}

        @task.short_circuit
        def drift_found(result: dict[str, Any]) -> bool:
            return bool(result["verdict"] == "drift")

        @task(outlets=[asset])
        def request_retrain(result: dict[str, Any]) -> None:
            get_current_context()["outlet_events"][asset].extra = {
                "source": "drift", "drift_run_id": result["run_id"], "drifted_features": result["drifted_features"],
            }

        result = check_drift()
        drift_found(result) >> request_retrain(result)

    return monitor_drift()


for _model in models():
    monitor_drift_dag(_model)
