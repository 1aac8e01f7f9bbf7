"""The in-process CLI of the tests (`tests.commands.cli_in_process`) gives what a real `python -m pipeline` gives,
and leaves the test's process as it found it."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from pipeline.contract.settings import ENV_DATABASE_URL
from tests.commands import cli_in_process, cli_subprocess

UNREACHABLE = {ENV_DATABASE_URL: "postgresql+psycopg2://crm:pw@127.0.0.1:1/patients"}  # port 1 refuses at once


@pytest.mark.parametrize("args", [("status",), ("no-such-command",), ("status", "--runs", "0")])
def test_in_process_gives_the_real_process_exit_status_stdout_and_stderr(args: tuple[str, ...]) -> None:
    env = {**os.environ, **UNREACHABLE}
    real, here = cli_subprocess(env)(*args), cli_in_process(env)(*args)
    assert (here.returncode, here.stdout, here.stderr) == (real.returncode, real.stdout, real.stderr)
    assert real.returncode in (1, 2) and real.stderr  # a failure, said on stderr


def test_in_process_puts_back_what_the_command_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_TEST_MARK", "kept")
    before = (dict(os.environ), os.getcwd(), list(sys.argv), logging.root.handlers[:],
              logging.getLogger("pipeline").level)

    done = cli_in_process({"PATH": os.environ.get("PATH", ""), **UNREACHABLE})("status")

    assert done.returncode == 1 and done.stderr.startswith("error: database postgresql+psycopg2://crm:***@")
    assert (dict(os.environ), os.getcwd(), list(sys.argv), logging.root.handlers[:],
            logging.getLogger("pipeline").level) == before
