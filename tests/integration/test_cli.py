"""`python -m pipeline` as an operator runs it: a subprocess on the test's own database."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from pipeline import db, demo
from pipeline.settings import ENV_ARTIFACT_DIR, ENV_CONFIG, ENV_DATABASE_URL, PROJECT_ROOT
from tests.integration.stage_runs import cli_runner, output

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Cli:
    """Run `python -m pipeline ARGS` against the test's database and artifact folder."""
    env = {**os.environ, ENV_DATABASE_URL: database_url, ENV_ARTIFACT_DIR: str(tmp_path / "artifacts"),
           "OMP_NUM_THREADS": "1"}  # the CLI shares two cores with the test run
    env.pop(ENV_CONFIG, None)

    return cli_runner(env)


def count_records(database_url: str) -> int:
    engine = db.create_engine(database_url)
    with engine.connect() as conn:
        count = conn.scalar(sa.text("SELECT count(*) FROM public.patient_records"))
    engine.dispose()
    return int(count)


def test_seed_demo_inserts_the_study_once(cli: Cli, database_url: str) -> None:
    assert output(cli("seed-demo")) == {"inserted": 442, "table": "public.patient_records"}
    assert output(cli("seed-demo"))["inserted"] == 0
    assert count_records(database_url) == 442


def test_retrain_promotes_and_status_reports_the_champion(cli: Cli, tmp_path: Path) -> None:
    output(cli("seed-demo"))

    retrained = output(cli("retrain"))

    assert retrained["status"] == "promoted"
    assert retrained["candidate_version"] == 1
    status = output(cli("status", "--json"))
    champion = status["champion"]
    assert champion["version"] == 1
    assert {"rmse", "mae", "r2"} <= set(champion["holdout_metrics"])
    assert re.fullmatch(r"[0-9a-f]{64}", champion["snapshot_hash"])
    assert champion["promoted_by_run"] == retrained["run_id"]
    assert status["recent_runs"], "status lists no runs"
    assert status["recent_runs"][0]["run_id"] == retrained["run_id"]
    assert status["recent_runs"][0]["status"] == "promoted"
    # PIPELINE_ARTIFACT_DIR is where the snapshot and the model went.
    assert (tmp_path / "artifacts" / "snapshots" / f"{champion['snapshot_hash']}.parquet").is_file()
    assert (tmp_path / "artifacts" / "models" / f"{champion['artifact_hash']}.joblib").is_file()


def test_simulate_arrivals_appends_rows(cli: Cli, database_url: str) -> None:
    engine = db.create_engine(database_url)
    demo.seed_demo(engine)
    engine.dispose()

    arrived = output(cli("simulate-arrivals", "--rows", "5", "--seed", "3"))

    assert arrived == {"inserted": 5, "first_id": 443, "last_id": 447}
    assert count_records(database_url) == 447


def test_validate_unknown_snapshot_is_one_error_line(cli: Cli) -> None:
    result = cli("validate", "--snapshot", "deadbeef")

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "deadbeef" in lines[0]


def test_a_failed_cli_run_ends_as_failed_not_running(cli: Cli, database_url: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    raw["dataset"]["table"] = "public.no_such_visits"
    config = tmp_path / "missing.yaml"
    config.write_text(yaml.safe_dump(raw))

    result = cli("--config", str(config), "retrain", "--run-id", "broken")

    assert result.returncode == 1
    assert result.stderr.strip() == ("error: source table public.no_such_visits does not exist "
                                     "(dataset.table in the config)")
    engine = db.create_engine(database_url)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT status, reason, finished_at FROM pipeline.training_runs")).mappings().one()
    engine.dispose()
    assert (row["status"], row["reason"]) == ("failed", "ingest: source table public.no_such_visits does not exist "
                                                        "(dataset.table in the config)")
    assert row["finished_at"] is not None
