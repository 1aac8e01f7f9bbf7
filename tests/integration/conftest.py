"""Fixtures for the integration tests: a Workspace on the test's own PostgreSQL database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.contract.settings import ENV_ARTIFACT_DIR, ENV_CONFIG, ENV_DATABASE_URL, ENV_KEY_FILE, Settings
from pipeline.workspace import Workspace
from tests.commands import Cli, cli_in_process, cli_subprocess


@pytest.fixture
def ws(settings: Settings) -> Iterator[Workspace]:
    """A Workspace on the test's own database and artifact folder."""
    workspace = Workspace.open(settings)
    yield workspace
    workspace.engine.dispose()


def cli_environment(database_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment a command runs with on the test's database and artifact folder (the `settings` fixture's),
    with the shipped config."""
    env = {**os.environ, ENV_DATABASE_URL: database_url, ENV_ARTIFACT_DIR: str(tmp_path / "artifacts"),
           ENV_KEY_FILE: str(tmp_path / "secrets" / "master.key"),  # the `settings` fixture's master keys
           "OMP_NUM_THREADS": "1"}  # the CLI shares two cores with the test run
    env.pop(ENV_CONFIG, None)
    return env


@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Cli:
    """`python -m pipeline ARGS` on the test's database and artifact folder, in this process: for tests of what a
    command does, without paying a new interpreter's imports per command."""
    return cli_in_process(cli_environment(database_url, tmp_path))


@pytest.fixture
def cli_process(database_url: str, tmp_path: Path) -> Cli:
    """The `cli` fixture's commands as a real `python -m pipeline` subprocess: only for tests of the process itself
    (its exit status and output end to end); each says why."""
    return cli_subprocess(cli_environment(database_url, tmp_path))
