"""
### process_erasures

A patient's erasure, asked for by the CRM: every pending row of `pipeline.erasure_requests` (the CRM
inserts `(source_id, reason, requested_by)`) is processed, oldest first, every 15 minutes. Each
erasure waits for the retrain stages at work to end (an advisory lock they hold shared), then removes
the patient from every copy the pipeline holds: snapshots rewritten under new hashes (old -> new in
`pipeline.snapshot_redactions`, the old files shredded), quarantine rows, forecasts, scoring refusals,
sample ids in the registry, report and card pages. Versions trained on the patient are flagged
`trained_on_erased`; the champion among them must be replaced within `erasure.retrain_within_days`,
which the `retrain` DAG does. A tombstone (a keyed hash of the id) keeps ingest from taking the row
again. The same as `python -m pipeline erase --id ID --reason TEXT`; `python -m pipeline
erasure-report ID` shows every place searched.

A failure of the infrastructure (database, disk, an erasure that waited too long for a stage) is
retried twice, after 30 s and 60 s; the request stays pending until it is done.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, get_current_context, task
from alerting import on_failure
from retrain_assets import models

from pipeline.contract.config import ModelEntry

RETRY: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": 2.0,
                         "max_retry_delay": timedelta(minutes=10)}


def process_erasures_dag(model: ModelEntry) -> Any:
    """The erasure DAG: one per database would do; it runs under the primary model's config."""

    @dag(
        dag_id="process_erasures",
        schedule=timedelta(minutes=15),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["privacy"],
        description=("Every 15 minutes: each pending row of pipeline.erasure_requests erased from every copy the "
                     "pipeline holds (snapshots, quarantine, forecasts, reports), with a tombstone against re-ingest"),
        doc_md=__doc__,
    )
    def process_erasures() -> None:
        @task(on_failure_callback=on_failure(model), **RETRY)
        def erase_pending() -> list[dict[str, Any]]:
            from alerting import record_note

            from pipeline.tasks import in_airflow
            from pipeline.views.run_notes import erasure_note

            def work(ws: Any) -> list[dict[str, Any]]:
                from pipeline import erasure

                return [{k: r[k] for k in ("request_id", "status", "bytes_rewritten", "versions_trained_on_erased")
                         if k in r} for r in erasure.process_pending(ws)]
            results = list(in_airflow(model.config_path, work))
            record_note(get_current_context()["dag_run"], erasure_note(results))
            return results

        erase_pending()

    return process_erasures()


process_erasures_dag(models()[0])
