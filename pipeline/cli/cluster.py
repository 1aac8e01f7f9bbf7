"""Airflow on its distributed engine, on one machine: the CeleryExecutor with a Redis broker, and a
scheduler, an API server, a triggerer, a DAG processor and N Celery workers, each its own process group.

Each worker has its own working directory and artifact cache, as it would on its own machine: what one
task writes, another reads through the team artifact store (PIPELINE_ARTIFACT_STORE=postgres). Task
instances record the worker's name as their hostname (`worker_hostname`), so the UI and the REST API
say where each ran. `make airflow EXECUTOR=celery` runs this until Ctrl-C; docker-compose.yaml runs the
same parts as services (`--scale airflow-worker=N`). Nothing here imports Airflow.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from pipeline.contract.settings import ENV_ARTIFACT_DIR, ENV_ARTIFACT_STORE, PROJECT_ROOT
from pipeline.runtime.threads import MACHINE_SLOTS

WORKER_NAME = "PIPELINE_WORKER_NAME"
SERVICES = ("scheduler", "api-server", "triggerer", "dag-processor")


def worker_hostname() -> str:
    """The hostname Airflow records for a task instance (`[core] hostname_callable`): the worker's name where
    one is set, as when several workers share a machine, else the machine's fully qualified name."""
    return os.environ.get(WORKER_NAME) or socket.getfqdn()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def celery_environment(env: dict[str, str], broker_url: str, concurrency: int) -> dict[str, str]:
    """`env` (Airflow's, from `pipeline.cli.localenv.airflow_environment`) switched to the CeleryExecutor: Redis as
    the broker, the metadata database as the result backend, one JWT secret for every process (the API server
    signs what the workers present), the team artifact store, and worker names as task hostnames."""
    metadata = sa.make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).set(drivername="postgresql")
    return {
        **env,
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata.render_as_string(hide_password=False),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "pipeline.cli.cluster.worker_hostname",
        "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET") or secrets.token_urlsafe(32),
        ENV_ARTIFACT_STORE: env.get(ENV_ARTIFACT_STORE) or "postgres",
    }


def worker_environment(env: dict[str, str], name: str, workdir: Path) -> dict[str, str]:
    """One worker's environment: its name, its own artifact cache, its own log-server port."""
    return {**env, WORKER_NAME: name, ENV_ARTIFACT_DIR: str(workdir / "artifacts"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}


@dataclass
class Cluster:
    env: dict[str, str]  # what the services run with (workers add their own name and folders)
    base_url: str
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    workdirs: dict[str, Path] = field(default_factory=dict)  # worker name -> its working directory

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop one part with everything it started (a worker's task processes too): SIGKILL is a lost machine."""
        process = self.processes[name]
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def stop(self) -> None:
        """Stop every part, workers first (SIGTERM: a warm shutdown)."""
        for name in reversed(list(self.processes)):
            self.kill(name, signal.SIGTERM)

    def exited(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def airflow_binary() -> str:
    return shutil.which("airflow", path=os.path.dirname(sys.executable)) or "airflow"


@contextmanager
def redis_server(port: int, folder: Path) -> Iterator[str]:
    """A private redis-server (Debian's package) on `port`, keeping nothing on disk; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server); "
                                "or pass --broker-url redis://HOST:PORT/0 of a running Redis")
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def celery_airflow(env: dict[str, str], root: Path, workers: int = 2, concurrency: int = 1,
                   broker_url: str | None = None) -> Iterator[Cluster]:
    """Redis (unless `broker_url`), then every Airflow part on the CeleryExecutor, under `root` (logs in
    root/logs, worker N's working directory root/worker-N); everything is stopped on exit."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        broker = broker_url or stack.enter_context(redis_server(free_port(), root / "redis"))
        # The workers share this machine's cores: each task's thread pools get cores // every slot (pipeline.runtime.threads).
        cluster_env = {**celery_environment(env, broker, concurrency), MACHINE_SLOTS: str(workers * concurrency)}
        port = cluster_env.get("AIRFLOW__API__PORT", "8080")
        cluster = Cluster(cluster_env, f"http://127.0.0.1:{port}", log_dir)
        stack.callback(cluster.stop)
        airflow = airflow_binary()
        migrated = subprocess.run([airflow, "db", "migrate"], env=cluster_env, cwd=PROJECT_ROOT,
                                  capture_output=True, text=True, check=False)
        if migrated.returncode:
            raise RuntimeError(f"airflow db migrate failed:\n{(migrated.stderr or migrated.stdout)[-3000:]}")
        for service in SERVICES:
            cluster.start(service, [airflow, service], cluster_env, PROJECT_ROOT)
        for index in range(1, workers + 1):
            name = f"worker-{index}"
            workdir = root / name
            workdir.mkdir(parents=True, exist_ok=True)
            cluster.workdirs[name] = workdir
            cluster.start(name, [airflow, "celery", "worker", "--concurrency", str(concurrency),
                                 "--celery-hostname", f"{name}@%h", "--without-mingle", "--without-gossip"],
                          worker_environment(cluster_env, name, workdir), workdir)
        yield cluster
