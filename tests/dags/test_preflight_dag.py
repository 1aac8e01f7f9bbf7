"""A retrain DAG run that cannot succeed fails in its first task, before it writes anything, with the one-line
reason naming the key or column (the same `pipeline.stages.preflight` the CLI runs), or the trigger's param as the
Trigger form shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.store import db
from pipeline.workspace import Workspace
from tests.dags.test_run_notes import run_note
from tests.integration.test_preflight import bogus_parameter, drop_glucose, registry_state, write_config

pytestmark = pytest.mark.timeout(600)


def _refused_in_first_task(dag: Any, engine: sa.engine.Engine, settings: Settings, words: str,
                           caplog: pytest.LogCaptureFixture, **test: Any) -> Any:
    """`dag.test(**test)` fails in ingest_snapshot, logging `words` in one line, and writes nothing in the pipeline
    schema but the run's note, which names the cause too (in the note Airflow shows). The DAG run."""
    before = registry_state(engine, settings.artifact_dir)
    with caplog.at_level("ERROR", logger="pipeline.tasks"):
        run = dag.test(**test)
    assert run.state == "failed"
    ingest = run.get_task_instance("ingest_snapshot")
    assert (ingest.state, ingest.try_number) == ("failed", 1)  # a data failure: never retried
    assert run.get_task_instance("validate_snapshot").state != "success"
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.tasks"]
    assert any(words in line and "\n" not in line for line in lines), lines
    after = registry_state(engine, settings.artifact_dir)
    # no run row, snapshot, file or event; only the Airflow run's note, which tells the operator why (issue 31)
    with engine.connect() as conn:
        notes = conn.scalars(sa.text("SELECT note FROM pipeline.run_notes WHERE dag_id = 'retrain'")).all()
    assert len(notes) == after["rows"].pop("run_notes") - before["rows"].pop("run_notes") == 1, notes
    assert words in notes[0], notes
    assert after == before
    assert words in (run_note(dag.dag_id, run.run_id) or ""), run_note(dag.dag_id, run.run_id)
    return run


@pytest.fixture
def source(pipeline_env: Settings) -> Any:
    Workspace.open(pipeline_env).engine.dispose()  # the pipeline schema and the demo table
    engine = db.create_engine(db.database_url(pipeline_env))
    demo.seed_demo(engine)
    yield engine
    engine.dispose()


def test_a_source_without_a_contract_column_fails_the_first_task_before_any_write(
        airflow_db: None, dag_bag: Any, pipeline_env: Settings, source: sa.engine.Engine,
        caplog: pytest.LogCaptureFixture) -> None:
    with source.begin() as conn:
        drop_glucose(conn)
    _refused_in_first_task(dag_bag.dags["retrain"], source, pipeline_env,
                           "source table public.patient_records lacks contract column(s) ['glucose']", caplog)


def test_an_estimator_parameter_that_does_not_exist_fails_the_first_task_before_any_write(
        airflow_db: None, pipeline_env: Settings, source: sa.engine.Engine, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PIPELINE_CONFIG", str(write_config(tmp_path, bogus_parameter)))
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "retrain.py")).dags["retrain"]
    _refused_in_first_task(dag, source, pipeline_env,
                           "training.families.ridge.bogus: ridge (Ridge) has no parameter 'bogus'", caplog)


@pytest.mark.parametrize(("conf", "words"), [
    ({"marin": 5}, "trigger params refused, nothing ran: unknown param 'marin': the retrain params are "
                   "Promotion margin (margin), Dry run (dry_run), Force (force), As of (past data cut-off) (as_of)"),
    ({"as_of": "2100-01-01T00:00:00+00:00"},
     "trigger params refused, nothing ran: param As of (past data cut-off) (as_of): 2100-01-01T00:00:00+00:00 is in "
     "the future"),
])
def test_trigger_params_refused_write_no_run_only_the_note_naming_the_form_field(
        airflow_db: None, dag_bag: Any, pipeline_env: Settings, source: sa.engine.Engine, conf: dict[str, Any],
        words: str, caplog: pytest.LogCaptureFixture) -> None:
    _refused_in_first_task(dag_bag.dags["retrain"], source, pipeline_env, words, caplog, run_conf=conf)
