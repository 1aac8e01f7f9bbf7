"""
### retrain

Continuous training of one model (`model:` in its config; `retrain` is the one PIPELINE_CONFIG
names, `retrain__<model>` each config in PIPELINE_MODELS_DIR). Starts nightly at 02:00 UTC, when
an operator presses Trigger, and when the model's asset (`labelled_patient_records` for the
primary model) gets an event: new labelled rows landed (the arrival watcher) or the drift
monitor found drift.

1. **ingest_snapshot** - labelled rows up to the run's watermark, frozen into a snapshot named
   by its SHA-256; how the run was started is recorded with it.
2. **has_new_data** - when the newest model was trained on these very rows, the run ends here
   as "no new data" (unless `force`).
3. **validate_snapshot** - normalises what is safe, then classifies every row with the Great
   Expectations suite in `expectations/`: valid rows go to a clean snapshot, the rest to
   `pipeline.quarantine` with reasons. A schema problem, or more quarantined rows than
   `quality.max_quarantine_share`, stops the run and names the expectations and columns.
4. **plan_search** / **search_family** / **train_candidate** - the model search, fanned out: one
   mapped `search_family` task per configured family cross-validates it on the same seeded rows
   and folds (on any worker, within one shared `search_budget_seconds`); `train_candidate` picks
   the lowest CV RMSE, fits it as a single scikit-learn Pipeline and registers it. Same winner,
   CV table and predictions as the sequential search of `python -m pipeline train`.
5. **evaluate_candidate** - candidate and champion on the same most-recent held-out rows.
6. **promote_candidate** - promotes in one transaction when the policy says so; else keeps the
   champion and records why.
7. **champion_changed** / **announce_champion** - after a promotion (only then), an event on the
   asset `champion_model` (`champion_model__<model>`), which starts `score_patients`.

Every step is a function in `pipeline.stages`; `python -m pipeline <stage>` runs the same by hand.

**When a step fails**, the run is marked failed with a one-line reason. A failure of the
infrastructure (database unreachable or timed out, disk full or read-only, an artifact missing)
is retried twice, after 30 s and 60 s; its arrivals signal again. A failure of the data, the
contract or the config (validation, a bad value, a refused retry) fails at once: waiting would
not change it. A task whose process is killed leaves its run marked `failed (abandoned)` by the
next command that looks.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from types import SimpleNamespace
from typing import Any

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task
from alerting import on_failure
from retrain_assets import champion_model, labelled_records, models

from pipeline.contract.config import ModelEntry
from pipeline.contract.params import SPECS, json_schema

# Every stage task: an infrastructure failure is retried after 30 s, then 60 s (`pipeline.tasks.airflow_task`
# turns any other failure into AirflowFailException, which is never retried).
RETRY: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": 2.0,
                         "max_retry_delay": timedelta(minutes=10)}


def _run(model: ModelEntry) -> Any:
    """The pipeline's view of this DAG run: id, data cut-off, and how it was started.

    The cut-off (watermark) of a manual run is its trigger time, never the form's Logical Date; an
    `as_of` param asks for a past one (such a run never promotes). A scheduled or asset-triggered
    run reads up to the end of its data interval."""
    from pipeline.contract.params import as_of, check_conf
    from pipeline.registry.runs import Run
    from pipeline.stages import describe_trigger

    context = get_current_context()
    dag_run = context["dag_run"]
    events = [e.model_dump(mode="json") for e in getattr(dag_run, "consumed_asset_events", None) or []]
    run_type = getattr(dag_run.run_type, "value", str(dag_run.run_type))
    label, event = describe_trigger(run_type, getattr(dag_run, "triggering_user_name", None), events)
    cut_off = as_of(check_conf(dag_run.conf, dag_run.run_after), dag_run.run_after)  # this run's own conf
    watermark = cut_off or (dag_run.run_after if run_type == "manual" else None) or context.get("data_interval_end") \
        or dag_run.run_after
    return Run(run_id=model.run_id(dag_run.run_id), watermark=watermark, triggered_by=label, trigger_event=event,
               as_of=cut_off)


def _workspace(model: ModelEntry) -> Any:
    from pipeline.workspace import Workspace

    return Workspace.for_config(model.config_path)


def _stage(model: ModelEntry, name: str, *args: Any, **kwargs: Any) -> Any:
    """Run `pipeline.stages.<name>` for this DAG run; a failure is one line, retried only when infrastructure
    failed (`pipeline.tasks.airflow_task`)."""
    from pipeline.tasks import in_airflow

    def work(ws: Any) -> Any:
        from pipeline import stages  # scikit-learn loads inside the task's thread sizing (pipeline.runtime.threads)

        return getattr(stages, name)(ws, _run(model), *args, **kwargs)
    return in_airflow(model.config_path, work)


def _checked_params() -> dict[str, Any]:
    """The run's conf checked against `pipeline.contract.params` before anything runs: an unknown key (Airflow's own
    validation lets it through), a bad value or an `as_of` after the trigger time fails the task at once with the
    one-line reason, and nothing is written but the run's note (and an alert, when configured)."""
    from pipeline.contract import params
    from pipeline.contract.settings import Settings
    from pipeline.tasks import airflow_task

    dag_run = get_current_context()["dag_run"]
    return dict(airflow_task(Settings.from_env(), lambda: params.check_trigger(dag_run.conf, dag_run.run_after)))


def _record_failure(model: ModelEntry, context: Any) -> None:
    from pipeline.registry.runs import failure_kind
    from pipeline.stages import mark_run_failed

    error = context.get("exception")
    mark_run_failed(_workspace(model), model.run_id(context["dag_run"].run_id),
                    f"{context['task_instance'].task_id}: {error}", failure_kind(error) if error else "data")


PARAMS = {spec.name: Param(**json_schema(spec)) for spec in SPECS}  # one definition with the CLI's


def stage_tasks(model: ModelEntry, champion: Any) -> SimpleNamespace:
    """The retrain's tasks for one model config: each runs one `pipeline.stages` function (`_stage`)."""

    @task(**RETRY)
    def ingest_snapshot() -> dict[str, Any]:
        return _stage(model, "ingest_snapshot", _checked_params())

    @task.short_circuit(**RETRY)
    def has_new_data(snapshot: dict[str, Any], params: dict[str, Any] | None = None) -> bool:
        return bool(_stage(model, "has_new_data", snapshot["snapshot_hash"], bool((params or {}).get("force"))))

    @task(**RETRY)
    def validate_snapshot(snapshot: dict[str, Any]) -> str:
        return str(_stage(model, "validate_snapshot", snapshot["snapshot_hash"])["clean_snapshot_hash"])

    @task(**RETRY)
    def plan_search(snapshot_hash: str) -> list[dict[str, Any]]:  # after validation: its rows are clean
        from pipeline.tasks import in_airflow

        def plan(ws: Any) -> list[dict[str, Any]]:
            from pipeline.stages import plan_search

            return plan_search(ws)
        return list(in_airflow(model.config_path, plan))

    @task(map_index_template="{{ family }}", **RETRY)
    def search_family(snapshot_hash: str, plan: dict[str, Any]) -> dict[str, Any]:
        get_current_context()["family"] = plan["family"]  # type: ignore[typeddict-unknown-key]
        return _stage(model, "search_family", snapshot_hash, plan["family"], plan["started_at"], plan["first"])

    @task(**RETRY)
    def train_candidate(snapshot_hash: str, searched: list[dict[str, Any]]) -> int:
        return int(_stage(model, "train_candidate", snapshot_hash, list(searched))["version"])

    @task(**RETRY)
    def evaluate_candidate(version: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return _stage(model, "evaluate_candidate", version, (params or {}).get("margin"))

    @task(**RETRY)
    def promote_candidate(evaluation: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        return _stage(model, "promote_candidate", dry_run=bool((params or {}).get("dry_run")))

    @task.short_circuit(**RETRY)
    def champion_changed(result: dict[str, Any]) -> bool:
        return bool(result["status"] == "promoted")

    @task(outlets=[champion], **RETRY)
    def announce_champion(result: dict[str, Any]) -> None:
        from alerting import PipelineNotifier

        from pipeline.monitoring import alerts

        context = get_current_context()
        context["outlet_events"][champion].extra = {
            "source": "promotion", "version": result["candidate_version"], "reason": result["reason"]}
        PipelineNotifier(model, alerts.new_champion(model.name, result["candidate_version"], result.get("replaced"),
                                                    "promoted", result["reason"], model.run_id(context["dag_run"].run_id)))(context)

    return SimpleNamespace(**{name: value for name, value in locals().items() if name not in ("model", "champion")})


def retrain_dag(model: ModelEntry) -> Any:
    """The retrain DAG of one model config: the whole story of a retrain, wired."""
    champion = champion_model(model)
    t = stage_tasks(model, champion)

    @dag(
        dag_id=model.dag_id("retrain"),
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"), assets=labelled_records(model)
        ),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["training", model.name],
        description=("Nightly at 02:00 UTC, or when new labelled rows land or drift is found (asset "
                     f"{labelled_records(model).name}): snapshot, validate, train, evaluate, promote only over the champion"),
        doc_md=__doc__,
        default_args={"retries": 0, "on_failure_callback": [partial(_record_failure, model), *on_failure(model)]},
        params=PARAMS,
    )
    def retrain() -> None:
        snapshot = t.ingest_snapshot()
        checked = t.validate_snapshot(snapshot)
        t.has_new_data(snapshot) >> checked  # nothing new: the run stops here, skipped
        searched = t.search_family.partial(snapshot_hash=checked).expand(plan=t.plan_search(checked))
        promoted = t.promote_candidate(t.evaluate_candidate(t.train_candidate(checked, searched)))
        t.champion_changed(promoted) >> t.announce_champion(promoted)

    return retrain()


for _model in models():
    retrain_dag(_model)
