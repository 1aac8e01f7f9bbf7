"""A hand-off to a broker that is down, as the scheduler makes it (Airflow's `send_workload_to_executor`), with the
Celery stack's settings (`pipeline.cli.cluster.LOST_WORK_SETTINGS`): Celery keeps retrying the publish at the broker,
so a broker back within the attempt takes the task; a broker still down ends the attempt in Airflow's publish
timeout, which the scheduler retries on its next loops instead of failing the try."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from pipeline.cli.cluster import LOST_WORK_SETTINGS, free_port, redis_server
from tests.conftest import missing_tool

if shutil.which("redis-server") is None:
    missing_tool("redis-server is not installed (Debian: apt-get install redis-server); .ci/run installs it")

PUBLISH = """
from airflow.providers.celery.executors.celery_executor_utils import send_workload_to_executor

class Workload:  # what the executor sends: a JSON body, no task instance of the metadata database
    ti = None
    def model_dump_json(self):
        return "{}"

print("PUBLISH started", flush=True)
_, _, result = send_workload_to_executor(("key", Workload(), "default", None))
print("PUBLISH", type(getattr(result, "exception", result)).__name__, flush=True)
"""


def said(stdout: str) -> list[str]:
    """The probe's own lines (Airflow logs to stdout too)."""
    return [line.removeprefix("PUBLISH ") for line in stdout.splitlines() if line.startswith("PUBLISH ")]


def publish(port: int, tmp: Path) -> subprocess.Popen[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}, **LOST_WORK_SETTINGS,
           "AIRFLOW_HOME": str(tmp / "airflow-home"), "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
           "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    return subprocess.Popen([sys.executable, "-c", PUBLISH], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


@pytest.mark.timeout(300)
def test_a_publish_waits_for_a_broker_that_comes_back_and_else_ends_in_the_retried_timeout(tmp_path: Path) -> None:
    port = free_port()
    down = publish(port, tmp_path)
    stdout, _ = down.communicate(timeout=240)
    assert said(stdout) == ["started", "AirflowTaskTimeout"]  # retried by the scheduler, not a failed try

    late = publish(port, tmp_path)
    assert late.stdout is not None
    while (line := late.stdout.readline()) and line.strip() != "PUBLISH started":
        pass
    time.sleep(1)  # the broker is down while the publish starts, and back within the attempt's 5 s
    with redis_server(port, tmp_path / "redis") as url:
        stdout, _ = late.communicate(timeout=240)
        assert said(stdout) == ["AsyncResult"]
        assert redis.Redis.from_url(url).llen("default") == 1  # the task is on the broker, once
