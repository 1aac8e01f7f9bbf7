"""What an Airflow task process imports: each task pays its own imports, so a task loads only the heavy
libraries its stage uses (issue 16). Run as the DAG runs a stage (`in_airflow`), in a fresh interpreter, on a
real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.store import db

HEAVY = ("sklearn", "scipy", "matplotlib", "great_expectations")

PROBE = f"""
import sys
from datetime import UTC, datetime
from pipeline import stages
from pipeline.registry.runs import Run
from pipeline.tasks import in_airflow

def heavy(stage):
    print("HEAVY " + stage + "=" + ",".join(m for m in {HEAVY!r} if m in sys.modules), flush=True)

config = sys.argv[1]
heavy("import")
run = Run(run_id="task-imports", watermark=datetime.now(UTC), triggered_by="test")
snapshot = in_airflow(config, lambda ws: stages.ingest_snapshot(ws, run))
heavy("ingest_snapshot")
in_airflow(config, lambda ws: stages.has_new_data(ws, run, snapshot["snapshot_hash"]))
heavy("has_new_data")
in_airflow(config, lambda ws: stages.validate_snapshot(ws, run, snapshot["snapshot_hash"]))
heavy("validate_snapshot")
in_airflow(config, lambda ws: stages.plan_search(ws))
heavy("plan_search")
"""


def test_the_light_tasks_import_no_great_expectations(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    demo.seed_demo(engine)
    engine.dispose()
    env = {**os.environ, "PIPELINE_DATABASE_URL": settings.database_url,
           "PIPELINE_ARTIFACT_DIR": str(settings.artifact_dir)}
    result = subprocess.run([sys.executable, "-c", PROBE, str(settings.config_path)], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = dict(line[len("HEAVY "):].split("=", 1) for line in result.stdout.splitlines() if line.startswith("HEAVY "))
    assert loaded == {
        "import": "",
        # a new run's ingest builds every family's estimator before it writes (stages.preflight, issue 33), so it
        # loads scikit-learn (which loads scipy); never Great Expectations
        "ingest_snapshot": "sklearn,scipy", "has_new_data": "sklearn,scipy",
        "validate_snapshot": "sklearn,scipy,great_expectations",
        "plan_search": "sklearn,scipy,great_expectations",  # nothing more
    }
