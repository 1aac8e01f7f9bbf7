"""Fixtures for the integration tests: a Workspace on the test's own PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline import stages
from pipeline.settings import Settings


@pytest.fixture
def ws(settings: Settings) -> Iterator[stages.Workspace]:
    """A Workspace on the test's own database and artifact folder."""
    workspace = stages.Workspace.open(settings)
    yield workspace
    workspace.engine.dispose()
