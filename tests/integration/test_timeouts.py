"""A frozen database gives a one-line error within the configured timeout, instead of a hang."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.contract.settings import ENV_CONFIG, ENV_DATABASE_URL, PROJECT_ROOT
from pipeline.store import db
from tests.commands import cli_subprocess


@pytest.fixture
def frozen_server() -> Iterator[str]:
    """A PostgreSQL server of this test's own whose postmaster is stopped (SIGSTOP): it accepts nothing new.
    Always thawed and stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="pgfreeze-") as folder:
        pgdata = Path(folder) / "pgdata"
        url = db.start_embedded_postgres(pgdata)
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGSTOP)
        try:
            yield url
        finally:
            os.kill(pid, signal.SIGCONT)
            db.stop_embedded_postgres(pgdata)


def test_a_frozen_database_fails_in_one_line_within_the_connect_timeout(frozen_server: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    raw["database"] = {"connect_timeout_seconds": 2}
    config = tmp_path / "impatient.yaml"
    config.write_text(yaml.safe_dump(raw))
    # A real subprocess: a hang inside libpq would hold this process past any timeout; a child is killed at 300 s.
    cli = cli_subprocess({**os.environ, ENV_DATABASE_URL: frozen_server, ENV_CONFIG: str(config)})

    result = cli("status")

    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: database postgresql") and "(PIPELINE_DATABASE_URL)" in line
    assert "timeout expired" in line and "is it running and reachable?" in line


def test_timeouts_reach_every_connection(tmp_path: Path, server_url: str) -> None:
    """The server itself reports the statement and lock timeouts the config sets."""
    from pipeline.contract.config import DatabasePolicy

    engine = db.create_engine(server_url, DatabasePolicy(connect_timeout_seconds=5, statement_timeout_seconds=123,
                                                          lock_timeout_seconds=7))
    with engine.connect() as conn:
        shown = [conn.exec_driver_sql(f"SHOW {name}").scalar() for name in ("statement_timeout", "lock_timeout")]
    engine.dispose()
    assert shown == ["123s", "7s"]
