"""Each `retrain` run's note states its outcome; its params are checked before any stage runs (dag.test, real
PostgreSQL, the project's plugins loaded as Airflow loads them)."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from pipeline.contract.config import DEFAULT_MODEL, load_config
from pipeline.contract.settings import Settings
from pipeline.data import demo, ingest
from pipeline.registry import records
from pipeline.store import db


def _engine(settings: Settings) -> sa.engine.Engine:
    return db.create_engine(db.database_url(settings))


def run_note(dag_id: str, run_id: str) -> str | None:
    """The note Airflow shows beside a run (written by the `run_notes` plugin when the run ended)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.scalar(sa.select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).note


def _note(run_id: str) -> str | None:
    return run_note("retrain", run_id)


def _training_run(engine: sa.engine.Engine, run_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM pipeline.training_runs WHERE run_id = :r"),
                            {"r": run_id}).mappings().first()


def _count(engine: sa.engine.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.text(f"SELECT count(*) FROM pipeline.{table}")))


def _task_log(records: list[logging.LogRecord], task_id: str) -> list[str]:
    """The lines a task logged at INFO and above in a dag.test() run, between its start and end."""
    lines, inside = [], False
    for record in records:
        message = record.getMessage()
        inside = inside or f"starting task_id={task_id} " in message
        if inside:
            lines.append(message)
        if f"end task task_id={task_id} " in message:
            break
    return lines


def test_a_promotion_and_a_run_without_new_data_say_so(airflow_db: None, dag_bag: Any, pipeline_env: Settings,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    engine = _engine(pipeline_env)
    demo.seed_demo(engine)
    dag = dag_bag.dags["retrain"]

    with caplog.at_level(logging.INFO):  # a task logs at INFO in Airflow
        first = dag.test()
    assert first.state == "success"
    assert re.fullmatch(r"promoted v1: RMSE \d+\.\d \(first champion\)", _note(first.run_id) or "")
    # the validation says what it did in a few lines (no library chatter), its report linked in the Models view
    validate_log = _task_log(caplog.records, "validate_snapshot")
    assert 2 < len(validate_log) <= 8, validate_log
    view = Settings.from_env().view_url
    assert any(f"report {view}/diabetes_progression/runs/{quote(first.run_id, safe='')}/quality" in line
               for line in validate_log), validate_log

    # the form's Logical Date is no data cut-off: a manual run reads the rows recorded up to its trigger time
    triggered = datetime.now(UTC)
    second = dag.test(logical_date=datetime(2026, 1, 5, tzinfo=UTC), run_after=triggered)
    assert second.state == "success"
    assert _note(second.run_id) == "skipped: no new data"
    assert _training_run(engine, second.run_id)["watermark"] == triggered


def test_a_margin_out_of_range_is_refused_before_the_run_exists(airflow_db: None, dag_bag: Any,
                                                                 pipeline_env: Settings) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    engine = _engine(pipeline_env)
    demo.seed_demo(engine)
    with pytest.raises(ParamValidationError, match="5 is greater than the maximum of 0.5"):
        dag_bag.dags["retrain"].test(run_conf={"margin": 5})
    assert _count(engine, "training_runs") == 0


def test_an_as_of_run_trains_on_the_rows_up_to_then_and_never_promotes(airflow_db: None, dag_bag: Any,
                                                                        pipeline_env: Settings) -> None:
    engine = _engine(pipeline_env)
    demo.seed_demo(engine)
    contract = load_config(pipeline_env.config_path).dataset
    with engine.connect() as conn:
        as_of = conn.scalar(sa.text("SELECT percentile_disc(0.8) WITHIN GROUP (ORDER BY recorded_at) "
                                    "FROM public.patient_records"))
        expected = conn.scalar(sa.select(sa.func.count()).select_from(
            ingest.labelled_rows_query(contract, as_of).subquery()))
        everything = conn.scalar(sa.text("SELECT count(*) FROM public.patient_records"))
    assert 0 < expected < everything

    past = dag_bag.dags["retrain"].test(run_conf={"as_of": as_of.isoformat()})

    assert past.state == "success"
    run = _training_run(engine, past.run_id)
    with engine.connect() as conn:
        snapshot = records.run_snapshot(conn, past.run_id)
        champion = records.current_champion(conn, DEFAULT_MODEL)
        evaluation = records.get_evaluation(conn, past.run_id)
    assert run["watermark"] == as_of and snapshot["row_count"] == expected
    assert run["status"] == "kept" and champion is None  # a first model would be promoted by any other run
    assert evaluation["decision"] == "promote" and "never promoted" in run["reason"]
    assert _count(engine, "promotion_events") == 0
    assert _note(past.run_id) == (f"as of {as_of.astimezone(UTC):%Y-%m-%d %H:%M} UTC: would promote "
                                  f"v{evaluation['candidate_version']}: RMSE "
                                  f"{evaluation['candidate_metrics']['rmse']:.1f} (first champion), never promoted")


def test_an_as_of_in_the_future_is_refused(airflow_db: None, dag_bag: Any, pipeline_env: Settings) -> None:
    engine = _engine(pipeline_env)
    demo.seed_demo(engine)
    triggered = datetime(2026, 6, 1, tzinfo=UTC)

    refused = dag_bag.dags["retrain"].test(run_after=triggered, run_conf={"as_of": "2026-06-02T00:00:00+00:00"})

    assert refused.state == "failed"
    assert _training_run(engine, refused.run_id) is None  # refused before the run was written (every table:
    assert _count(engine, "snapshots") == 0               # tests/dags/test_preflight_dag.py)
    assert "(as_of): 2026-06-02T00:00:00+00:00 is in the future (after 2026-06-01" in (_note(refused.run_id) or "")
