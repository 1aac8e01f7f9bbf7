"""The `retrain` DAG run through Airflow (dag.test) against a real PostgreSQL."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.contract.config import DEFAULT_MODEL, load_config
from pipeline.contract.settings import Settings
from pipeline.data import demo
from pipeline.registry import records
from pipeline.store import crypto, db, keys
from tests.dags.test_run_notes import run_note


def _engine(settings: Settings) -> sa.engine.Engine:
    return db.create_engine(db.database_url(settings))


def _champion_state(engine: sa.engine.Engine, settings: Settings) -> tuple[dict[str, Any] | None, bytes | None]:
    with engine.connect() as conn:
        champion = records.current_champion(conn, DEFAULT_MODEL)
    artifact = (settings.artifact_dir / champion["artifact_path"]).read_bytes() if champion else None
    return champion, artifact


def test_first_run_promotes_and_second_run_challenges(airflow_db: None, dag_bag: Any, pipeline_env: Settings) -> None:
    engine = _engine(pipeline_env)
    demo.seed_demo(engine)
    dag = dag_bag.dags["retrain"]

    first = dag.test()
    assert first.state == "success"
    searched = sorted((ti.map_index, ti.rendered_map_index, ti.state) for ti in first.get_task_instances()
                      if ti.task_id == "search_family")
    families = list(load_config(pipeline_env.config_path).training.families)
    assert searched == [(index, family, "success") for index, family in enumerate(families)]
    champion, _ = _champion_state(engine, pipeline_env)
    assert champion is not None and champion["promoted_by_run"] == first.run_id

    demo.simulate_arrivals(engine, rows=60, seed=7)
    second = dag.test(run_conf={"margin": 0.0})
    assert second.state == "success"
    with engine.connect() as conn:
        evaluation = records.get_evaluation(conn, second.run_id)
        run = conn.execute(sa.text("SELECT * FROM pipeline.training_runs WHERE run_id = :r"),
                           {"r": second.run_id}).mappings().one()
    assert evaluation["champion_version"] == champion["version"]
    assert evaluation["candidate_version"] != champion["version"]
    assert evaluation["candidate_metrics"]["n"] == evaluation["champion_metrics"]["n"]
    assert evaluation["policy"]["margin"] == 0.0
    assert run["status"] in {"promoted", "kept"} and run["reason"]
    assert run["params"]["margin"] == 0.0


def test_failed_validation_fails_the_run_and_keeps_the_champion(airflow_db: None, dag_bag: Any, pipeline_env: Settings) -> None:
    engine = _engine(pipeline_env)
    demo.seed_demo(engine)
    dag = dag_bag.dags["retrain"]
    assert dag.test().state == "success"
    before = _champion_state(engine, pipeline_env)

    with engine.begin() as conn:  # 10 % of the rows get an unknown sex: over the 5 % quarantine limit
        conn.execute(sa.text("UPDATE public.patient_records SET sex = 'X' WHERE patient_id % 10 = 0"))
    failed = dag.test()

    assert failed.state == "failed"
    assert _champion_state(engine, pipeline_env) == before
    keyring = crypto.Keyring(engine, lambda: keys.open_key_manager(pipeline_env))
    with engine.connect() as conn:  # its sample ids are sealed (encryption at rest): opened with the stack's keys
        row = conn.execute(sa.text(
            "SELECT * FROM pipeline.validation_results WHERE run_id = :r"), {"r": failed.run_id}).mappings().one()
        stored = SimpleNamespace(**records.opened(dict(row), keyring))
        run = conn.execute(sa.text("SELECT status, reason FROM pipeline.training_runs WHERE run_id = :r"),
                           {"r": failed.run_id}).one()
    assert stored.success is False
    assert any(f["column"] == "sex" and 10 in f["sample_ids"] for f in stored.failures)
    assert run.status == "validation_failed"
    assert "expect_column_values_to_be_in_set on sex" in run.reason
    failures = [f"{f['expectation']} on {f['column']}" + (f" ({f['unexpected_count']} rows)" if f.get("unexpected_count")
                                                          else "") for f in stored.failures]
    headline = run.reason.splitlines()[0].rstrip(":")
    assert run_note("retrain", failed.run_id) == f"validation failed: {headline}: {'; '.join(failures)}"  # in full


def test_an_out_of_range_param_is_refused_before_the_run(airflow_db: None, dag_bag: Any, pipeline_env: Settings) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag_bag.dags["retrain"].test(run_conf={"margin": 5})
