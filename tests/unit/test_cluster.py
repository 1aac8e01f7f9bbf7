"""The Celery stack's pure parts: restart back-off, the addresses a worker dials, the settings for lost work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli.cluster import (
    EXECUTION_API,
    LOST_WORK_SETTINGS,
    Backoff,
    celery_environment,
    reached_at,
    unshared_addresses,
    worker_environment,
)
from pipeline.contract.settings import ENV_ARTIFACT_DIR, ENV_ERASURE_KEY_FILE, ENV_KEY_FILE, PROJECT_ROOT

METADATA = "postgresql+psycopg2://airflow:pw@db.internal:5432/airflow"


def test_backoff_doubles_up_to_its_most() -> None:
    backoff = Backoff(first=2, most=60)
    assert [backoff.delay(n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]


def test_a_loopback_address_is_replaced_by_the_host_and_a_given_one_stays() -> None:
    assert reached_at("http://localhost:8080/execution/", "10.0.0.5") == "http://10.0.0.5:8080/execution/"
    assert reached_at("redis://:secret@127.0.0.1:6379/0", "10.0.0.5") == "redis://:secret@10.0.0.5:6379/0"
    assert reached_at("http://api.internal:8080/execution/", "10.0.0.5") == "http://api.internal:8080/execution/"


def test_unshared_addresses_names_loopback_hosts_and_unix_sockets() -> None:
    env = {EXECUTION_API: "http://localhost:8080/execution/",
           "AIRFLOW__CELERY__BROKER_URL": "redis://10.0.0.5:6379/0",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://postgres@/airflow?host=/srv/pgdata",
           "PIPELINE_DATABASE_URL": METADATA}
    assert unshared_addresses(env) == [
        f"{EXECUTION_API} names localhost",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN reaches its database over the Unix socket in /srv/pgdata"]
    assert unshared_addresses({**env, EXECUTION_API: "http://10.0.0.5:8080/execution/",
                               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": METADATA}) == []


def test_celery_environment_sizes_parallelism_and_lets_the_environment_win() -> None:
    env = celery_environment({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": METADATA,
                              "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20"},
                             "redis://10.0.0.5:6379/0", concurrency=2, workers=3)
    assert env["AIRFLOW__CORE__PARALLELISM"] == "6"
    assert env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "20"
    assert env["AIRFLOW__CELERY__OPERATION_TIMEOUT"] == LOST_WORK_SETTINGS["AIRFLOW__CELERY__OPERATION_TIMEOUT"]
    # Celery retries a publish longer than Airflow's timeout allows one attempt, so a refused connection ends
    # in the timeout Airflow retries, not in a failed try.
    policy = json.loads(env["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"])["task_publish_retry_policy"]
    assert policy["max_retries"] * policy["interval_max"] > float(env["AIRFLOW__CELERY__OPERATION_TIMEOUT"])


def test_every_worker_gets_the_same_absolute_key_files_whatever_its_own_cache(tmp_path: Path) -> None:
    """A worker's folder never decides where a key is: worker-1 unwraps what worker-2 wrapped."""
    base = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": METADATA}
    env = celery_environment(base, "redis://10.0.0.5:6379/0", concurrency=1, workers=2)
    one, two = (worker_environment(env, f"worker-{n}", tmp_path / f"worker-{n}") for n in (1, 2))
    assert one[ENV_ARTIFACT_DIR] != two[ENV_ARTIFACT_DIR]
    assert one[ENV_KEY_FILE] == two[ENV_KEY_FILE] == str(PROJECT_ROOT / ".secrets" / "master.key")
    assert one[ENV_ERASURE_KEY_FILE] == two[ENV_ERASURE_KEY_FILE] == str(PROJECT_ROOT / ".secrets" / "erasure.key")
    given = celery_environment({**base, ENV_KEY_FILE: str(tmp_path / "shared.key")}, "redis://h:6379/0", 1)
    assert given[ENV_KEY_FILE] == str(tmp_path / "shared.key")


def test_a_relative_key_file_is_made_absolute_for_workers_in_other_folders(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = celery_environment({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": METADATA, ENV_KEY_FILE: "keys/master.key"},
                             "redis://h:6379/0", 1)
    assert env[ENV_KEY_FILE] == str(tmp_path / "keys" / "master.key")
