"""The `set_champion` DAG through Airflow (dag.test) on a real PostgreSQL: promote a shadow, roll back."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa

from pipeline import champion
from pipeline.contract.settings import Settings
from pipeline.data import demo
from pipeline.workspace import Workspace
from tests.dags.test_run_notes import run_note
from tests.dags.test_score_dag import _champion_events
from tests.integration.stage_runs import fetch, make_run, promote_demo_champion, quick_workspace, retrain_through_stages


def _two_versions(settings: Settings) -> Workspace:
    """Version 1 champion; version 2 (a heavily shrunk ridge) evaluated, kept out, and put in shadow."""
    ws = quick_workspace(Workspace.open(settings))
    promote_demo_champion(ws)
    demo.simulate_arrivals(ws.engine, rows=30, seed=7)
    weak = dataclasses.replace(ws.config.training, families={"ridge": {"alpha": 800.0}})
    kept = retrain_through_stages(dataclasses.replace(ws, config=dataclasses.replace(ws.config, training=weak)),
                                  make_run("second"))
    assert (kept["candidate"]["version"], kept["outcome"]["status"]) == (2, "kept")
    champion.add_shadow(ws, 2, "test", "kept out by the margin")
    return ws


def _events(ws: Workspace) -> list[tuple[Any, ...]]:
    """The promotion history; the actor as its kind (airflow:<the triggering user>)."""
    rows = fetch(ws, "SELECT from_version, to_version, run_id, split_part(actor, ':', 1) AS actor, reason "
                     "FROM pipeline.promotion_events ORDER BY event_id")
    return [tuple(r.values()) for r in rows]


def test_operators_promote_a_shadow_and_roll_back_with_params(airflow_db: None, dag_bag: Any,
                                                              pipeline_env: Settings) -> None:
    ws = _two_versions(pipeline_env)
    dag = dag_bag.dags["set_champion"]

    promoted = dag.test(run_conf={"mode": "promote", "to_version": 2, "reason": "better on live outcomes"})

    assert promoted.state == "success"
    assert _events(ws)[-1] == (1, 2, promoted.run_id, "airflow", "promote: better on live outcomes")
    [evidence] = fetch(ws, "SELECT evidence FROM pipeline.promotion_events WHERE run_id = :r", r=promoted.run_id)
    assert evidence["evidence"]["version"] == 2 and evidence["evidence"]["shadow_forecasts"] == 0
    assert fetch(ws, "SELECT version FROM pipeline.shadows") == []  # the champion left the shadow set
    assert _champion_events(promoted.run_id) == [
        {"source": "promote", "version": 2, "reason": "better on live outcomes"}]
    assert run_note("set_champion", promoted.run_id) == "done: v2 is champion (was v1), promote: better on live outcomes"

    # every param named: dag.test in one process keeps the last run's conf as the DAG's params
    rolled_back = dag.test(run_conf={"mode": "rollback", "to_version": None, "reason": "version 2 over-predicts"})

    assert rolled_back.state == "success"
    assert _events(ws)[-1] == (2, 1, rolled_back.run_id, "airflow", "rollback: version 2 over-predicts")
    assert [e.get("source") for e in _champion_events(rolled_back.run_id)] == ["rollback"]

    before = _events(ws)
    refused = dag.test(run_conf={"mode": "promote", "to_version": 1, "reason": "already is"})

    assert refused.state == "failed"
    assert _events(ws) == before and _champion_events(refused.run_id) == []
    assert run_note("set_champion", refused.run_id) == (
        "refused: version 1 is already the champion of diabetes_progression; nothing changed")

    # a refusal says what to set in the form's words, never a CLI flag
    unnamed = dag.test(run_conf={"mode": "promote", "to_version": None, "reason": "the better one"})
    assert unnamed.state == "failed"
    assert run_note("set_champion", unnamed.run_id) == (
        "refused: a promotion needs the version to make champion: choose one in the form's Version field; "
        "nothing changed")
    with ws.engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT version FROM pipeline.champion")) == 1
    ws.engine.dispose()


def test_set_champion_params_for_operators(dag_bag: Any) -> None:
    dag = dag_bag.dags["set_champion"]
    params = dag.params
    assert params.get_param("mode").schema["enum"] == ["rollback", "promote"] and params["mode"] == "rollback"
    assert params.get_param("to_version").schema["type"] == ["null", "integer"]
    assert params.get_param("reason").schema["minLength"] >= 1
    assert params["force"] is False
    for name in ("mode", "to_version", "reason", "force"):
        assert params.get_param(name).description
    assert dag.dag_display_name == "Set champion" and dag.schedule is None
    assert [a.name for a in dag.get_task("set_champion").outlets] == ["champion_model"]
