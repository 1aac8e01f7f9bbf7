"""`python -m bench.executors`: wall time of one `retrain` run, started through the REST API, on the
LocalExecutor (`airflow standalone`) and on the CeleryExecutor with two workers (`pipeline.cli.cluster`),
on the demo study and the shipped configuration, each on new scratch databases.

The run's time is Airflow's own (end_date - start_date of the DAG run); each task's too, so the cost
of the orchestration (the gaps between tasks) shows beside the work. The first run that unpausing
starts (today's 02:00) is the one measured: it trains on the demo rows."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
import yaml

from pipeline.cli.cluster import celery_airflow
from pipeline.cli.localenv import airflow_environment
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.store import db
from tests.standalone import scratch_airflow, standalone_airflow, wait_for, wait_until_ready

RUN_TIMEOUT = 900


def _config(folder: Path) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@contextmanager
def _local(server_url: str, folder: Path) -> Iterator[tuple[str, str]]:
    with standalone_airflow(server_url, folder, _config(folder)) as airflow:
        yield airflow.base_url, airflow.token


@contextmanager
def _celery(server_url: str, folder: Path) -> Iterator[tuple[str, str]]:
    with scratch_airflow(server_url, folder, _config(folder), {"PIPELINE_ARTIFACT_STORE": "postgres"}) as scratch:
        env = {**scratch.env, **airflow_environment(Settings.from_env(scratch.env), scratch.env)}
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        with celery_airflow(env, folder / "celery", workers=2, concurrency=1) as cluster:
            token, _ = wait_until_ready(cluster.base_url, folder / "airflow-home",
                                        lambda: ", ".join(cluster.exited()) or None)
            yield cluster.base_url, token


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def rest_client(base_url: str, token: str) -> Callable[..., Any]:
    """`call(method, path, **kwargs)`: Airflow's REST API (/api/v2) with the token; the response's JSON."""
    headers = {"Authorization": f"Bearer {token}"}

    def call(method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(method, f"{base_url}/api/v2{path}", headers=headers, timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()
    return call


def finished_run(call: Callable[..., Any], dag_id: str, run_id: str, timeout: float,
                 interval: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A DAG run once it succeeded or failed, and its task instances."""
    run = wait_for(lambda: (lambda r: r if r["state"] in ("success", "failed") else None)(
        call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")), timeout, f"{dag_id} run {run_id}", interval=interval)
    tasks = call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})["task_instances"]
    return run, tasks


def measure(base_url: str, token: str) -> dict[str, Any]:
    """Unpause `retrain` (starting its latest scheduled run) and time that run and its tasks."""
    call = rest_client(base_url, token)
    call("PATCH", "/dags/retrain", json={"is_paused": False})
    run_id = wait_for(lambda: next((r["dag_run_id"] for r in call("GET", "/dags/retrain/dagRuns")["dag_runs"]), None),
                      120, "the first retrain run")
    run, tasks = finished_run(call, "retrain", run_id, RUN_TIMEOUT, interval=2)
    timed = [t for t in tasks if t["start_date"] and t["end_date"]]
    return {"state": run["state"], "run_seconds": _seconds(run["start_date"], run["end_date"]),
            "task_seconds": round(sum(_seconds(t["start_date"], t["end_date"]) for t in timed), 2),
            "tasks": {f"{t['task_id']}[{t['rendered_map_index'] or t['map_index']}]" if t["map_index"] >= 0
                      else t["task_id"]: {"seconds": round(_seconds(t["start_date"], t["end_date"]), 2),
                                          "hostname": t["hostname"]} for t in timed}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", nargs="+", default=["local", "celery"], choices=["local", "celery"])
    args = parser.parse_args()
    server_url = db.database_url(Settings.from_env())
    results = {}
    for executor in args.executors:
        with tempfile.TemporaryDirectory(prefix=f"bench-{executor}-") as folder:
            start = _local if executor == "local" else _celery
            with start(server_url, Path(folder)) as (base_url, token):
                results[executor] = measure(base_url, token)
        result = results[executor]
        print(f"{executor:7s} {result['state']}: run {result['run_seconds']:.1f} s, tasks {result['task_seconds']:.1f} s "
              f"summed", flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
