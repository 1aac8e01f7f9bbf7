"""`python -m pipeline health` through a broker outage: a redis-server of the test's own on a free port and a real
Celery worker on it; the broker stopped, the check is unhealthy and names the broker; started again on the same
port, the worker reconnects and the check is healthy again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.contract.settings import ENV_ARTIFACT_DIR, ENV_CONFIG, ENV_DATABASE_URL
from pipeline.store import health
from tests.commands import cli_in_process, output
from tests.conftest import Broker, missing_tool
from tests.integration.stage_runs import wait_until

if shutil.which("redis-server") is None:
    missing_tool("redis-server is not installed (Debian: apt-get install redis-server); .ci/run installs it")




@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    running = Broker(tmp_path / "redis")
    running.start()
    yield running
    running.stop()


@pytest.fixture
def worker(broker: Broker, tmp_path: Path) -> Iterator[str]:
    """A Celery worker (Celery's own, no Airflow: what the check sees is the same ping) on the broker; its name."""
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "celery", "--broker", broker.url, "worker", "--pool", "solo",
                                    "--hostname", "probe@%h", "--without-mingle", "--without-gossip",
                                    "--loglevel", "warning"], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield "probe@"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.mark.timeout(300)
def test_health_is_unhealthy_while_the_broker_is_down(broker: Broker, worker: str, database_url: str,
                                                      tmp_path: Path) -> None:
    env = {**os.environ, ENV_DATABASE_URL: database_url, ENV_ARTIFACT_DIR: str(tmp_path / "artifacts"),
           "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", health.BROKER_URL: broker.url}
    env.pop(ENV_CONFIG, None)
    env.pop(health.METADATA_URL, None)
    cli = cli_in_process(env)

    def checks() -> dict[str, health.Check]:
        return {c.name: c for c in health.readiness(env, database_url)}

    up = wait_until(lambda: (found := checks()) and found["workers"].ok and found, "the worker to answer a ping")
    assert [(name, c.ok) for name, c in up.items()] == [("database", True), ("broker", True), ("workers", True)]
    assert worker in up["workers"].detail
    document = output(cli("health", "--json"))
    assert document["healthy"] and set(document["checks"]) == {"database", "broker", "workers"}

    broker.stop()
    down = cli("health")
    assert down.returncode == 1 and not down.stdout
    assert down.stderr.startswith(f"error: unhealthy: broker: {broker.url} does not answer"), down.stderr
    assert "workers: not pinged: the broker is down" in down.stderr
    assert checks()["database"].ok  # only what is down is named

    broker.start()  # same port: the worker's connection retries find it
    wait_until(lambda: all(c.ok for c in checks().values()), "the worker to reconnect to the restarted broker")
    assert cli("health").returncode == 0


@pytest.mark.timeout(120)
def test_a_redis_started_with_a_password_answers_only_with_it(tmp_path: Path) -> None:
    """What `airflow-celery --host` starts for workers on other machines (Redis refuses them without a password)."""
    from pipeline.cli.cluster import free_port, redis_server

    with redis_server(free_port(), tmp_path / "redis", password="s3cret") as url:
        assert url.startswith("redis://:s3cret@127.0.0.1:")
        assert health.check_broker(url).ok
        refused = health.check_broker(url.replace(":s3cret@", ""))
        assert not refused.ok and "authenticated" in refused.detail, refused.detail
        assert "s3cret" not in health.check_broker(url).detail
