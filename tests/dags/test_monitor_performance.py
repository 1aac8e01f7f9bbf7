"""`monitor_performance` run through Airflow (dag.test) on a real PostgreSQL: a degraded champion emits an event
on the retrain asset with source `performance`, once."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pipeline import stages
from pipeline.contract.settings import Settings
from pipeline.store import db
from pipeline.workspace import Workspace
from tests.dags.test_run_notes import run_note
from tests.integration.test_performance import add_records, degraded_history, register_versions


def _retrain_events(run_id: str) -> list[dict[str, Any]]:
    """The events on the retrain asset that a DAG run emitted, as Airflow recorded them."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.name == "labelled_patient_records", AssetEvent.source_run_id == run_id).all())
        return [dict(e.extra or {}) for e in events]


def test_a_degraded_champion_requests_a_retrain_once(airflow_db: None, dag_bag: Any, pipeline_env: Settings) -> None:
    ws = Workspace.open(pipeline_env)
    version, = register_versions(ws, [10.0], champion=0)
    add_records(ws, list(range(8001, 8061)))
    degraded_history(ws, list(range(8001, 8061)), version, spread=25.0)  # outcomes known now: before the run
    dag = dag_bag.dags["monitor_performance"]

    first = dag.test()

    assert first.state == "success"
    [event] = _retrain_events(first.run_id)
    assert event["source"] == "performance" and event["version"] == version
    assert event["performance_run_id"] == first.run_id and event["holdout_rmse"] == 10.0
    assert event["live_rmse"] > 12.0 and event["signal_id"] is not None
    assert stages.describe_trigger("asset_triggered", None, [{"extra": event}])[0] == "performance"
    with db.create_engine(db.database_url(pipeline_env)).connect() as conn:
        report = conn.execute(sa.text("SELECT * FROM pipeline.performance_reports WHERE run_id = :r"),
                              {"r": first.run_id}).mappings().one()
    assert (report["verdict"], report["degraded"], report["signal_id"]) == ("degraded", True, event["signal_id"])
    assert run_note("monitor_performance", first.run_id) == (
        f"v{version} DEGRADED: live RMSE {report['live_rmse']:.1f} on {report['outcomes']} outcomes, "
        f"{report['live_rmse'] / 10.0:.2f} x holdout 10.0 [{report['ratio_low']:.2f}, {report['ratio_high']:.2f}]: "
        "retrain requested")

    second = dag.test()  # the same evidence: the signal is remembered, nothing is emitted

    assert second.state == "success"
    assert _retrain_events(second.run_id) == []
    assert (run_note("monitor_performance", second.run_id) or "").endswith(": retrain already requested")
    ws.engine.dispose()


def test_monitor_performance_runs_daily_and_after_outcomes(dag_bag: Any) -> None:
    dag = dag_bag.dags["monitor_performance"]
    assert dag.timetable.timetable.expression == "30 1 * * *"
    assert dag.timetable.asset_condition.name == "labelled_patient_records"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert [a.name for a in dag.get_task("request_retrain").outlets] == ["labelled_patient_records"]
    assert "request_retrain" in dag.get_task("signal_due").downstream_task_ids
    assert dag.doc_md and "max_ratio" in dag.doc_md
