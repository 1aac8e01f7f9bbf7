"""Airflow for DAG tests: a throw-away AIRFLOW_HOME and a fresh metadata database.

Airflow reads its configuration when first imported, so the environment is set here, before
any test module in this folder imports it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli.localenv import airflow_environment
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.store import db

# One metadata database per pytest process (`make test` runs two, pytest-xdist names them gw0, gw1).
AIRFLOW_TEST_DATABASE = f"airflow_test_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


def _configure_airflow() -> None:
    settings = Settings.from_env()
    metadata_url = db.with_database(db.database_url(settings), AIRFLOW_TEST_DATABASE)
    db.drop_database(metadata_url)
    home = tempfile.mkdtemp(prefix="airflow-test-home-")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    environ["AIRFLOW_HOME"] = home
    os.environ.update(airflow_environment(settings, environ, metadata_db=AIRFLOW_TEST_DATABASE))


_configure_airflow()


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """An initialised Airflow metadata database (dag.test() needs one)."""
    from airflow.utils import db as airflow_db_utils

    airflow_db_utils.initdb()


@pytest.fixture(scope="session")
def dag_bag(airflow_db: None) -> object:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


@pytest.fixture
def pipeline_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Point the DAG's tasks (which read the environment) at this test's database and folder."""
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    monkeypatch.setenv("PIPELINE_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    yield Settings.from_env()
