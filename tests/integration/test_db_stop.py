"""`python -m pipeline db-stop`: the embedded server stops, its data stays, and it starts again."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.contract.settings import ENV_DATABASE_URL, ENV_PGDATA
from pipeline.store import db
from tests.commands import cli_subprocess


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def own_pgdata() -> Iterator[Path]:
    """A data folder of this test's own: the suite's shared server must keep running.
    Short and under /tmp: the server's socket path must fit in 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="pgstop-") as folder:
        pgdata = Path(folder) / "pgdata"
        yield pgdata
        db.stop_embedded_postgres(pgdata)  # whatever the test left running


def test_db_stop_stops_the_embedded_server_and_keeps_its_data(own_pgdata: Path) -> None:
    engine = db.create_engine(db.start_embedded_postgres(own_pgdata))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)"))
    engine.dispose()
    pid = int((own_pgdata / "postmaster.pid").read_text().split()[0])
    # The embedded server only: earlier tests in the session may have exported a database URL.
    env = {k: v for k, v in os.environ.items() if k != ENV_DATABASE_URL}
    # Real subprocesses: `db-url` must start the server again as the next operator command would, from a process
    # that has not seen it stopped.
    run = cli_subprocess({**env, ENV_PGDATA: str(own_pgdata)})

    stopped = run("db-stop")

    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"stopped embedded PostgreSQL (pid {pid}) on {own_pgdata}"
    assert not running(pid) and not (own_pgdata / "postmaster.pid").exists()
    again = run("db-stop")
    assert again.stdout.strip() == f"no embedded PostgreSQL running on {own_pgdata}"
    restarted = run("db-url")  # a new process starts it again, as the next command would
    assert restarted.returncode == 0, restarted.stderr
    engine = db.create_engine(restarted.stdout.strip())
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT n FROM kept")).scalar_one() == 7
    engine.dispose()


def test_a_stale_pid_file_counts_as_not_running(own_pgdata: Path) -> None:
    own_pgdata.mkdir(parents=True)
    (own_pgdata / "postmaster.pid").write_text("999999999\n/somewhere\n")

    assert db.stop_embedded_postgres(own_pgdata) is None


def test_a_stale_pid_file_naming_a_live_unrelated_process_signals_nothing(tmp_path: Path) -> None:
    """The server died without removing postmaster.pid, and its pid now belongs to another process."""
    import subprocess
    import sys

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        pgdata = tmp_path / "pgdata"
        pgdata.mkdir()
        (pgdata / "postmaster.pid").write_text(f"{bystander.pid}\n{pgdata}\n")
        assert db.stop_embedded_postgres(pgdata, timeout=5) is None
        assert bystander.poll() is None and running(bystander.pid)  # not signalled: still alive
    finally:
        bystander.kill()
        bystander.wait()


def test_the_server_is_known_by_its_data_directory(own_pgdata: Path) -> None:
    db.start_embedded_postgres(own_pgdata)
    pid = int((own_pgdata / "postmaster.pid").read_text().split()[0])
    assert db.serves_data_directory(pid, own_pgdata)
    assert not db.serves_data_directory(pid, own_pgdata.parent)
    assert not db.serves_data_directory(os.getpid(), own_pgdata)
    assert db.stop_embedded_postgres(own_pgdata) == pid and not running(pid)
