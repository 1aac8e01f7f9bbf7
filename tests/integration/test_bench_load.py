"""The bench's reading of other processes' load, against the real server: its work is not 'other'.

Each test measures only processes it starts or can name (a busy child, the backend serving its own
connection) and bounds OtherLoad's figures by them, so it holds whatever else the machine is doing:
other processes' work can add to 'other' and to the server's time (other sessions on the same server),
but it cannot take the child's seconds out of 'other' or put the backend's seconds into it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from bench.probe import OtherLoad, process_cpu_seconds, server_backends
from pipeline.store import db

WORK_CPU_SECONDS = 0.5  # CPU the busy child, or the backend, spends: work-bounded, not time-bounded
WALL_CAP_SECONDS = 60.0  # on a loaded machine that work takes longer, but the test never hangs
# /proc/stat charges whole clock ticks to each core, a process's own clock is finer: they differ a little.
TOLERANCE = 0.1
BURN = """\
import time
end = time.monotonic() + {cap}
while time.process_time() < {cpu} and time.monotonic() < end:
    pass
"""


@pytest.fixture
def engine(server_url: str) -> Iterator[Engine]:
    engine = db.create_engine(server_url)
    if OtherLoad(engine).postmaster is None:
        pytest.skip("the server runs on another machine: its processes cannot be read here")
    yield engine
    engine.dispose()


def test_a_busy_process_beside_the_measurement_is_counted(engine: Engine) -> None:
    load = OtherLoad(engine)
    busy = subprocess.Popen([sys.executable, "-c", BURN.format(cpu=WORK_CPU_SECONDS, cap=WALL_CAP_SECONDS)])
    _, status, usage = os.wait4(busy.pid, 0)  # the child's own CPU time, whoever else ran meanwhile
    busy.returncode = os.waitstatus_to_exitcode(status)
    child = usage.ru_utime + usage.ru_stime

    seen = load.breakdown()

    assert busy.returncode == 0
    assert child >= 0.9 * WORK_CPU_SECONDS, f"the child got {child:.2f} s of CPU in {WALL_CAP_SECONDS:.0f} s"
    assert seen is not None
    assert seen.other >= child - TOLERANCE, f"the child's {child:.2f} s are missing from {seen}"
    assert seen.own < child - TOLERANCE, f"the child's {child:.2f} s were taken for this process's: {seen}"
    assert seen.cores == pytest.approx(seen.other / seen.wall)


def test_the_database_servers_own_work_is_not_counted(engine: Engine) -> None:
    load = OtherLoad(engine)
    assert load.postmaster is not None
    with engine.connect() as conn:  # the server busy on one core, this process waiting for it
        backend = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        before = process_cpu_seconds(backend)
        deadline = time.monotonic() + WALL_CAP_SECONDS
        while process_cpu_seconds(backend) - before < WORK_CPU_SECONDS and time.monotonic() < deadline:
            conn.exec_driver_sql("SELECT count(*) FROM generate_series(1, 500000)").scalar_one()
        worked = process_cpu_seconds(backend) - before  # read before the breakdown: the server's reading covers it

        seen = load.breakdown()
        serving = server_backends(load.postmaster)

    assert worked >= WORK_CPU_SECONDS, f"the backend got {worked:.2f} s of CPU in {WALL_CAP_SECONDS:.0f} s"
    assert seen is not None
    assert backend in serving, f"backend {backend} is not among the server's processes {sorted(serving)}"
    assert seen.server >= worked - TOLERANCE, f"the backend's {worked:.2f} s are missing from the server's: {seen}"
    assert seen.other <= seen.busy - seen.own - worked + TOLERANCE, f"the backend's {worked:.2f} s are in {seen}"
