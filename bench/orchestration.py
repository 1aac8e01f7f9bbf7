"""`python -m bench.orchestration`: what Airflow adds to a retrain at demo size, against its floor.

On a live Airflow (`airflow standalone`, LocalExecutor, the demo study on scratch databases):
- the retrain run that unpausing `retrain` starts, timed by Airflow (end_date - start_date);
- the orchestration floor: `noop_retrain` (bench/dags/noop_retrain.py), the retrain's shape with tasks that
  do nothing, triggered through the REST API; best of `--repeats` runs;
- the stages' own work: the same stages on the same rows in one process, each timed alone (bench.probe's
  `retrain` probe, imports not counted), on another scratch database seeded alike.

The target: the retrain through Airflow within 2x (stages + floor)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from bench.executors import _config, _seconds, finished_run, rest_client
from bench.executors import measure as measure_retrain
from pipeline.contract.config import load_config
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.store import db
from tests.conftest import create_scratch_database
from tests.standalone import standalone_airflow, wait_for

TARGET = 2.0  # the retrain through Airflow may take this many times its stages plus the floor
NOOP_DAG = PROJECT_ROOT / "bench" / "dags" / "noop_retrain.py"


def dags_folder(folder: Path) -> Path:
    """The project's DAG files and the no-op one, side by side (links, not copies)."""
    target = folder / "dags"
    target.mkdir()
    for path in [*sorted((PROJECT_ROOT / "dags").glob("*.py")), NOOP_DAG]:
        (target / path.name).symlink_to(path)
    return target


def run_noop(base_url: str, token: str, families: int) -> dict[str, Any]:
    """Trigger `noop_retrain` once and time its run as Airflow records it."""
    call = rest_client(base_url, token)
    headers = {"Authorization": f"Bearer {token}"}
    wait_for(lambda: requests.get(f"{base_url}/api/v2/dags/noop_retrain", headers=headers, timeout=30).ok, 90,
             "noop_retrain to be parsed")
    call("PATCH", "/dags/noop_retrain", json={"is_paused": False})
    run_id = call("POST", "/dags/noop_retrain/dagRuns",
                  json={"logical_date": None, "conf": {"families": families}})["dag_run_id"]
    run, tasks = finished_run(call, "noop_retrain", run_id, 300, interval=1)
    return {"state": run["state"], "run_seconds": _seconds(run["start_date"], run["end_date"]),
            "tasks": len(tasks)}


def stage_seconds(server_url: str, folder: Path, config_path: Path) -> dict[str, Any]:
    """The retrain's stages on the demo rows in one process, each timed alone."""
    from bench.__main__ import probe

    url = create_scratch_database(server_url)
    try:
        engine = db.create_engine(url)
        demo.seed_demo(engine)
        engine.dispose()
        spec = {"database_url": url, "config_path": str(config_path), "artifact_dir": str(folder / "stage-artifacts"),
                "pgdata_dir": str(Settings.from_env().pgdata_dir), "watermark": datetime.now(UTC).isoformat(),
                "probe": "retrain", "run_id": "bench-orchestration"}
        return probe(spec, tick=60)  # type: ignore[no-any-return]
    finally:
        db.drop_database(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of noop_retrain (the best is the floor)")
    args = parser.parse_args(argv)
    server_url = db.database_url(Settings.from_env())
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as name:
        folder = Path(name)
        config_path = _config(folder)
        families = len(load_config(config_path).training.families)
        stages = stage_seconds(server_url, folder, config_path)
        print(f"stages in one process: {stages['seconds']:.2f} s "
              + ", ".join(f"{k} {v:.2f}" for k, v in stages["stages"].items()), flush=True)
        extra = {"AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder(folder))}
        (folder / "airflow").mkdir()
        with standalone_airflow(server_url, folder / "airflow", config_path, extra) as airflow:
            noops = [run_noop(airflow.base_url, airflow.token, families) for _ in range(args.repeats)]
            for n in noops:
                print(f"noop_retrain: {n['state']}, {n['run_seconds']:.2f} s, {n['tasks']} task instances", flush=True)
            retrain = measure_retrain(airflow.base_url, airflow.token)
    floor = min(n["run_seconds"] for n in noops)
    budget = TARGET * (stages["seconds"] + floor)
    verdict = "OK" if retrain["run_seconds"] <= budget else "MISSED"
    print(f"retrain through Airflow: {retrain['state']}, {retrain['run_seconds']:.2f} s (tasks {retrain['task_seconds']:.2f} s "
          f"summed); stages {stages['seconds']:.2f} s + no-op floor {floor:.2f} s = {stages['seconds'] + floor:.2f} s; "
          f"ratio {retrain['run_seconds'] / (stages['seconds'] + floor):.2f} (target <= {TARGET:g}) {verdict}")
    print(json.dumps({"retrain": retrain, "noop": noops, "stages": stages}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
