"""Shared fixtures: a real PostgreSQL (embedded unless PIPELINE_DATABASE_URL names one)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.contract.config import PipelineConfig, load_config
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.store import db

# The files that start a whole Airflow (scheduler, API server, triggerer, workers) are marked `live_airflow`:
# `make test` runs them in one process after the rest, which runs on two (pytest-xdist, --dist loadgroup).
# Under xdist the live scheduler's module-scoped Airflow was set up twice, and its last test, which builds on
# the earlier ones, then waited on a paused DAG.
LIVE_AIRFLOW_FILES = ("tests/dags/test_celery_workers.py", "tests/dags/test_live_scheduler.py",
                      "tests/ui/test_browser.py", "tests/ui/test_models_view.py")


LIVE_AIRFLOW_TIMEOUT = 2400  # seconds a test that starts a whole Airflow may take; every other test: pyproject's


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the live-Airflow files (with a longer timeout); under xdist, keep every other file in one process,
    in file order."""
    for item in items:
        path = item.path.relative_to(PROJECT_ROOT).as_posix()
        if path in LIVE_AIRFLOW_FILES:
            item.add_marker(pytest.mark.live_airflow)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(LIVE_AIRFLOW_TIMEOUT))
        else:
            item.add_marker(pytest.mark.xdist_group(path))


def missing_tool(reason: str) -> None:
    """Skip the module whose tool is missing; on CI (CI=true) fail instead: a green CI never hides a test that
    did not run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing tool fails the run instead of skipping)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session")
def server_url() -> str:
    """The PostgreSQL server under test: PIPELINE_DATABASE_URL, or the embedded one."""
    return db.database_url(Settings.from_env())


@pytest.fixture(scope="session")
def config() -> PipelineConfig:
    return load_config(PROJECT_ROOT / "pipeline.yaml")


def create_scratch_database(server_url: str) -> str:
    """A new, empty database on the server under test, with the schema applied."""
    url = db.with_database(server_url, f"pipeline_test_{uuid.uuid4().hex[:10]}")
    db.ensure_database(url)
    engine = db.create_engine(url)
    db.apply_schema(engine)
    engine.dispose()
    return url


@pytest.fixture
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    url = create_scratch_database(server_url)
    yield url
    db.drop_database(url)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings pointing at the test's own database and artifact folder."""
    return Settings(
        database_url=database_url,
        config_path=PROJECT_ROOT / "pipeline.yaml",
        artifact_dir=tmp_path / "artifacts",
        pgdata_dir=PROJECT_ROOT / ".pgdata",
    )
