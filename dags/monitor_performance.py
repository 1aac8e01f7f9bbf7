"""
### monitor_performance

The champion judged on real outcomes, for one model (`monitor_performance` for the primary config,
`monitor_performance__<model>` for each other). Runs daily at 01:30 UTC and whenever the model's asset
(`labelled_patient_records`) gets an event, i.e. after outcomes arrived.

**check_performance** - joins the outcomes known at the run's time (target filled in, label time up to
then, and accepted by the data contract as a training row would be: a refused outcome, say -999 or NaN, is
counted by reason and judges nothing) to the forecasts in `pipeline.predictions` made for those records before the outcome was known,
each judged against the version that made it (batch and API forecasts as "served", shadow forecasts per
shadow version). Per version, slice (`promotion.slices`) and month of the outcome: RMSE, MAE, bias
(outcome - forecast) and interval coverage, stored in `pipeline.performance_reports` and
`pipeline.performance_metrics` with an HTML report (live against holdout RMSE, coverage, bias by slice,
shadows paired with the champion on the same patients). The same as `python -m pipeline performance`.

The champion is **degraded** when its live RMSE is over `monitoring.performance.max_ratio` times its
holdout RMSE on at least `min_outcomes` outcomes and the bootstrap interval of the ratio (at
`confidence`) lies wholly above `max_ratio`. A threshold left out disables this (a warning in the log
and the report). **request_retrain** then emits an event on the retrain asset with source `performance`
(the retrain records `triggered_by` performance). A champion version signals once, and again only after
`min_outcomes` more outcomes, or when no retrain answered its signal within 30 minutes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, get_current_context, task
from alerting import on_failure
from retrain_assets import labelled_records, models

from pipeline.contract.config import ModelEntry


def monitor_performance_dag(model: ModelEntry) -> Any:
    """The live-performance monitor of one model config."""
    asset = labelled_records(model)

    @dag(
        dag_id=model.dag_id("monitor_performance"),
        schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("30 1 * * *", timezone="UTC"), assets=asset),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["monitoring", model.name],
        description=("Daily at 01:30 UTC, or when outcomes arrive (asset "
                     f"{asset.name}): the champion judged on real outcomes; a degraded one starts a retrain"),
        doc_md=__doc__,
    )
    def monitor_performance() -> None:
        @task(retries=2, retry_delay=timedelta(seconds=30), retry_exponential_backoff=2.0,
              on_failure_callback=on_failure(model))
        def check_performance() -> dict[str, Any]:
            from alerting import PipelineNotifier, record_note

            from pipeline.monitoring import alerts
            from pipeline.monitoring.performance import monitor_performance
            from pipeline.registry.runs import Run
            from pipeline.tasks import in_airflow
            from pipeline.views.run_notes import performance_note

            context = get_current_context()
            dag_run = context["dag_run"]
            run = Run(run_id=model.run_id(dag_run.run_id), watermark=context.get("data_interval_end") or dag_run.run_after,
                      triggered_by="monitor_performance")
            result = in_airflow(model.config_path, lambda ws: monitor_performance(ws, run))
            record_note(dag_run, performance_note(result))
            degraded = alerts.degraded_champion(model.name, result)
            if degraded is not None:
                PipelineNotifier(model, degraded)(context)
            return {"run_id": result["run_id"], "verdict": result["verdict"], "degraded": result["degraded"],
                    "version": result["champion_version"], "outcomes": result["outcomes"],
                    "live_rmse": result["live_rmse"], "holdout_rmse": result["holdout_rmse"],
                    "signal_id": (result["signal"] or {}).get("signal_id"), "report_path": result["report_path"],
                    "refused_outcomes": (result["refused_outcomes"] or {}).get("refused", 0)}

        @task.short_circuit
        def signal_due(result: dict[str, Any]) -> bool:
            return result["signal_id"] is not None

        @task(outlets=[asset])
        def request_retrain(result: dict[str, Any]) -> None:
            get_current_context()["outlet_events"][asset].extra = {
                "source": "performance", "performance_run_id": result["run_id"], "version": result["version"],
                "live_rmse": result["live_rmse"], "holdout_rmse": result["holdout_rmse"],
                "signal_id": result["signal_id"],
            }

        result = check_performance()
        signal_due(result) >> request_retrain(result)

    return monitor_performance()


for _model in models():
    monitor_performance_dag(_model)
