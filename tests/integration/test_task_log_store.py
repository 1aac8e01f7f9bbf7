"""Task logs in the database (plugins/task_log_store.py, pipeline.task_logs): a log uploaded from one log folder is
read back by a process whose log folder is another, empty one, through the remote-log object Airflow itself
resolves from `[logging] logging_config_class` (the Task SDK's on the uploading side, as a worker's task supervisor
does; the core's on the reading side, as the API server does). Each side is a process of its own. The end-to-end
read through the API server's logs endpoint, from a worker in another network namespace, is in
tests/dags/test_isolated_workers.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.cli.cluster import TASK_LOG_STORE
from pipeline.contract.settings import PROJECT_ROOT
from pipeline.store import db

RELATIVE = "dag_id=retrain/run_id=manual__1/task_id=search_family/map_index=2/attempt=1.log"
UPLOAD = f"""
from airflow.sdk.log import load_remote_log_handler
load_remote_log_handler().upload({RELATIVE!r})
"""
# What a task supervisor does with a try's log file (airflow.sdk.execution_time.supervisor._configure_logging),
# then dies without uploading: SIGKILL, as when its worker is lost.
WRITE_AND_DIE = f"""
import os, signal, time
import structlog
from airflow.sdk.log import init_log_file, logging_processors
path = init_log_file({RELATIVE!r})
log = structlog.wrap_logger(structlog.BytesLogger(path.open("ab")), processors=logging_processors(json_output=True),
                            logger_name="task").bind()
log.info("searching random_forest", family="random_forest")
time.sleep(3)
os.kill(os.getpid(), signal.SIGKILL)
"""
READ = f"""
import json
from airflow.logging_config import get_remote_task_log
print(json.dumps(get_remote_task_log().read({RELATIVE!r}, None)))
"""


def run_airflow_python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def airflow_env(database_url: str, home: Path, logs: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    return {**env, **TASK_LOG_STORE, "AIRFLOW_HOME": str(home), "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs),
            "PIPELINE_DATABASE_URL": database_url, "PYTHONPATH": str(PROJECT_ROOT),
            "PIPELINE_WORKER_NAME": "worker-a"}


@pytest.mark.timeout(300)
def test_a_log_uploaded_from_one_folder_is_read_from_another_empty_one(database_url: str, tmp_path: Path) -> None:
    import json

    written = tmp_path / "worker-a-logs" / RELATIVE
    written.parent.mkdir(parents=True)
    text = '{"event": "searching random_forest", "level": "info"}\n{"event": "done", "level": "info"}\n'
    written.write_text(text)
    run_airflow_python(UPLOAD, airflow_env(database_url, tmp_path / "home-a", tmp_path / "worker-a-logs"))

    empty = tmp_path / "api-server-logs"
    empty.mkdir()
    sources, logs = json.loads(run_airflow_python(READ, airflow_env(database_url, tmp_path / "home-b", empty)))
    assert logs == [text]
    assert f"pipeline.task_logs: {RELATIVE}, uploaded by worker-a" in sources[0]
    assert not any(empty.iterdir())

    engine = db.create_engine(database_url)
    try:
        with engine.connect() as conn:
            missing = conn.scalar(sa.text("SELECT count(*) FROM pipeline.task_logs WHERE relative_path <> :p"),
                                  {"p": RELATIVE})
        assert missing == 0
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text("UPDATE pipeline.task_logs SET content = ''"))
    finally:
        engine.dispose()


@pytest.mark.timeout(300)
def test_a_log_never_uploaded_says_so_and_lets_airflow_look_elsewhere(database_url: str, tmp_path: Path) -> None:
    import json

    empty = tmp_path / "logs"
    empty.mkdir()
    sources, logs = json.loads(run_airflow_python(READ, airflow_env(database_url, tmp_path / "home", empty)))
    assert logs is None
    assert sources == [f"pipeline.task_logs has no line of {RELATIVE} yet"]


@pytest.mark.timeout(300)
def test_the_lines_of_a_try_whose_worker_died_are_read_from_another_machine(database_url: str,
                                                                           tmp_path: Path) -> None:
    import json

    worker = airflow_env(database_url, tmp_path / "home-a", tmp_path / "worker-a-logs")
    died = subprocess.run([sys.executable, "-c", WRITE_AND_DIE], env=worker, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert died.returncode == -9, died.stderr[-3000:]
    written = (tmp_path / "worker-a-logs" / RELATIVE).read_text()

    empty = tmp_path / "api-server-logs"
    empty.mkdir()
    sources, logs = json.loads(run_airflow_python(READ, airflow_env(database_url, tmp_path / "home-b", empty)))
    assert "the lines worker-a sent while the try ran" in sources[0] and "its worker was lost" in sources[0]
    [line] = [json.loads(text) for text in logs[0].splitlines()]
    assert (line["event"], line["family"]) == ("searching random_forest", "random_forest")
    assert json.loads(written)["event"] == line["event"]
