"""`python -m bench.kill_worker`: the timeline of losing a worker under `make airflow EXECUTOR=celery`'s own
settings (the heartbeat timeout of 60 s, checked every 10 s, the DAG's retry delay): the command that target runs,
`python -m pipeline airflow-celery --workers 2` (its supervisor a process of its own, its own redis-server), on
scratch databases with the demo study. The retrain's first run starts when it is unpaused; the worker running its
slowest search family (made slow, as in tests/dags/test_celery_workers.py, so that the kill lands mid-search) is
SIGKILLed with its process group. Printed: the kill, the supervisor's restart, the lost try's detection (its end),
the retry (start, end, worker) and the run's end, each in UTC and in seconds after the kill."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench.executors import rest_client
from pipeline.cli.cluster import STATE_FILE
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.store import db
from tests.conftest import STARTS_AIRFLOW
from tests.standalone import scratch_airflow, wait_for, wait_until_ready

SLOW_FAMILY = "random_forest"
RUN_TIMEOUT = 1200


def slow_config(folder: Path) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    raw["training"]["families"][SLOW_FAMILY].update(n_estimators=2500, max_leaf_nodes=None)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S")


def timeline(call: Any, root: Path, slow_index: int) -> list[tuple[str, datetime]]:
    """Unpause `retrain`, lose the worker of its slow search, and return (event, when) in order."""
    call("PATCH", "/dags/retrain", json={"is_paused": False})
    run_id = wait_for(lambda: next((r["dag_run_id"] for r in call("GET", "/dags/retrain/dagRuns")["dag_runs"]), None),
                      120, "the first retrain run")

    def slow_running() -> dict[str, Any] | None:
        tis = call("GET", f"/dags/retrain/dagRuns/{run_id}/taskInstances", params={"limit": 100})["task_instances"]
        return next((t for t in tis if t["task_id"] == "search_family" and t["map_index"] == slow_index
                     and t["state"] == "running" and t["hostname"]), None)
    slow = wait_for(slow_running, RUN_TIMEOUT, f"{SLOW_FAMILY} to run", interval=0.5)
    time.sleep(5)  # into the search
    lost = slow["hostname"]
    before = json.loads((root / STATE_FILE).read_text())["parts"][lost]
    os.killpg(before, signal.SIGKILL)
    events = [(f"{lost} SIGKILLed (pid {before}) during {SLOW_FAMILY}", datetime.now(UTC))]
    wait_for(lambda: json.loads((root / STATE_FILE).read_text())["parts"].get(lost) not in (None, before), 300,
             f"the supervisor to restart {lost}", interval=0.5)
    events.append((f"{lost} restarted by the supervisor", datetime.now(UTC)))

    run = wait_for(lambda: (lambda r: r if r["state"] in ("success", "failed") else None)(
        call("GET", f"/dags/retrain/dagRuns/{run_id}")), RUN_TIMEOUT, f"retrain run {run_id}", interval=2)
    tries = call("GET", f"/dags/retrain/dagRuns/{run_id}/taskInstances/search_family/{slow_index}/tries")
    for t in tries["task_instances"]:
        if t["try_number"] == 1:
            events.append((f"try 1 on {t['hostname']} found lost: {t['state']}", datetime.fromisoformat(t["end_date"])))
        else:
            events.append((f"try {t['try_number']} started on {t['hostname']}", datetime.fromisoformat(t["start_date"])))
            events.append((f"try {t['try_number']} ended: {t['state']}", datetime.fromisoformat(t["end_date"])))
    events.append((f"run {run_id} ended: {run['state']}", datetime.fromisoformat(run["end_date"])))
    return sorted(events, key=lambda event: event[1])


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    server_url = db.database_url(Settings.from_env())
    os.environ[STARTS_AIRFLOW] = "1"  # scratch_airflow's guard against a test starting Airflow unmarked
    with tempfile.TemporaryDirectory(prefix="bench-kill-worker-") as name:
        folder = Path(name)
        with scratch_airflow(server_url, folder, slow_config(folder), {"PIPELINE_ARTIFACT_STORE": "postgres"}
                             ) as scratch:
            env = {**scratch.env, "PATH": os.pathsep.join([os.path.dirname(sys.executable), scratch.env["PATH"]])}
            log = folder / "stack.log"
            with log.open("wb") as out:  # what `make airflow EXECUTOR=celery` runs
                stack = subprocess.Popen([sys.executable, "-m", "pipeline", "airflow-celery", "--workers", "2"],
                                         cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            try:
                root = folder / "airflow-home" / "celery"
                wait_for(lambda: stack.poll() is not None or (root / STATE_FILE).exists(), 300, "the stack")
                token, _ = wait_until_ready(scratch.base_url, folder / "airflow-home",
                                            lambda: None if stack.poll() is None else log.read_text()[-3000:])
                families = list(yaml.safe_load(Path(env["PIPELINE_CONFIG"]).read_text())["training"]["families"])
                events = timeline(rest_client(scratch.base_url, token), root, families.index(SLOW_FAMILY))
            finally:
                stack.send_signal(signal.SIGTERM)
                stack.wait(timeout=300)
    killed = next(when for what, when in events if "SIGKILL" in what)
    print("kill-one-worker timeline (make airflow EXECUTOR=celery settings: heartbeat timeout 60 s, checked every "
          "10 s):")
    for what, when in events:
        print(f"  {utc(when)}  {(when - killed).total_seconds():+7.1f} s  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
