"""`retrain` on Airflow's CeleryExecutor with two Celery workers, through the REST API: the stack `make airflow
EXECUTOR=celery` runs (`python -m pipeline airflow-celery`, its supervisor a process of its own) on a redis-server
of the test's own: a scheduler, an API server, a triggerer, a DAG processor and two workers
(`pipeline.cli.cluster`), each worker in its own working directory with its own artifact cache and the team store
in PostgreSQL between them.

The stack's readiness (/pipeline-health) goes unhealthy naming the broker while Redis is down, and healthy again
when it is back. The model search fans out over both workers; one worker is SIGKILLed in the middle of a search
task: the supervisor restarts it while every other part keeps its pid, the task is retried without the lost try
spending one of its retries, and the run still succeeds with the champion the sequential search gives. SIGTERM to the supervisor then ends every process of the
stack."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests
import sqlalchemy as sa
import yaml

from pipeline.cli.cluster import ENV_FILE, STATE_FILE, worker_environment
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.model import train
from pipeline.model.features import model_inputs
from pipeline.registry import records
from pipeline.workspace import Workspace
from tests.commands import cli_subprocess
from tests.conftest import Broker, missing_tool
from tests.standalone import AirflowRest, scratch_airflow, wait_for, wait_until_ready

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
class Stack:
    """`python -m pipeline airflow-celery` running: the supervisor's process and the folder it keeps its state in."""
    process: subprocess.Popen[bytes]
    root: Path  # $AIRFLOW_HOME/celery
    log: Path  # the supervisor's output

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.root / STATE_FILE).read_text()))

    @property
    def workdirs(self) -> dict[str, Path]:
        return {name: self.root / name for name in self.state()["workers"]}

    @property
    def env(self) -> dict[str, str]:
        return dict(json.loads((self.root / ENV_FILE).read_text())["env"])

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.root / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class CeleryAirflow(AirflowRest):
    stack: Stack
    broker: Broker
    engine: sa.engine.Engine
    settings: Settings  # the test's own view of the pipeline: its own artifact cache of the team store
    env: dict[str, str]  # what the stack was started with: `python -m pipeline` with it reaches the same stack

    def readiness(self) -> requests.Response:
        return requests.get(f"{self.base_url}/pipeline-health/", timeout=30)


def stop_stack(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def celery(server_url: str, tmp_path_factory: pytest.TempPathFactory,
           starts_airflow: None) -> Iterator[CeleryAirflow]:
    tmp = tmp_path_factory.mktemp("celery-airflow")
    # Shorter than the stack's 60 s (LOST_WORK_SETTINGS), which a value in the environment overrides.
    lost_worker_after = {"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                         "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5"}
    broker = Broker(tmp / "redis")
    broker.start()
    with scratch_airflow(server_url, tmp, _config(tmp), {"PIPELINE_ARTIFACT_STORE": "postgres", **lost_worker_after}
                         ) as scratch:
        env = {**scratch.env, "PATH": os.pathsep.join([os.path.dirname(sys.executable), scratch.env.get("PATH", "")])}
        log = tmp / "stack.log"
        with log.open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "pipeline", "airflow-celery", "--workers", "2",
                                        "--broker-url", broker.url], cwd=PROJECT_ROOT, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        stack = Stack(process, tmp / "airflow-home" / "celery", log)
        try:
            def stopped() -> str | None:
                return None if process.poll() is None else f"the supervisor:\n{stack.output()[-3000:]}"
            wait_for(lambda: stopped() or (stack.root / STATE_FILE).exists(), 300, "the stack to start")
            token, _ = wait_until_ready(scratch.base_url, tmp / "airflow-home", stopped)
            settings = dataclasses.replace(Settings.from_env(scratch.env), artifact_dir=tmp / "test-cache")
            yield CeleryAirflow(base_url=scratch.base_url, token=token, stack=stack, broker=broker,
                                engine=scratch.engine, settings=settings, env=env)
        finally:
            stop_stack(process)
            broker.stop()


def test_every_worker_runs_with_the_stacks_one_key_source(celery: CeleryAirflow) -> None:
    """Encryption at rest: each worker has its own artifact cache, and the same absolute key files (a key file
    beside a worker's cache once left worker-1 unable to unwrap the data keys worker-2 wrote). The workers' own
    environments are the stack's plus their name, folder and port (`worker_environment`): a worker's
    /proc/PID/environ cannot be read back, Celery's process title overwrites it."""
    stack_env = celery.stack.env
    shared = stack_env["PIPELINE_KEY_FILE"]
    assert Path(shared).is_absolute() and shared == celery.env["PIPELINE_KEY_FILE"]
    assert Path(stack_env["PIPELINE_ERASURE_KEY_FILE"]).is_absolute()
    workers = {name: worker_environment(stack_env, name, folder) for name, folder in celery.stack.workdirs.items()}
    assert len(workers) == 2 and {env["PIPELINE_KEY_FILE"] for env in workers.values()} == {shared}
    caches = {env["PIPELINE_ARTIFACT_DIR"] for env in workers.values()}
    assert len(caches) == 2 and not any(Path(shared).is_relative_to(cache) for cache in caches)
    assert not any(Path(shared).is_relative_to(folder) for folder in celery.stack.workdirs.values())


def test_readiness_is_unhealthy_while_the_broker_is_down(celery: CeleryAirflow) -> None:
    def ready() -> dict[str, Any] | None:
        response = celery.readiness()
        return response.json() if response.status_code == 200 else None
    healthy = wait_for(ready, 180, "/pipeline-health to say healthy", interval=2)
    assert set(healthy["checks"]) == {"database", "metadata database", "broker", "workers"}
    parts = celery.stack.state()["parts"]

    celery.broker.stop()
    down = celery.readiness()
    assert down.status_code == 503
    assert not down.json()["checks"]["broker"]["ok"] and celery.broker.url in down.json()["checks"]["broker"]["detail"]
    assert down.json()["checks"]["database"]["ok"]
    cli = cli_subprocess({**os.environ, **celery.stack.env})  # the stack's own environment, as an operator beside it
    failed = cli("health")
    assert failed.returncode == 1 and f"broker: {celery.broker.url} does not answer" in failed.stderr, failed.stderr
    print(f"\nbroker down: GET /pipeline-health -> {down.status_code} {down.json()}\n"
          f"python -m pipeline health -> exit {failed.returncode}: {failed.stderr.strip()}")

    celery.broker.start()  # same port: every part's connection retries find it
    again = wait_for(ready, 180, "/pipeline-health to say healthy once Redis is back", interval=2)
    assert all(check["ok"] for check in again["checks"].values())
    assert celery.stack.state()["parts"] == parts  # the outage stopped no part
    print(f"broker back: GET /pipeline-health -> 200 {again}")


def test_retrain_fans_out_over_two_workers_and_survives_losing_one(celery: CeleryAirflow) -> None:
    celery.call("PATCH", "/dags/retrain", json={"is_paused": False})  # starts today's 02:00 run first
    # `force`: this run trains even when the scheduled run, ahead of it, trained on the same rows.
    run_id = celery.call("POST", "/dags/retrain/dagRuns",
                         json={"logical_date": None, "conf": {"force": True}}).json()["dag_run_id"]

    slow_index = list(yaml.safe_load(Path(celery.stack.env["PIPELINE_CONFIG"]).read_text())["training"]["families"]
                      ).index(SLOW_FAMILY)

    def slow_family_running_beside_the_other_worker() -> tuple[dict[str, Any], set[str]] | None:
        search = [ti for ti in celery.task_instances(run_id) if ti["task_id"] == "search_family"]
        # A task's label (its family) is rendered when it ends: find the running one by its index.
        slow = [ti for ti in search if ti["map_index"] == slow_index and ti["state"] == "running"]
        hosts = {ti["hostname"] for ti in search if ti["hostname"] and ti["state"] in ("running", "success")}
        return (slow[0], hosts) if slow and len(hosts) == 2 else None
    slow, hosts = wait_for(slow_family_running_beside_the_other_worker, RUN_TIMEOUT,
                           f"{SLOW_FAMILY} to run on one worker while the other searches too", interval=0.5)
    workdirs = celery.stack.workdirs
    assert hosts == set(workdirs)  # the mapped search ran on both workers
    lost = slow["hostname"]
    before = celery.stack.state()["parts"]
    os.killpg(before[lost], signal.SIGKILL)  # the worker and the task it runs are gone, as with a lost machine
    killed_at = requests.get(f"{celery.base_url}/api/v2/version", timeout=30).headers.get("date")

    def restarted() -> dict[str, int] | None:
        parts: dict[str, int] = celery.stack.state()["parts"]
        return parts if parts[lost] != before[lost] else None
    after = wait_for(restarted, 120, f"the supervisor to restart {lost}")
    assert {k: v for k, v in after.items() if k != lost} == {k: v for k, v in before.items() if k != lost}
    assert f"{lost} (pid {before[lost]}) died (killed by SIGKILL)" in celery.stack.output()

    def finished() -> dict[str, Any] | None:
        run = celery.call("GET", f"/dags/retrain/dagRuns/{run_id}").json()
        return run if run["state"] in ("success", "failed") else None
    run = wait_for(finished, RUN_TIMEOUT, f"retrain run {run_id} to finish after losing {lost}", interval=2)
    assert run["state"] == "success", celery.stack.log_tail("scheduler")

    tries = celery.tries(run_id, "search_family", slow["map_index"])
    assert [(t["try_number"], t["hostname"]) for t in tries][0] == (1, lost)
    final = next(ti for ti in celery.task_instances(run_id)
                 if ti["task_id"] == "search_family" and ti["map_index"] == slow["map_index"])
    # Retried on a live worker: the other one, or the lost one's replacement.
    assert (final["state"], final["hostname"] in workdirs, final["try_number"]) == ("success", True, 2)
    assert final["rendered_map_index"] == SLOW_FAMILY
    # The lost try was given back (plugins/lost_tries.py): max_tries was raised by one, so real failures of the
    # retried try still get the two retries every stage task declares; no other task was charged or given any.
    retries = {ti["map_index"]: ti["max_tries"] for ti in celery.task_instances(run_id)
               if ti["task_id"] == "search_family"}
    assert retries == {i: 3 if i == slow["map_index"] else 2 for i in retries}, retries
    given = celery.call("GET", "/eventLogs", params={"dag_id": "retrain", "run_id": run_id,
                                                     "event": "lost try given back"}).json()["event_logs"]
    assert [(e["task_id"], e["map_index"], e["try_number"]) for e in given] == \
           [("search_family", slow["map_index"], 1)], given
    print(f"\nkill-one-worker timeline: {lost} SIGKILLed at {killed_at} during {SLOW_FAMILY}; restarted as pid "
          f"{after[lost]}; try 1 ended {tries[0]['end_date']} ({tries[0]['state']}); try 2 on {final['hostname']} "
          f"{final['start_date']} to {final['end_date']}; run ended {run['end_date']}")

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
    for name, workdir in workdirs.items():  # no shared folder: each cached what it used
        assert any((workdir / "artifacts").rglob("*.parquet")), name


def answering_workers(celery: CeleryAirflow) -> str:
    response = celery.readiness()
    return str(response.json()["checks"]["workers"]["detail"]) if response.status_code == 200 else ""


def test_a_worker_is_added_and_one_stopped_by_hand(celery: CeleryAirflow, tmp_path: Path) -> None:
    log = tmp_path / "added-worker.log"
    with log.open("wb") as out:
        added = subprocess.Popen([sys.executable, "-m", "pipeline", "airflow-celery", "--add-worker"],
                                 cwd=PROJECT_ROOT, env=celery.env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        wait_for(lambda: "worker-3@" in answering_workers(celery), 180, "the added worker-3 to answer a ping",
                 interval=2)
    finally:
        added.send_signal(signal.SIGTERM)  # what Ctrl-C or `kill -TERM` does: a warm shutdown
        code = added.wait(timeout=120)
    assert code == 0, log.read_text()[-3000:]

    stopped = celery.stack.state()["parts"]["worker-2"]
    os.kill(stopped, signal.SIGTERM)  # the worker alone, not its process group: it finishes its task first
    wait_for(lambda: "worker-2" not in celery.stack.state()["parts"], 120, "the supervisor to let worker-2 go")
    assert f"worker-2 (pid {stopped}) stopped (exit status 0); not restarted" in celery.stack.output()
    assert celery.stack.state()["workers"] == ["worker-1"]


def test_sigterm_stops_the_stack_and_everything_it_started(celery: CeleryAirflow) -> None:
    supervisor = psutil.Process(celery.stack.process.pid)
    started = supervisor.children(recursive=True)
    assert {p.pid for p in started} >= set(celery.stack.state()["parts"].values())
    celery.stack.process.send_signal(signal.SIGTERM)
    assert celery.stack.process.wait(timeout=180) == 0, celery.stack.output()[-3000:]
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]
