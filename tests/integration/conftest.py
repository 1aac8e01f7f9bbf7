"""Fixtures for the integration tests: a Workspace on the test's own PostgreSQL database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.contract.settings import ENV_ARTIFACT_DIR, ENV_CONFIG, ENV_DATABASE_URL, ENV_KEY_FILE, Settings
from pipeline.workspace import Workspace
from tests.integration.stage_runs import Cli, cli_in_process, cli_runner


@pytest.fixture
def ws(settings: Settings) -> Iterator[Workspace]:
    """A Workspace on the test's own database and artifact folder."""
    workspace = Workspace.open(settings)
    yield workspace
    workspace.engine.dispose()


@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Cli:
    """`python -m pipeline ARGS` on the test's database and artifact folder (the `settings` fixture's), with
    the shipped config."""
    env = {**os.environ, ENV_DATABASE_URL: database_url, ENV_ARTIFACT_DIR: str(tmp_path / "artifacts"),
           ENV_KEY_FILE: str(tmp_path / "secrets" / "master.key"),  # the `settings` fixture's master keys
           "OMP_NUM_THREADS": "1"}  # the CLI shares two cores with the test run
    env.pop(ENV_CONFIG, None)
    return cli_runner(env)


@pytest.fixture
def cli_here(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> Cli:
    """The `cli` fixture's commands, in this process (`pipeline.cli.main.main(argv)`): for tests of what a command
    does, not of the process boundary, without paying a new interpreter's imports per command."""
    monkeypatch.setenv(ENV_DATABASE_URL, database_url)
    monkeypatch.setenv(ENV_ARTIFACT_DIR, str(tmp_path / "artifacts"))
    monkeypatch.setenv(ENV_KEY_FILE, str(tmp_path / "secrets" / "master.key"))
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    return cli_in_process(capsys)
