"""A real Airflow (scheduler, triggerer, DAG processor, API server) from `airflow standalone`, on scratch
databases of the test PostgreSQL with the demo study seeded: for the tests that need a live scheduler or the
API server with its plugins (`tests/dags/test_live_scheduler.py`, `tests/ui/`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from pipeline.contract.settings import PROJECT_ROOT
from pipeline.data import demo
from pipeline.store import db
from tests.conftest import STARTS_AIRFLOW, create_scratch_database

START_TIMEOUT = 150


def stored_bytes(env: dict[str, str], engine: sa.engine.Engine, path: Path) -> bytes:
    """A stack's stored file as its plaintext, opened (sealed at rest) with the stack's own key source."""
    from pipeline.contract.settings import Settings
    from pipeline.store import crypto, keys

    settings = Settings.from_env(env)
    return crypto.read_plain(path, crypto.Keyring(engine, lambda: keys.open_key_manager(settings)))


def stored_frame(env: dict[str, str], engine: sa.engine.Engine, path: Path) -> Any:
    """A stack's stored Parquet file as a frame (see `stored_bytes`)."""
    import io

    import pandas as pd

    return pd.read_parquet(io.BytesIO(stored_bytes(env, engine, path)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Standalone:
    base_url: str
    token: str  # the admin's API token
    password: str  # the admin's password, for the login page
    engine: sa.engine.Engine  # the pipeline's scratch database
    env: dict[str, str]  # what Airflow runs with: `python -m pipeline` with it talks to the same database
    log_path: Path
    artifact_dir: Path


@dataclass
class AirflowRest:
    """A client of a live Airflow's REST API (`/api/v2`) as the admin; a read that times out (the API server
    shares two busy cores) is asked again, a write never is."""

    base_url: str
    token: str  # the admin's API token

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        for attempt in range(3):
            try:
                response = requests.request(method, f"{self.base_url}/api/v2{path}",
                                            headers={"Authorization": f"Bearer {self.token}",
                                                     "Accept": "application/json"}, timeout=60, **kwargs)
                break
            except requests.Timeout:
                if method != "GET" or attempt == 2:
                    raise
        response.raise_for_status()
        return response

    def task_instances(self, run_id: str, dag_id: str = "retrain") -> list[dict[str, Any]]:
        return list(self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                              params={"limit": 100}).json()["task_instances"])

    def tries(self, run_id: str, task_id: str, map_index: int, dag_id: str = "retrain") -> list[dict[str, Any]]:
        return list(self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
                              ).json()["task_instances"])

    def log_of(self, run_id: str, task_id: str, map_index: int, try_number: int, dag_id: str = "retrain"
               ) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                              params={"map_index": map_index, "full_content": True}).json()["content"])


@dataclass
class ScratchAirflow:
    env: dict[str, str]  # Airflow's environment on the scratch databases
    engine: sa.engine.Engine  # the pipeline's scratch database, the demo study seeded
    base_url: str  # where the API server will listen


@contextmanager
def scratch_airflow(server_url: str, tmp: Path, config_path: Path,
                    extra_env: dict[str, str] | None = None) -> Iterator[ScratchAirflow]:
    """New pipeline and metadata databases (dropped afterwards) and the environment every Airflow part of a
    test runs with; the demo study is seeded. Only for a fixture that requests `starts_airflow`."""
    if os.environ.get(STARTS_AIRFLOW) != "1":
        raise RuntimeError("a test starts Airflow without requesting the `starts_airflow` fixture: request it from "
                           "the fixture that starts Airflow, so the test runs as live_airflow (tests/conftest.py)")
    pipeline_url = create_scratch_database(server_url)
    metadata_url = db.with_database(server_url, f"airflow_live_{uuid.uuid4().hex[:8]}")
    db.ensure_database(metadata_url)
    engine = db.create_engine(pipeline_url)
    demo.seed_demo(engine)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "PIPELINE_DATABASE_URL": pipeline_url, "PIPELINE_CONFIG": str(config_path),
        "PIPELINE_ARTIFACT_DIR": str(tmp / "artifacts"), "AIRFLOW_HOME": str(tmp / "airflow-home"),
        "AIRFLOW__API__PORT": str(port), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__SCHEDULER__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__TRIGGERER__TRIGGERER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # a test unpauses what it runs (make airflow: all)
        "PIPELINE_KEY_FILE": str(tmp / "secrets" / "master.key"),  # the stack's one key source, outside its store
        **(extra_env or {}),
    })
    try:
        yield ScratchAirflow(env, engine, f"http://127.0.0.1:{port}")
    finally:
        engine.dispose()
        db.drop_database(pipeline_url)
        db.drop_database(metadata_url)


def wait_until_ready(base_url: str, home: Path, exited: Callable[[], str | None], timeout: float = START_TIMEOUT
                     ) -> tuple[str, str]:
    """Wait for Airflow to report healthy and `retrain` to be parsed; the admin's (token, password).
    `exited` names a part that has stopped, with its log, to fail at once."""
    def healthy() -> bool:
        stopped = exited()
        if stopped:
            raise AssertionError(f"Airflow stopped while starting: {stopped}")
        try:
            health = requests.get(f"{base_url}/api/v2/monitor/health", timeout=5).json()
        except (requests.RequestException, ValueError):
            return False
        return all(health.get(part, {}).get("status") == "healthy" for part in ("scheduler", "triggerer", "dag_processor"))
    wait_for(healthy, timeout, "Airflow to report healthy", interval=2)
    password = json.loads((home / "passwords.json").read_text())["admin"]
    token = requests.post(f"{base_url}/auth/token", json={"username": "admin", "password": password},
                          timeout=30).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    wait_for(lambda: requests.get(f"{base_url}/api/v2/dags/retrain", headers=headers, timeout=30).status_code == 200,
             90, "retrain to be parsed")
    return token, password


@contextmanager
def standalone_airflow(server_url: str, tmp: Path, config_path: Path,
                       extra_env: dict[str, str] | None = None) -> Iterator[Standalone]:
    """Airflow healthy and `retrain` parsed, on new databases that are dropped afterwards."""
    with scratch_airflow(server_url, tmp, config_path, extra_env) as scratch:
        log_path = tmp / "airflow.log"
        with log_path.open("w") as log:
            process = subprocess.Popen([sys.executable, "-m", "pipeline", "airflow", "standalone"], cwd=PROJECT_ROOT,
                                       env=scratch.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            token, password = wait_until_ready(
                scratch.base_url, tmp / "airflow-home",
                lambda: None if process.poll() is None else f"standalone; log:\n{log_path.read_text()[-3000:]}")
            yield Standalone(scratch.base_url, token, password, scratch.engine, scratch.env, log_path, tmp / "artifacts")
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
