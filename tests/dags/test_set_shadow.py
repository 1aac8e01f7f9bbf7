"""The `set_shadow` DAG through Airflow (dag.test) on a real PostgreSQL: the Models view's "add as shadow" form
triggers it; a version goes into shadow and out again, each an event with the operator and the reason."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pipeline.contract.settings import Settings
from pipeline.data import demo
from pipeline.workspace import Workspace
from tests.dags.test_run_notes import run_note
from tests.integration.stage_runs import fetch, make_run, promote_demo_champion, quick_workspace, retrain_through_stages


@pytest.mark.timeout(600)
def test_a_version_goes_into_shadow_and_out_by_the_form(airflow_db: None, dag_bag: Any,
                                                        pipeline_env: Settings) -> None:
    ws = quick_workspace(Workspace.open(pipeline_env))
    promote_demo_champion(ws)
    demo.simulate_arrivals(ws.engine, rows=30, seed=7)
    weak = dataclasses.replace(ws.config.training, families={"ridge": {"alpha": 800.0}})
    kept = retrain_through_stages(dataclasses.replace(ws, config=dataclasses.replace(ws.config, training=weak)),
                                  make_run("second"))
    assert kept["outcome"]["status"] == "kept"
    dag = dag_bag.dags["set_shadow"]

    added = dag.test(run_conf={"action": "add", "version": 2, "reason": "watch it on live outcomes"})

    assert added.state == "success"
    assert [r["version"] for r in fetch(ws, "SELECT version FROM pipeline.shadows")] == [2]
    assert run_note("set_shadow", added.run_id) == "done: v2 added to shadow; in shadow now: v2"

    removed = dag.test(run_conf={"action": "remove", "version": 2, "reason": "seen enough"})

    assert removed.state == "success"
    assert fetch(ws, "SELECT version FROM pipeline.shadows") == []
    assert run_note("set_shadow", removed.run_id) == "done: v2 removed from shadow; in shadow now: none"

    unnamed = dag.test(run_conf={"action": "add", "version": None, "reason": "no version given"})

    assert unnamed.state == "failed"
    assert fetch(ws, "SELECT version FROM pipeline.shadows") == []
    assert "Version field is empty" in (run_note("set_shadow", unnamed.run_id) or "")
