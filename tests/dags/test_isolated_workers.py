"""`retrain` on two Celery workers that share nothing with the stack or with each other: each runs in a network
namespace of its own (made by this test: a veth pair into a bridge on a private /24), with its own HOME, AIRFLOW_HOME,
log folder, artifact cache and config file, and reaches PostgreSQL, Redis and the API server only over the bridge's
address. PostgreSQL is a scratch cluster of the machine's PostgreSQL binaries listening there (the machine's own
listens on 127.0.0.1 only); Redis and the services are `pipeline.cli.cluster.celery_airflow` with `--host` that
address and no worker of its own.

A forced retrain runs; the worker running the slow family's search is lost mid-search (every process in its
namespace SIGKILLed); the run still succeeds on the other worker; the lost try's log, written only on the lost
worker's disk, and the retry's are read from the API server's logs endpoint (plugins/task_log_store.py). The
namespaces, veths and bridge are removed whatever happens."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli.cluster import (
    MACHINE_SLOTS,
    WORKER_NAME,
    airflow_binary,
    celery_airflow,
    worker_command,
)
from pipeline.cli.localenv import airflow_environment
from pipeline.contract.settings import ENV_ARTIFACT_DIR, Settings
from tests.conftest import missing_tool
from tests.dags.test_celery_workers import SLOW_FAMILY, _config
from tests.standalone import AirflowRest, free_port, scratch_airflow, wait_for, wait_until_ready

RUN_TIMEOUT = 900
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SUBNET = "10.234.34"  # the bridge's /24: the stack at .1, worker N at .(N+1)
HOST = f"{SUBNET}.1"
SUFFIX = f"{os.getpid() % 100000}"  # interface names hold 15 characters


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60, check=check)


def namespaces_can_be_made() -> str | None:
    """Why network namespaces and veths cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"p34probe{SUFFIX}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode:
        return f"ip netns add failed: {made.stderr.strip()}"
    try:
        veth = ip("link", "add", f"v34p{SUFFIX}", "type", "veth", "peer", "name", f"v34q{SUFFIX}", check=False)
        if veth.returncode:
            return f"ip link add ... type veth failed: {veth.stderr.strip()}"
        ip("link", "del", f"v34p{SUFFIX}", check=False)
    finally:
        ip("netns", "del", probe, check=False)
    return None


if (reason := namespaces_can_be_made()) is not None:
    missing_tool(f"two workers that share nothing need network namespaces: {reason}")
if not (PG_BIN / "initdb").exists() or shutil.which("redis-server") is None:
    missing_tool(f"PostgreSQL's server binaries ({PG_BIN}) and redis-server are needed (Debian: postgresql-15, "
                 "redis-server)")


@dataclass
class Network:
    """A bridge on this machine at HOST/24 and one namespace per worker, joined to it by a veth pair."""
    bridge: str = f"br34{SUFFIX}"
    namespaces: list[str] = field(default_factory=list)

    def add_machine(self, index: int) -> str:
        name, outside, inside = f"w34n{index}{SUFFIX}", f"v34h{index}{SUFFIX}", f"v34n{index}{SUFFIX}"
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", name)
        ip("link", "set", outside, "master", self.bridge, "up")
        for args in (("addr", "add", f"{SUBNET}.{index + 1}/24", "dev", inside), ("link", "set", inside, "up"),
                     ("link", "set", "lo", "up"), ("route", "add", "default", "via", HOST)):
            ip("-n", name, *args)
        return name

    def up(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{HOST}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def kill_everything_in(self, name: str) -> list[int]:
        """SIGKILL every process in namespace `name` (a lost machine); their pids."""
        pids = [int(p) for p in ip("netns", "pids", name, check=False).stdout.split()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def remove(self) -> None:
        """Remove the namespaces (their veths go with them) and the bridge; safe to call twice."""
        for name in self.namespaces:
            self.kill_everything_in(name)
            ip("netns", "del", name, check=False)
        self.namespaces.clear()
        ip("link", "del", self.bridge, check=False)


@contextmanager
def network() -> Iterator[Network]:
    net = Network()
    try:
        net.up()
        yield net
    finally:
        net.remove()


@contextmanager
def scratch_postgres(listen: str) -> Iterator[str]:
    """A PostgreSQL cluster of the machine's binaries, run by the postgres user, listening on 127.0.0.1 and
    `listen` with trust for the bridge's /24; its server URL over `listen`. Removed afterwards."""
    data = Path(tempfile.mkdtemp(prefix="pg34-"))
    shutil.chown(data, "postgres", "postgres")
    port = free_port()

    def as_postgres(*args: str) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, f"{args[0]} failed: {done.stderr[-2000:]}"

    try:
        as_postgres(str(PG_BIN / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres")
        with (data / "db" / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "server.log"), "-o",
                    f"-h 127.0.0.1,{listen} -p {port} -k {data} -c max_connections=300", "start")
        yield f"postgresql+psycopg2://postgres@{listen}:{port}/postgres"
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(data / "db"), "-m",
                        "immediate", "stop"], capture_output=True, timeout=120, check=False)
        shutil.rmtree(data, ignore_errors=True)


@dataclass
class Machine:
    """A worker in a namespace of its own: everything it writes is under `root`."""
    name: str
    namespace: str
    root: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        path = self.root / "worker.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def start_machine(net: Network, index: int, stack_env: dict[str, str], config: Path, tmp: Path) -> Machine:
    """Worker `index` in a new namespace, with its own home, Airflow home, logs, artifact cache and config copy."""
    namespace = net.add_machine(index)
    name = f"worker-{index}"
    root = tmp / f"machine-{index}"
    for folder in ("home", "airflow-home", "logs", "artifacts", "tmp"):
        (root / folder).mkdir(parents=True)
    shutil.copy(config, root / "pipeline.yaml")
    env = {**stack_env, WORKER_NAME: name, "HOME": str(root / "home"), "TMPDIR": str(root / "tmp"),
           "AIRFLOW_HOME": str(root / "airflow-home"), ENV_ARTIFACT_DIR: str(root / "artifacts"),
           "PIPELINE_CONFIG": str(root / "pipeline.yaml"),
           "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(root / "logs"),
           "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(root / "logs" / "dag_processor"),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "airflow-home" / "passwords.json"),
           MACHINE_SLOTS: "2"}  # the two "machines" share this one's cores
    with (root / "worker.log").open("wb") as out:
        process = subprocess.Popen(["ip", "netns", "exec", namespace,
                                    *worker_command(airflow_binary(), name, concurrency=1)],
                                   cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Machine(name, namespace, root, process)


@dataclass
class Isolated(AirflowRest):
    machines: dict[str, Machine]
    net: Network
    stack_logs: Path


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory, starts_airflow: None) -> Iterator[Isolated]:
    tmp = tmp_path_factory.mktemp("isolated-workers")
    config = _config(tmp)
    with ExitStack() as stack:
        net = stack.enter_context(network())
        server_url = stack.enter_context(scratch_postgres(HOST))
        lost_worker_after = {"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                             "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                             "PIPELINE_ARTIFACT_STORE": "postgres"}
        scratch = stack.enter_context(scratch_airflow(server_url, tmp, config, lost_worker_after))
        # What `python -m pipeline airflow-celery --workers 0 --host HOST` runs with; the databases are at HOST.
        env = {**scratch.env, **airflow_environment(Settings.from_env(scratch.env), scratch.env)}
        cluster = stack.enter_context(celery_airflow(env, tmp / "stack", workers=0, host=HOST))
        machines: dict[str, Machine] = {}

        def stop_machines() -> None:
            for machine in machines.values():
                net.kill_everything_in(machine.namespace)
                machine.process.wait(timeout=60)
        stack.callback(stop_machines)
        for index in (1, 2):
            machine = start_machine(net, index, cluster.env, config, tmp)
            machines[machine.name] = machine

        def stopped() -> str | None:
            ended = [name for name in cluster.exited()]
            ended += [name for name, m in machines.items() if m.process.poll() is not None]
            return f"{ended} stopped" if ended else None
        token, _ = wait_until_ready(scratch.base_url, tmp / "airflow-home", stopped)
        yield Isolated(base_url=scratch.base_url, token=token, machines=machines, net=net,
                       stack_logs=cluster.log_dir)


@pytest.mark.timeout(2400)
def test_a_run_survives_losing_a_worker_that_shares_nothing(isolated: Isolated) -> None:
    for machine in isolated.machines.values():  # no route to this machine's loopback: only the bridge
        probe = subprocess.run(["ip", "netns", "exec", machine.namespace, "python3", "-c",
                                "import socket; socket.create_connection(('127.0.0.1', 5432), timeout=3)"],
                               capture_output=True, text=True, timeout=60, check=False)
        assert probe.returncode != 0, f"{machine.name} reached 127.0.0.1:5432 of the stack's machine"

    isolated.call("PATCH", "/dags/retrain", json={"is_paused": False})
    run_id = isolated.call("POST", "/dags/retrain/dagRuns",
                           json={"logical_date": None, "conf": {"force": True}}).json()["dag_run_id"]
    families = list(yaml.safe_load((next(iter(isolated.machines.values())).root / "pipeline.yaml").read_text()
                                   )["training"]["families"])
    slow_index = families.index(SLOW_FAMILY)

    def slow_family_running_beside_the_other_worker() -> tuple[dict[str, Any], set[str]] | None:
        search = [ti for ti in isolated.task_instances(run_id) if ti["task_id"] == "search_family"]
        slow = [ti for ti in search if ti["map_index"] == slow_index and ti["state"] == "running"]
        hosts = {ti["hostname"] for ti in search if ti["hostname"] and ti["state"] in ("running", "success")}
        return (slow[0], hosts) if slow and len(hosts) == 2 else None
    slow, hosts = wait_for(slow_family_running_beside_the_other_worker, RUN_TIMEOUT,
                           f"{SLOW_FAMILY} to run on one worker while the other searches too", interval=0.5)
    assert hosts == set(isolated.machines)
    lost = isolated.machines[slow["hostname"]]
    # The search has begun (its first line, the threads it fits with, is the stage's own), and the API server already
    # shows it: a running try's lines reach pipeline.task_logs while it runs.
    wait_for(lambda: "threads:" in json.dumps(isolated.log_of(run_id, "search_family", slow_index, 1)), 120,
             f"the running {SLOW_FAMILY} search's first line to be readable from the API server", interval=0.5)
    killed = isolated.net.kill_everything_in(lost.namespace)
    killed_at = time.strftime("%H:%M:%S", time.gmtime())
    assert killed and lost.process.wait(timeout=60) == -signal.SIGKILL

    def finished() -> dict[str, Any] | None:
        run = isolated.call("GET", f"/dags/retrain/dagRuns/{run_id}").json()
        return run if run["state"] in ("success", "failed") else None
    run = wait_for(finished, RUN_TIMEOUT, f"retrain run {run_id} to finish after losing {lost.name}", interval=2)
    assert run["state"] == "success", (isolated.stack_logs / "scheduler.log").read_text(errors="replace")[-3000:]

    tries = isolated.tries(run_id, "search_family", slow_index)
    survivor = next(name for name in isolated.machines if name != lost.name)
    assert [(t["try_number"], t["hostname"]) for t in tries] == [(1, lost.name), (2, survivor)]
    print(f"\n{lost.name} ({lost.namespace}) lost at {killed_at} during {SLOW_FAMILY}: SIGKILLed pids {killed}; "
          f"try 1 ended {tries[0]['end_date']} ({tries[0]['state']}); try 2 on {survivor} {tries[1]['start_date']} "
          f"to {tries[1]['end_date']}; run ended {run['end_date']}")

    lost_log = isolated.log_of(run_id, "search_family", slow_index, 1)
    retry_log = isolated.log_of(run_id, "search_family", slow_index, 2)
    for number, content in ((1, lost_log), (2, retry_log)):
        print(f"\nGET .../taskInstances/search_family/logs/{number}?map_index={slow_index} from the API server:")
        for line in content[:12]:
            print(f"  {line}")
    lost_text, retry_text = json.dumps(lost_log), json.dumps(retry_log)
    assert f"the lines {lost.name} sent while the try ran" in lost_text and "its worker was lost" in lost_text, \
        lost_text[:3000]
    assert "threads:" in lost_text and '"try_number": 1' in lost_text, lost_text[:3000]  # what the lost try wrote
    assert f"uploaded by {survivor}" in retry_text, retry_text[:3000]
    # Nothing was shared: the API server's machine has no task log, each worker cached what it used.
    assert not [p for p in (isolated.stack_logs.parent.parent / "airflow-home" / "logs").rglob("attempt=*")]
    for machine in isolated.machines.values():
        assert any((machine.root / "artifacts").rglob("*.parquet")), machine.name
