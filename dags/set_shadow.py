"""
### set_shadow

Manual only (`set_shadow` for the primary model config, `set_shadow__<model>` for each other): put a
registered version in shadow, or take it out, recorded as an event with the operator and the reason. A
version in shadow is scored by `score_patients` beside the champion (source `shadow`: stored for the
live comparison, never shown to the CRM); its artifact is checked against its registered SHA-256 first,
and at most `serving.max_shadows` versions are in shadow at once.

- `action: add` - the same as `python -m pipeline shadow --add VERSION --reason TEXT`.
- `action: remove` - the same as `python -m pipeline shadow --remove VERSION --reason TEXT`.

The Models view's "add as shadow" opens this DAG's form, prefilled.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from alerting import on_failure
from retrain_assets import manual_governance, models

from pipeline.contract.config import ModelEntry


def set_shadow_dag(model: ModelEntry) -> Any:
    """The Set shadow DAG of one model config."""

    @dag(
        dag_id=model.dag_id("set_shadow"),
        dag_display_name="Set shadow" + ("" if model.primary else f" ({model.name})"),
        description=("Manual: put a version in shadow (scored beside the champion by score_patients, never shown "
                     "to the CRM) or take it out, checked and recorded"),
        schedule=None,
        **manual_governance(model, __doc__),
        params={
            "action": Param("add", type="string", enum=["add", "remove"], title="Action",
                            description="add: put the version in shadow. remove: take it out."),
            "version": Param(None, type=["null", "integer"], minimum=1, title="Version",
                             description="The model version to put in shadow or take out."),
            "reason": Param("", type="string", minLength=3, title="Reason",
                            description="Why: recorded with the event."),
        },
    )
    def set_shadow_run() -> None:
        @task(on_failure_callback=on_failure(model, refusals=True))
        def set_shadow(params: dict[str, Any] | None = None) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowFailException
            from alerting import record_note

            from pipeline import champion
            from pipeline.tasks import in_airflow

            dag_run = get_current_context()["dag_run"]
            actor = f"airflow:{getattr(dag_run, 'triggering_user_name', None) or 'operator'}"
            chosen = params or {}
            version, add = chosen.get("version"), (chosen.get("action") or "add") == "add"
            if version is None:
                raise AirflowFailException("the form's Version field is empty: name the version to "
                                           + ("put in shadow" if add else "take out of shadow"))
            change = champion.add_shadow if add else champion.remove_shadow
            result: dict[str, Any] = in_airflow(model.config_path, lambda ws: change(
                ws, int(version), actor, chosen.get("reason") or ""))
            in_shadow = [int(s["version"]) for s in result.get("shadows", [])]
            record_note(dag_run, f"done: v{version} {'added to' if add else 'removed from'} shadow; in shadow now: "
                                 f"{', '.join(f'v{v}' for v in in_shadow) or 'none'}")
            return {"version": int(version), "action": "add" if add else "remove", "in_shadow": in_shadow}

        set_shadow()

    return set_shadow_run()


for _model in models():
    set_shadow_dag(_model)
