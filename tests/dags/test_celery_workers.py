"""`retrain` on Airflow's CeleryExecutor with two Celery workers, through the REST API: redis-server, a
scheduler, an API server, a triggerer, a DAG processor and two workers (`pipeline.cli.cluster`), each worker in
its own working directory with its own artifact cache and the team store in PostgreSQL between them.

The model search fans out over both workers; one worker is killed in the middle of a search task, which is
retried on the other, and the run still succeeds with the champion the sequential search gives."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import sqlalchemy as sa
import yaml

from pipeline.cli.cluster import Cluster, celery_airflow
from pipeline.cli.localenv import airflow_environment
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.model import train
from pipeline.model.features import model_inputs
from pipeline.registry import records
from pipeline.workspace import Workspace
from tests.conftest import missing_tool
from tests.standalone import scratch_airflow, wait_for, wait_until_ready

RUN_TIMEOUT = 420
SLOW_FAMILY = "random_forest"  # made slow enough (many trees) that a worker can be killed in the middle of it

if shutil.which("redis-server") is None:
    missing_tool("redis-server is not installed (Debian: apt-get install redis-server); .ci/run installs it")


def _config(tmp: Path) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    raw["training"]["cv_folds"] = 3
    raw["training"]["families"][SLOW_FAMILY].update(n_estimators=2500, max_leaf_nodes=None)
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@dataclass
class CeleryAirflow:
    cluster: Cluster
    token: str
    engine: sa.engine.Engine
    settings: Settings  # the test's own view of the pipeline: its own artifact cache of the team store

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = requests.request(method, f"{self.cluster.base_url}/api/v2{path}",
                                    headers={"Authorization": f"Bearer {self.token}"}, timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def task_instances(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/dags/retrain/dagRuns/{run_id}/taskInstances",
                              params={"limit": 100}).json()["task_instances"])

    def tries(self, run_id: str, task_id: str, map_index: int) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/dags/retrain/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
                              ).json()["task_instances"])


@pytest.fixture(scope="module")
def celery(server_url: str, tmp_path_factory: pytest.TempPathFactory,
           starts_airflow: None) -> Iterator[CeleryAirflow]:
    tmp = tmp_path_factory.mktemp("celery-airflow")
    lost_worker_after = {"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                         "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5"}
    with scratch_airflow(server_url, tmp, _config(tmp), {"PIPELINE_ARTIFACT_STORE": "postgres", **lost_worker_after}
                         ) as scratch:
        env = {**scratch.env, **airflow_environment(Settings.from_env(scratch.env), scratch.env)}
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        with celery_airflow(env, tmp / "celery", workers=2, concurrency=1) as cluster:
            def stopped() -> str | None:
                return "; ".join(f"{name}:\n{cluster.log_tail(name)}" for name in cluster.exited()) or None
            token, _ = wait_until_ready(cluster.base_url, tmp / "airflow-home", stopped)
            settings = dataclasses.replace(Settings.from_env(scratch.env), artifact_dir=tmp / "test-cache")
            yield CeleryAirflow(cluster, token, scratch.engine, settings)


def test_retrain_fans_out_over_two_workers_and_survives_losing_one(celery: CeleryAirflow) -> None:
    celery.call("PATCH", "/dags/retrain", json={"is_paused": False})  # starts today's 02:00 run first
    # `force`: this run trains even when the scheduled run, ahead of it, trained on the same rows.
    run_id = celery.call("POST", "/dags/retrain/dagRuns",
                         json={"logical_date": None, "conf": {"force": True}}).json()["dag_run_id"]

    slow_index = list(yaml.safe_load(Path(celery.cluster.env["PIPELINE_CONFIG"]).read_text())["training"]["families"]
                      ).index(SLOW_FAMILY)

    def slow_family_running_beside_the_other_worker() -> tuple[dict[str, Any], set[str]] | None:
        search = [ti for ti in celery.task_instances(run_id) if ti["task_id"] == "search_family"]
        # A task's label (its family) is rendered when it ends: find the running one by its index.
        slow = [ti for ti in search if ti["map_index"] == slow_index and ti["state"] == "running"]
        hosts = {ti["hostname"] for ti in search if ti["hostname"] and ti["state"] in ("running", "success")}
        return (slow[0], hosts) if slow and len(hosts) == 2 else None
    slow, hosts = wait_for(slow_family_running_beside_the_other_worker, RUN_TIMEOUT,
                           f"{SLOW_FAMILY} to run on one worker while the other searches too", interval=0.5)
    assert hosts == set(celery.cluster.workdirs)  # the mapped search ran on both workers
    lost = slow["hostname"]
    celery.cluster.kill(lost)  # SIGKILL: the worker and the task it runs are gone, as with a lost machine

    def finished() -> dict[str, Any] | None:
        run = celery.call("GET", f"/dags/retrain/dagRuns/{run_id}").json()
        return run if run["state"] in ("success", "failed") else None
    run = wait_for(finished, RUN_TIMEOUT, f"retrain run {run_id} to finish after losing {lost}", interval=2)
    assert run["state"] == "success", celery.cluster.log_tail("scheduler")

    tries = celery.tries(run_id, "search_family", slow["map_index"])
    assert [(t["try_number"], t["hostname"]) for t in tries][0] == (1, lost)
    survivor = next(name for name in celery.cluster.workdirs if name != lost)
    final = next(ti for ti in celery.task_instances(run_id)
                 if ti["task_id"] == "search_family" and ti["map_index"] == slow["map_index"])
    assert (final["state"], final["hostname"], final["try_number"]) == ("success", survivor, 2)
    assert final["rendered_map_index"] == SLOW_FAMILY

    with celery.engine.connect() as conn:
        candidate = records.model_of_run(conn, run_id)
    assert candidate is not None
    # The run's model is the one the sequential search (what the LocalExecutor's one process runs) fits on the
    # same clean snapshot: same CV table and winner, bit-identical predictions. Read here through a third
    # artifact cache of the team store.
    ws = Workspace.open(celery.settings)
    clean = ws.load_snapshot(candidate["snapshot_hash"])
    train_rows, _ = train.split_holdout(clean, ws.config.dataset, ws.config.training.holdout_fraction)
    model, family, cv_table = train.fit_best_family(train_rows, ws.config.dataset, ws.config.training)
    assert family == candidate["model_family"]
    assert {f: row.get("cv_rmse_mean") for f, row in cv_table.items()} == \
           {f: row.get("cv_rmse_mean") for f, row in candidate["cv_metrics"].items()}
    inputs = model_inputs(clean, ws.config.dataset)
    np.testing.assert_array_equal(ws.load_model(candidate["artifact_hash"]).predict(inputs), model.predict(inputs))
    placement = {ti["rendered_map_index"] or ti["task_id"]: [(t["try_number"], t["hostname"]) for t in
                 celery.tries(run_id, ti["task_id"], ti["map_index"])] for ti in celery.task_instances(run_id)
                 if ti["hostname"]}
    print(f"\ntask placement (try, worker), {lost} killed during {SLOW_FAMILY}: {placement}")
    for name, workdir in celery.cluster.workdirs.items():  # no shared folder: each cached what it used
        assert any((workdir / "artifacts").rglob("*.parquet")), name
