"""Fixtures for the integration tests: a Workspace on the test's own PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.contract.settings import Settings
from pipeline.workspace import Workspace
from tests.commands import Cli, cli_in_process, cli_subprocess
from tests.integration.stage_runs import command_env


@pytest.fixture
def ws(settings: Settings) -> Iterator[Workspace]:
    """A Workspace on the test's own database and artifact folder."""
    workspace = Workspace.open(settings)
    yield workspace
    workspace.engine.dispose()


@pytest.fixture
def cli(settings: Settings) -> Cli:
    """`python -m pipeline ARGS` on the test's database and artifact folder, in this process: for tests of what a
    command does, without paying a new interpreter's imports per command."""
    return cli_in_process(command_env(settings))


@pytest.fixture
def cli_process(settings: Settings) -> Cli:
    """The `cli` fixture's commands as a real `python -m pipeline` subprocess: only for tests of the process itself
    (its exit status and output end to end); each says why."""
    return cli_subprocess(command_env(settings))
