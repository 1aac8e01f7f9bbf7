"""`score_patients` run through Airflow (dag.test) on a real PostgreSQL, and the champion asset that starts it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pipeline.contract.settings import Settings
from pipeline.data import demo
from pipeline.store import db


def _engine(settings: Settings) -> sa.engine.Engine:
    return db.create_engine(db.database_url(settings))


def _champion_events(run_id: str) -> list[dict[str, Any]]:
    """The events on the `champion_model` asset that a DAG run emitted, as Airflow recorded them."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.name == "champion_model", AssetEvent.source_run_id == run_id).all())
        return [dict(e.extra or {}) for e in events]


def _state(dag_id: str, run_id: str, task_id: str) -> str | None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id).one()
        return None if ti.state is None else str(getattr(ti.state, "value", ti.state))


def test_a_promotion_announces_the_champion_and_scoring_runs(airflow_db: None, dag_bag: Any,
                                                             pipeline_env: Settings) -> None:
    engine = _engine(pipeline_env)
    demo.seed_demo(engine)
    promoted = dag_bag.dags["retrain"].test()
    assert promoted.state == "success"
    assert _state("retrain", promoted.run_id, "announce_champion") == "success"
    assert [e.get("source") for e in _champion_events(promoted.run_id)] == ["promotion"]

    demo.simulate_arrivals(engine, rows=25, seed=5, labelled=False, bad_rows=2)
    scored = dag_bag.dags["score_patients"].test()

    assert scored.state == "success"
    with engine.connect() as conn:
        run = conn.execute(sa.text("SELECT * FROM pipeline.scoring_runs WHERE run_id = :r"),
                           {"r": scored.run_id}).mappings().one()
        forecasts = conn.scalar(sa.text("SELECT count(*) FROM pipeline.latest_forecasts WHERE run_id = :r"),
                                {"r": scored.run_id})
    assert (run["status"], run["rows_selected"], run["rows_refused"]) == ("done", 25, 2)
    assert run["rows_scored"] == 23 == forecasts

    kept = dag_bag.dags["retrain"].test(run_conf={"dry_run": True, "force": True})  # no new champion: no event
    assert kept.state == "success"
    assert _state("retrain", kept.run_id, "announce_champion") == "skipped"
    assert _champion_events(kept.run_id) == []


def test_without_a_champion_scoring_fails_in_one_line(airflow_db: None, dag_bag: Any, pipeline_env: Settings) -> None:
    demo.seed_demo(_engine(pipeline_env))

    failed = dag_bag.dags["score_patients"].test()

    assert failed.state == "failed"
    with _engine(pipeline_env).connect() as conn:
        run = conn.execute(sa.text("SELECT status, reason FROM pipeline.scoring_runs WHERE run_id = :r"),
                           {"r": failed.run_id}).one()
    assert run.status == "failed"
    assert run.reason.startswith("model 'diabetes_progression' has no champion")


def test_promotion_and_rollback_emit_the_asset_scoring_is_scheduled_on(dag_bag: Any) -> None:
    score = dag_bag.dags["score_patients"]
    assert score.timetable.timetable.expression == "30 3 * * *"  # nightly after the 02:00 retrain, or-ed
    assert score.timetable.asset_condition.name == "champion_model"
    assert score.catchup is False and score.max_active_runs == 1
    assert [a.name for a in dag_bag.dags["retrain"].get_task("announce_champion").outlets] == ["champion_model"]
    assert "announce_champion" in dag_bag.dags["retrain"].get_task("champion_changed").downstream_task_ids
    assert [a.name for a in dag_bag.dags["rollback"].get_task("set_champion").outlets] == ["champion_model"]
    for task in score.tasks:
        assert task.retries >= 1 and task.retry_exponential_backoff > 1, task.task_id
