"""`score_patients` run through Airflow (dag.test) on a real PostgreSQL, and the champion asset that starts it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from pipeline.contract.settings import Settings
from pipeline.data import demo
from pipeline.store import db
from pipeline.workspace import Workspace
from tests.dags.test_run_notes import run_note
from tests.integration.stage_runs import SCORER_WAITING, promote_demo_champion, quick_workspace, wait_until


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
    refused = ", ".join(f"{k} {v}" for k, v in sorted(run["reason_counts"].items(), key=lambda kv: (-kv[1], kv[0])))
    assert run_note("score_patients", scored.run_id) == (
        f"v1 scored 23 of 25 records (awaiting_outcome); 2 refused: {refused}")

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
    assert run_note("score_patients", failed.run_id) == f"failed (data) in score_records: {run.reason}"


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


def _first(engine: sa.engine.Engine, sql: str, **params: Any) -> dict[str, Any] | None:
    """The query's first row, on a new transaction (pg_stat_activity is a snapshot per transaction)."""
    with engine.connect() as conn:
        row = conn.execute(sa.text(sql), params).mappings().first()
    return None if row is None else dict(row)


def _lose_the_database_mid_write(engine: sa.engine.Engine, run_id: str, faulty: int, seen: dict[str, Any]) -> None:
    """Hold a refusal row of `run_id` so the scorer waits after writing its forecasts; then end every session of
    the database (as a server restart does), note what the failed try left, and let the retry through."""
    with engine.connect() as blocker:
        blocker.execute(sa.text("INSERT INTO pipeline.scoring_refusals (run_id, source_id, reasons) "
                                "VALUES (:r, :id, '[]')"), {"r": run_id, "id": str(faulty)})
        seen["ready"].set()
        wait_until(lambda: _first(engine, SCORER_WAITING), "the scorer to wait mid-write")
        blocker.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        seen["failed"] = wait_until(lambda: _first(engine, "SELECT status, reason FROM pipeline.scoring_runs "
                                                   "WHERE run_id = :r AND status = 'failed'", r=run_id),
                                    "the first try to fail")
        seen["forecasts"] = _first(engine, "SELECT count(*) AS n FROM pipeline.predictions WHERE run_id = :r",
                                   r=run_id)["n"]
        blocker.rollback()


def test_a_database_lost_mid_write_is_retried_and_the_retry_scores_whole(airflow_db: None, dag_bag: Any,
                                                                          pipeline_env: Settings) -> None:
    ws = quick_workspace(Workspace.open(pipeline_env))
    promote_demo_champion(ws)
    ids = demo.simulate_arrivals(ws.engine, rows=25, seed=5, labelled=False)
    with ws.engine.begin() as conn:  # refused by the contract: its refusal is written after the forecasts
        conn.execute(sa.text("UPDATE public.patient_records SET sex = 'X' WHERE patient_id = :id"), {"id": ids[0]})
    run_after = datetime.now(UTC)
    run_id = f"manual__{run_after.isoformat()}"
    seen: dict[str, Any] = {"ready": threading.Event()}
    saboteur = threading.Thread(target=_lose_the_database_mid_write, args=(ws.engine, run_id, ids[0], seen))
    dag = dag_bag.dags["score_patients"]
    task = dag.get_task("score_records")
    delay = task.retry_delay
    task.retry_delay = timedelta(seconds=3)  # as documented, only sooner
    try:
        saboteur.start()
        assert seen["ready"].wait(60)
        scored = dag.test(logical_date=run_after, run_after=run_after)
    finally:
        task.retry_delay = delay
        saboteur.join(timeout=300)

    assert scored.run_id == run_id and scored.state == "success"
    ti = scored.get_task_instance("score_records")
    assert (ti.state, ti.try_number) == ("success", 2)  # infrastructure: retried, not failed at once
    assert seen["failed"]["reason"].startswith("database postgresql"), seen["failed"]  # one line naming it
    assert "\n" not in seen["failed"]["reason"] and "connection already closed" not in seen["failed"]["reason"]
    assert seen["forecasts"] == 0  # the failed try's forecasts were never visible
    with ws.engine.connect() as conn:
        run = conn.execute(sa.text("SELECT * FROM pipeline.scoring_runs WHERE run_id = :r"), {"r": run_id}).mappings().one()
        forecasts = conn.scalar(sa.text("SELECT count(*) FROM pipeline.predictions WHERE run_id = :r"), {"r": run_id})
    assert (run["status"], run["rows_selected"], run["rows_scored"], run["rows_refused"]) == ("done", 25, 24, 1)
    assert forecasts == 24
    ws.engine.dispose()
