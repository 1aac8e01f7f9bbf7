"""`python -m pipeline` as an operator runs it, on the test's own database: a real subprocess where the process
itself is tested (its output and exit status end to end, a pipe closed early), the CLI's own entry point in this
process (`cli_here`) where what a command does is tested."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from pipeline.contract.settings import ENV_ARTIFACT_DIR, ENV_CONFIG, ENV_DATABASE_URL, PROJECT_ROOT
from pipeline.data import demo
from pipeline.monitoring import outcomes
from pipeline.registry.runs import Run
from pipeline.serving import scoring
from pipeline.store import db
from pipeline.workspace import Workspace
from tests.integration.stage_runs import (
    DEMO_WATERMARK,
    Cli,
    fetch,
    output,
    promote_demo_champion,
    quick_workspace,
    retrain_through_stages,
)


def count_records(database_url: str) -> int:
    engine = db.create_engine(database_url)
    with engine.connect() as conn:
        count = conn.scalar(sa.text("SELECT count(*) FROM public.patient_records"))
    engine.dispose()
    return int(count)


def test_seed_demo_inserts_the_study_once(cli: Cli, database_url: str) -> None:
    assert output(cli("seed-demo", "--json")) == {"inserted": 442, "table": "public.patient_records"}
    assert cli("seed-demo").stdout == "inserted 0 rows into public.patient_records (they were there already)\n"
    assert count_records(database_url) == 442


def test_retrain_promotes_and_status_reports_the_champion(cli: Cli, tmp_path: Path) -> None:
    output(cli("seed-demo", "--json"))

    retrained = output(cli("retrain", "--json"))

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


def test_simulate_arrivals_appends_rows(cli_here: Cli, database_url: str) -> None:
    engine = db.create_engine(database_url)
    demo.seed_demo(engine)
    engine.dispose()

    arrived = output(cli_here("simulate-arrivals", "--rows", "5", "--seed", "3", "--json"))

    assert arrived == {"inserted": 5, "first_id": 443, "last_id": 447}
    assert count_records(database_url) == 447


def test_validate_unknown_snapshot_is_one_error_line(cli_here: Cli) -> None:
    result = cli_here("validate", "--snapshot", "deadbeef")

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "deadbeef" in lines[0]


def test_a_cli_run_on_a_missing_table_is_refused_before_any_run_is_recorded(cli_here: Cli, database_url: str,
                                                                            tmp_path: Path) -> None:
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    raw["dataset"]["table"] = "public.no_such_visits"
    config = tmp_path / "missing.yaml"
    config.write_text(yaml.safe_dump(raw))

    result = cli_here("--config", str(config), "retrain", "--run-id", "broken")

    assert result.returncode == 1
    assert result.stderr.strip() == ("error: source table public.no_such_visits does not exist "
                                     "(dataset.table in the config)")
    engine = db.create_engine(database_url)
    with engine.connect() as conn:  # refused by the preflight: no run to leave running (tests/integration/test_preflight)
        assert conn.scalar(sa.text("SELECT count(*) FROM pipeline.training_runs")) == 0
    engine.dispose()


# --- one convention: text for people, --json for scripts; unknown ids and versions refused ----------------------


@pytest.fixture
def served(ws: Workspace) -> Workspace:
    """Version 1 champion (a run an operator started), forecasts for 20 arrivals, and their outcomes known."""
    quick = quick_workspace(ws)
    demo.seed_demo(quick.engine)
    run = Run(run_id="first", watermark=DEMO_WATERMARK, triggered_by="operator:admin")
    assert retrain_through_stages(quick, run)["outcome"]["status"] == "promoted"
    demo.simulate_arrivals(quick.engine, rows=20, seed=4, labelled=False)
    scoring.score_batch(quick, "score-1")
    outcomes.fill_outcomes(quick.engine, quick.model, 0, 4, {})
    return quick


READ_COMMANDS: dict[tuple[str, ...], set[str]] = {  # each read command and the keys its --json document has
    ("status",): {"model", "config", "champion", "recent_runs"},
    ("quality",): {"run_id", "success", "rows_read", "rows_valid", "rows_quarantined", "reason_counts",
                   "rows_unlabelled", "unlabelled_faulty", "unlabelled_reason_counts", "report_path", "created_at"},
    ("history",): {"at", "from_version", "to_version", "actor", "run_id", "reason"},
    ("shadow",): {"model", "champion", "max_shadows", "shadows"},
    ("drift",): {"verdict", "recent_rows", "features", "report_path"},
    ("card", "1", "--comparison", "first"): {"card", "comparison"},
    ("reproduce", "1"): {"version", "predictions_identical", "rows_compared", "artifact_identical", "snapshot_hash",
                         "train_rows", "recorded_train_rows", "library_differences"},
    ("check-config",): {"config", "model", "ok", "keys", "source"},
    ("db-url",): {"url"},
    ("performance",): {"model", "as_of", "verdict", "reason", "warnings", "versions", "shadows", "report_path",
                       "refused_outcomes"},
}


def test_every_read_command_prints_text_and_json_with_its_keys(served: Workspace, cli_here: Cli) -> None:
    for command, keys in READ_COMMANDS.items():
        document = output(cli_here(*command, "--json"))
        first = document[0] if isinstance(document, list) else document
        assert keys <= set(first), (command, sorted(first))
        text = cli_here(*command)
        assert text.returncode == 0, (command, text.stderr)
        assert text.stdout.strip() and text.stdout.lstrip()[0] not in "{[", (command, text.stdout)
        assert "{'" not in text.stdout and "{}" not in text.stdout, (command, text.stdout)  # no Python reprs
    [run] = output(cli_here("status", "--json"))["recent_runs"]
    assert (run["run_id"], run["triggered_by"]) == ("first", "operator:admin")


def test_status_shows_how_each_run_was_started(served: Workspace, cli_here: Cli) -> None:
    text = cli_here("status").stdout

    header = next(line for line in text.splitlines() if "started by" in line)
    [row] = [line for line in text.splitlines() if " first " in line]
    assert row[header.index("started by"):].startswith("operator:admin"), text  # in its column
    assert re.search(r" first +operator:admin +promoted +version 1 promoted", row), text


def bulk_validations(database_url: str, runs: int) -> None:
    """`runs` validated runs, straight into the tables: enough `quality` lines to fill a pipe's buffer."""
    engine = db.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO pipeline.snapshots (snapshot_hash, source_table, query, watermark, row_count, path, first_run_id)
            VALUES ('bulk', 'public.patient_records', 'SELECT 1', now(), 10, 'snapshots/bulk.parquet', 'bulk-1');
            INSERT INTO pipeline.training_runs (run_id, triggered_by, watermark, status, model)
            SELECT 'bulk-' || g, 'schedule', now(), 'kept', 'diabetes_progression' FROM generate_series(1, :n) g;
            INSERT INTO pipeline.validation_results (run_id, snapshot_hash, suite_name, success, statistics, failures,
                   result, rows_read, rows_valid, rows_quarantined, reason_counts)
            SELECT 'bulk-' || g, 'bulk', 'patient_records', true, '{}', '[]', '{}', 10, 9, 1, '{"out_of_range": 1}'
              FROM generate_series(1, :n) g"""), {"n": runs})
    engine.dispose()


def test_piped_into_head_a_command_stops_quietly(database_url: str, tmp_path: Path) -> None:
    bulk_validations(database_url, 2000)  # some 200 kB: the command is still writing when head has gone
    env = {**os.environ, ENV_DATABASE_URL: database_url, ENV_ARTIFACT_DIR: str(tmp_path / "artifacts")}
    env.pop(ENV_CONFIG, None)

    for command in ("quality --runs 2000", "quality --runs 2000 --json", "status --runs 2000"):
        piped = subprocess.run(["bash", "-c", f"{sys.executable} -m pipeline {command} | head -1"], cwd=PROJECT_ROOT,
                               env=env, capture_output=True, text=True, timeout=300, check=False)

        assert (piped.returncode, piped.stderr) == (0, ""), (command, piped.stderr)
        assert len(piped.stdout.splitlines()) == 1, piped.stdout


def test_unknown_run_ids_and_versions_are_refused_naming_them(ws: Workspace, cli_here: Cli) -> None:
    promote_demo_champion(quick_workspace(ws))
    evaluations = fetch(ws, "SELECT run_id FROM pipeline.evaluations")

    for args, named in ((("evaluate", "--run-id", "nope", "--version", "1"), "unknown run id 'nope'"),
                        (("evaluate", "--version", "1"), "evaluate needs --run-id: the run that trained version 1 is "
                                                         "'first'"),
                        (("evaluate", "--run-id", "first", "--version", "999"), "model version 999 is not registered"),
                        (("promote", "--run-id", "nope"), "unknown run id 'nope'"),
                        (("promote", "--to", "999", "--reason", "typo"), "model version 999 is not registered"),
                        (("rollback", "--to", "999", "--reason", "typo"), "model version 999 is not registered"),
                        (("card", "999"), "model version 999 is not registered"),
                        (("card", "1", "--comparison", "nope"), "unknown run id 'nope'"),
                        (("reproduce", "999"), "model version 999 is not registered"),
                        (("validate", "--run-id", "nope", "--snapshot", "x"), "unknown run id 'nope'"),
                        (("train", "--run-id", "nope", "--snapshot", "x"), "unknown run id 'nope'")):
        refused = cli_here(*args, "--json")

        assert (refused.returncode, refused.stdout) == (1, ""), (args, refused.stdout)
        [line] = refused.stderr.strip().splitlines()
        assert line.startswith(f"error: {named}"), (args, line)
    assert fetch(ws, "SELECT run_id FROM pipeline.evaluations") == evaluations  # nothing was compared
    assert [r["run_id"] for r in fetch(ws, "SELECT run_id FROM pipeline.training_runs")] == ["first"]
