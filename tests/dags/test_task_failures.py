"""How a stage failure looks in Airflow: one line; retried only when the infrastructure failed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline import stages
from pipeline.contract.settings import Settings
from pipeline.registry import runs
from pipeline.store import db
from pipeline.tasks import airflow_task
from pipeline.workspace import Workspace


def test_a_failure_on_the_data_fails_the_task_at_once_in_one_line(airflow_db: None, dag_bag: Any,
                                                                  pipeline_env: Settings,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    engine = db.create_engine(db.database_url(pipeline_env))
    Workspace.open(pipeline_env).engine.dispose()  # the pipeline schema, and the demo table, exist
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE public.patient_records"))

    with caplog.at_level("ERROR", logger="pipeline.tasks"):
        run = dag_bag.dags["retrain"].test()

    assert run.state == "failed"
    ingest = run.get_task_instance("ingest_snapshot")
    assert (ingest.state, ingest.try_number) == ("failed", 1)  # AirflowFailException: never retried
    assert [r.getMessage() for r in caplog.records if r.name == "pipeline.tasks"] == [
        "source table public.patient_records does not exist (dataset.table in the config)"]
    with engine.connect() as conn:  # refused before the run wrote anything (pipeline.stages.preflight)
        assert conn.scalar(sa.text("SELECT count(*) FROM pipeline.training_runs")) == 0
    engine.dispose()


def test_an_unreachable_database_is_retried_and_said_in_one_line_without_its_password(tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    settings = dataclasses.replace(Settings.from_env(), artifact_dir=tmp_path,
                                   database_url="postgresql+psycopg2://pipeline:s3cret@127.0.0.1:1/nowhere")

    with pytest.raises(runs.InfrastructureFailure) as raised:
        airflow_task(settings, lambda: Workspace.open(settings))

    [line] = str(raised.value).splitlines()
    assert line.startswith("database postgresql+psycopg2://pipeline:***@127.0.0.1:1/nowhere (PIPELINE_DATABASE_URL): ")
    assert "is it running and reachable?" in line and "s3cret" not in line
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no 17-line dump attached
    with pytest.raises(AirflowFailException, match="^a rollback needs a reason"):
        airflow_task(settings, lambda: stages.rollback_champion(None, "r", " "))  # type: ignore[arg-type]
