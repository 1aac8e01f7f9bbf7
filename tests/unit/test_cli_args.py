"""Every CLI argument is checked as the config and the DAG's params are, before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.cli import build_parser
from pipeline.settings import ENV_DATABASE_URL, PROJECT_ROOT


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one-line error argparse gives for `argv` (exit status 2, nothing run)."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(list(argv))
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


OUTSIDE = "is outside [0, 0.5] (0.01 means 1 %)"


@pytest.mark.parametrize(("margin", "message"), [
    ("-1", f"-1 {OUTSIDE}"), ("1e9", f"1e9 {OUTSIDE}"), ("nan", f"nan {OUTSIDE}"), ("0.6", f"0.6 {OUTSIDE}"),
    ("lots", "'lots' is not a number"),
])
@pytest.mark.parametrize("command", [["retrain"], ["evaluate", "--version", "1"]])
def test_a_margin_outside_the_dag_params_range_is_refused(capsys: pytest.CaptureFixture[str], command: list[str],
                                                          margin: str, message: str) -> None:
    assert refused(capsys, *command, "--margin", margin).endswith(f"argument --margin: {message}")


def test_a_margin_in_range_is_kept() -> None:
    assert build_parser().parse_args(["retrain", "--margin", "0.02"]).margin == 0.02


def test_a_watermark_that_is_no_timestamp_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert "argument --watermark: 'garbage' is not an ISO timestamp" in refused(capsys, "ingest", "--watermark",
                                                                                "garbage")


def test_a_watermark_in_the_future_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert f"argument --watermark: {future} is in the future" in refused(capsys, "retrain", "--watermark", future)


def test_a_naive_watermark_is_utc() -> None:
    args = build_parser().parse_args(["retrain", "--watermark", "2026-07-01T00:00:00"])
    assert args.watermark == datetime(2026, 7, 1, tzinfo=UTC)


@pytest.mark.parametrize("runs", ["-1", "0", "x"])
def test_status_needs_a_positive_number_of_runs(capsys: pytest.CaptureFixture[str], runs: str) -> None:
    assert "argument --runs" in refused(capsys, "status", "--runs", runs)


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    """Port 1 on loopback refuses at once: the command fails in one line naming the database."""
    env = {**os.environ, ENV_DATABASE_URL: "postgresql+psycopg2://crm:s3cret-pw@127.0.0.1:1/patients"}
    result = subprocess.run([sys.executable, "-m", "pipeline", "status"], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: database postgresql+psycopg2://crm:***@127.0.0.1:1/patients (PIPELINE_DATABASE_URL)")
    assert "Connection refused" in line and "is it running and reachable?" in line
    assert "s3cret-pw" not in result.stderr + result.stdout
