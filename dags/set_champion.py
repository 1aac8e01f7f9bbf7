"""
### set_champion

Manual only (`set_champion` for the primary model config, `set_champion__<model>` for each other;
`rollback` / `rollback__<model>` is the same DAG under its old id, kept for existing callers): make a chosen version of the model champion, in one transaction, recorded in
`pipeline.promotion_events` with the operator and the reason. The version's artifact is checked
against its registered SHA-256 before it becomes champion. A version that failed its policy checks
when it was evaluated (behaviour, prediction range, R² floor), or never was, is refused unless
`force` is set; the checks are then recorded in the event.

- `mode: rollback` - back to an earlier version; leave `to_version` empty to go back to the version
  the current champion replaced. The same as `python -m pipeline rollback [--to VERSION] --reason TEXT
  [--force]`.
- `mode: promote` - any registered version, typically one in shadow (`python -m pipeline shadow`):
  `to_version` is needed, and the event records the version's live evidence (its shadow forecasts,
  and how many have their outcome known). The same as `python -m pipeline promote --to VERSION
  --reason TEXT [--force]`. A version in shadow that becomes champion leaves the shadow set.

Either emits the asset `champion_model` (`champion_model__<model>`), which starts `score_patients`.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from alerting import on_failure
from retrain_assets import champion_model, manual_governance, models

from pipeline.contract.config import ModelEntry


def set_champion_dag(model: ModelEntry, base_id: str = "set_champion") -> Any:
    """The Set champion DAG of one model config, under `base_id` (`rollback`: its old id, for existing callers)."""
    champion = champion_model(model)
    old_id = base_id != "set_champion"

    @dag(
        dag_id=model.dag_id(base_id),
        dag_display_name=("Set champion" + ("" if model.primary else f" ({model.name})")
                          + (f" (old id, same as {model.dag_id('set_champion')})" if old_id else "")),
        description=("Manual: make a chosen version champion (roll back, or promote a shadow), checked and recorded; "
                     "then score_patients runs" + (f". The old id of {model.dag_id('set_champion')}" if old_id else "")),
        schedule=None,
        **manual_governance(model, __doc__),
        params={
            "mode": Param("rollback", type="string", enum=["rollback", "promote"], title="Mode",
                          description="rollback: back to an earlier version (by default the previous champion). "
                          "promote: make the named version champion, a shadow say, with its live evidence."),
            "to_version": Param(None, type=["null", "integer"], minimum=1, title="Version",
                                description="The model version to make champion. Empty (rollback only): the "
                                "previous champion."),
            "reason": Param("", type="string", minLength=3, title="Reason",
                            description="Why: recorded with the event in the promotion history."),
            "force": Param(False, type="boolean", title="Force",
                           description="Even a version that failed its policy checks when evaluated, or never was "
                           "(they are named in the error, and recorded with the event)."),
        },
    )
    def set_champion_run() -> None:
        # a new champion: score_patients runs. A refusal (a failure on the data) is noted and told as such.
        @task(outlets=[champion], on_failure_callback=on_failure(model, refusals=True))
        def set_champion(params: dict[str, Any] | None = None) -> dict[str, Any]:
            from alerting import PipelineNotifier, record_note

            from pipeline.champion import promote_version
            from pipeline.monitoring import alerts
            from pipeline.stages import FORM, rollback_champion
            from pipeline.tasks import in_airflow
            from pipeline.views.run_notes import champion_note

            context = get_current_context()
            dag_run = context["dag_run"]
            actor = f"airflow:{getattr(dag_run, 'triggering_user_name', None) or 'operator'}"
            chosen, run_id = params or {}, model.run_id(dag_run.run_id)
            mode = chosen.get("mode") or "rollback"
            change = promote_version if mode == "promote" else rollback_champion
            result: dict[str, Any] = in_airflow(model.config_path, lambda ws: change(
                ws, run_id, to_version=chosen.get("to_version"), reason=chosen.get("reason") or "", actor=actor,
                force=bool(chosen.get("force")), ask=FORM))
            context["outlet_events"][champion].extra = {
                "source": mode, "version": result["champion"], "reason": result["reason"]}
            record_note(dag_run, champion_note(result, mode))
            PipelineNotifier(model, alerts.new_champion(model.name, result["champion"], result["replaced"],
                                                        f"{mode} ({actor})", result["reason"], run_id))(context)
            return result

        set_champion()

    return set_champion_run()


for _model in models():
    set_champion_dag(_model)
    set_champion_dag(_model, "rollback")
