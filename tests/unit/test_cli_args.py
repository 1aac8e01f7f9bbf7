"""Every CLI argument is checked as the config and the DAG's params are, before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.cli.main import build_parser
from pipeline.contract.settings import ENV_DATABASE_URL, PROJECT_ROOT


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one-line error argparse gives for `argv` (exit status 2, nothing run)."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(list(argv))
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


OUTSIDE = "is outside [0, 0.5] (0.01 means 1 %)"


@pytest.mark.parametrize(("margin", "message"), [
    ("5", f"5 {OUTSIDE}"), ("-1", f"-1 {OUTSIDE}"), ("1e9", f"1e9 {OUTSIDE}"), ("nan", f"nan {OUTSIDE}"),
    ("0.6", f"0.6 {OUTSIDE}"),
    ("lots", "'lots' is not a number"),
])
@pytest.mark.parametrize("command", [["retrain"], ["evaluate", "--version", "1"]])
def test_a_margin_outside_the_dag_params_range_is_refused(capsys: pytest.CaptureFixture[str], command: list[str],
                                                          margin: str, message: str) -> None:
    assert refused(capsys, *command, "--margin", margin).endswith(f"argument --margin: {message}")


def test_an_unknown_option_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    """`--marin 5` (the DAG's unknown conf key `marin`) stops the command before anything runs."""
    assert refused(capsys, "retrain", "--marin", "5").endswith("unrecognized arguments: --marin 5")


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
    # A real subprocess: everything the real process writes to stderr is one line (no driver or logging noise).
    result = subprocess.run([sys.executable, "-m", "pipeline", "status"], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: database postgresql+psycopg2://crm:***@127.0.0.1:1/patients (PIPELINE_DATABASE_URL)")
    assert "Connection refused" in line and "is it running and reachable?" in line
    assert "s3cret-pw" not in result.stderr + result.stdout


# --- output: text for people by default, one JSON document with --json ----------------------------------------

MINIMAL_ARGS = {"simulate-arrivals": ["--rows", "1"], "validate": ["--snapshot", "h"], "train": ["--snapshot", "h"],
                "evaluate": ["--version", "1"], "card": ["1"], "reproduce": ["1"], "reevaluate": ["r"],
                "erase": ["--id", "17", "--reason", "asked"], "erasure-report": ["17"]}


def subcommands() -> dict[str, object]:
    import argparse

    [choices] = [a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(choices)


def test_every_command_but_the_long_running_ones_takes_json() -> None:
    commands = set(subcommands()) - {"serve", "airflow", "airflow-celery"}
    assert {"status", "quality", "history", "drift", "performance", "shadow", "card", "reproduce", "check-config",
            "db-url", "db-stop", "retrain", "score", "rollback", "promote"} <= commands
    for name in sorted(commands):
        argv = [name, *MINIMAL_ARGS.get(name, []), *(["--reason", "r"] if name == "rollback" else [])]
        args = build_parser().parse_args([*argv, "--json"])
        assert args.json is True and build_parser().parse_args(argv).json is False, name
        assert callable(args.text), f"{name} has no text for people"


def test_serve_has_no_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert "unrecognized arguments: --json" in refused(capsys, "serve", "--json")


STARTED = datetime(2026, 7, 1, 2, 0, tzinfo=UTC)


def test_status_text_is_aligned_and_says_how_each_run_was_started() -> None:
    from pipeline.cli import champion as cli

    runs = [{"run_id": "scheduled__2026-07-01", "triggered_by": "schedule", "status": "kept", "reason": "champion kept",
             "failure_kind": None, "active_stage": None, "owner": None, "started_at": STARTED},
            {"run_id": "manual__1", "triggered_by": "operator:admin", "status": "running", "reason": None,
             "failure_kind": None, "active_stage": "train", "owner": "host:12", "started_at": STARTED}]
    text = cli.text_status({"model": "m", "config": "pipeline.yaml", "champion": None, "recent_runs": runs})

    header, *rows = text.splitlines()[text.splitlines().index("latest runs:") + 1:]
    column = header.index("started by")
    assert [row[column:].split("  ")[0] for row in rows] == ["schedule", "operator:admin"]
    assert rows[1][header.index("state"):].startswith("running (stage train, host:12)")


def test_quality_text_has_no_python_reprs() -> None:
    from pipeline.cli import champion as cli

    history = [{"run_id": "r1", "created_at": STARTED, "rows_read": 10, "rows_valid": 8, "rows_quarantined": 2,
                "reason_counts": {"unknown_category": 1, "out_of_range": 1}, "rows_unlabelled": 3,
                "unlabelled_faulty": 1, "unlabelled_reason_counts": {"out_of_range": 1}, "success": True}]
    text = cli.text_quality(history)

    assert "{" not in text and "'" not in text
    assert text.splitlines()[1].endswith("out_of_range 1, unknown_category 1; awaiting outcome: out_of_range 1")
    assert cli.text_quality([]) == "no validations yet"


def test_aligned_pads_every_column_but_the_last() -> None:
    from pipeline.cli import common as cli

    assert cli.aligned([["a", "bbb", "x"], ["cc", "d", "long last"]], indent="") == ["a   bbb  x", "cc  d    long last"]
    assert cli.counts({"b": 2, "a": 1}) == "a 1, b 2" and cli.counts(None) == "none"
