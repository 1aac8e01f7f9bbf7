"""The bench's reading of other processes' load, against the real server: its work is not 'other'."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from bench.probe import OtherLoad
from pipeline import db

BUSY_SECONDS = 1.5


@pytest.fixture
def engine(server_url: str) -> Iterator[Engine]:
    engine = db.create_engine(server_url)
    if OtherLoad(engine).postmaster is None:
        pytest.skip("the server runs on another machine: its processes cannot be read here")
    yield engine
    engine.dispose()


def test_a_busy_process_beside_the_measurement_is_counted(engine: Engine) -> None:
    load = OtherLoad(engine)
    busy = subprocess.Popen([sys.executable, "-c",
                             f"import time\nend = time.time() + {BUSY_SECONDS}\nwhile time.time() < end: pass"])
    busy.wait()

    cores = load.cores()

    assert cores is not None and cores > 0.5


def test_the_database_servers_own_work_is_not_counted(engine: Engine) -> None:
    load = OtherLoad(engine)
    started = time.perf_counter()
    with engine.connect() as conn:  # the server busy on one core, this process waiting for it
        while time.perf_counter() - started < BUSY_SECONDS:
            conn.exec_driver_sql("SELECT count(*) FROM generate_series(1, 2000000)").scalar_one()

    cores = load.cores()

    assert cores is not None and cores < 0.5
