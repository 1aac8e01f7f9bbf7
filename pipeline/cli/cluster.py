"""Airflow on its distributed engine, on one machine: the CeleryExecutor with a Redis broker, and a
scheduler, an API server, a triggerer, a DAG processor and N Celery workers, each its own process group.
A worker is replaceable: `supervise` restarts one that dies (with a back-off) while every other part keeps
running; SIGTERM to the stack stops every part and whatever it started.

Each worker has its own working directory and artifact cache, as it would on its own machine: what one
task writes, another reads through the team artifact store (PIPELINE_ARTIFACT_STORE=postgres). Task
instances record the worker's name as their hostname (`worker_hostname`), so the UI and the REST API
say where each ran. `make airflow EXECUTOR=celery` runs this until Ctrl-C; docker-compose.yaml runs the
same parts as services (`--scale airflow-worker=N`). Nothing here imports Airflow.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psutil
import sqlalchemy as sa

from pipeline.contract.config import ConfigError, load_config
from pipeline.contract.settings import (
    ENV_ARTIFACT_DIR,
    ENV_ARTIFACT_STORE,
    ENV_DATABASE_URL,
    ENV_ERASURE_KEY_FILE,
    ENV_KEY_FILE,
    PROJECT_ROOT,
    Settings,
)
from pipeline.runtime.threads import MACHINE_SLOTS

WORKER_NAME = "PIPELINE_WORKER_NAME"
SERVICES = ("scheduler", "api-server", "triggerer", "dag-processor")
STATE_FILE = "stack.json"  # in the stack's folder: the supervisor's pid, every part's pid, the UI's URL
ENV_FILE = "stack-env.json"  # the environment the parts run with (secrets too: mode 0600), for --add-worker

# Settings of this stack that a value already in the environment overrides.
LOST_WORK_SETTINGS = {
    # A task whose worker is gone stops heartbeating: the scheduler fails the try after this many seconds and,
    # with retries left, queues the next try on any live worker (Airflow's default is 300).
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "10",
    # A hand-off to a broker that is down: Celery retries the publish for longer than one attempt may take, so
    # the attempt ends in Airflow's publish timeout, which the scheduler retries on its next loops (about
    # 120 x 5 s: a ten-minute outage) before it fails the try. A refused connection otherwise failed the try
    # at once, spending one of the task's retries.
    "AIRFLOW__CELERY__OPERATION_TIMEOUT": "5",
    "AIRFLOW__CELERY__TASK_PUBLISH_MAX_RETRIES": "120",
    "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": json.dumps({
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 1000, "interval_start": 0, "interval_step": 0.5,
                                      "interval_max": 1},
        "broker_connection_retry": True, "broker_connection_max_retries": None,
        # Connection attempts go on for this long (Celery's default: 4 s, under the publish timeout, so a refused
        # connection failed the try); Airflow's publish timeout ends them first.
        "broker_connection_timeout": 60}),
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__MAX_RETRIES": "1000",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__INTERVAL_START": "0",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__INTERVAL_STEP": "0.5",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__INTERVAL_MAX": "1",
}


def worker_hostname() -> str:
    """The hostname Airflow records for a task instance (`[core] hostname_callable`): the worker's name where
    one is set, as when several workers share a machine, else the machine's fully qualified name."""
    return os.environ.get(WORKER_NAME) or socket.getfqdn()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shared_key_files(env: dict[str, str]) -> dict[str, str]:
    """The key files every worker must read, as absolute paths: the master keys of encryption at rest
    (PIPELINE_KEY_FILE, else the config's security.key_file, else .secrets/master.key) and the erasure key. A
    worker's own folder (its working directory, its artifact cache) never decides where a key is: worker-1 must
    unwrap what worker-2 wrapped. A config that does not load is left to the parts to report."""
    from pipeline.store import keys

    settings = Settings.from_env(env)
    shared = {ENV_ERASURE_KEY_FILE: str(settings.erasure_key_file.absolute())}
    try:
        security = load_config(settings.config_path).security
    except ConfigError:
        return shared
    if security.key_manager == "local":
        shared[ENV_KEY_FILE] = str(keys.key_file_path(settings, security))
    return shared


def celery_environment(env: dict[str, str], broker_url: str, concurrency: int, workers: int = 1) -> dict[str, str]:
    """`env` (Airflow's, from `pipeline.cli.localenv.airflow_environment`) switched to the CeleryExecutor: Redis as
    the broker, the metadata database as the result backend, one JWT secret for every process (the API server
    signs what the workers present), the team artifact store, worker names as task hostnames, as many running
    tasks as the workers have slots, lost work noticed within a minute (LOST_WORK_SETTINGS), and one key source
    for every worker (`shared_key_files`)."""
    metadata = sa.make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).set(drivername="postgresql")
    return {
        **LOST_WORK_SETTINGS,
        **env,
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(workers * concurrency),
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata.render_as_string(hide_password=False),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "pipeline.cli.cluster.worker_hostname",
        "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET") or secrets.token_urlsafe(32),
        ENV_ARTIFACT_STORE: env.get(ENV_ARTIFACT_STORE) or "postgres",
        **shared_key_files(env),
    }


EXECUTION_API = "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"
# What a worker dials: each must name a host every worker's machine can reach.
WORKER_ADDRESSES = (EXECUTION_API, "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND",
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", ENV_DATABASE_URL)
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def reached_at(url: str, host: str) -> str:
    """`url` with a loopback host replaced by `host` (an address given by the user stays)."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    address = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc="@".join([*netloc[:-1], address])))


def unshared_addresses(env: dict[str, str]) -> list[str]:
    """The addresses in `env` a worker on another machine could not reach: loopback hosts, Unix sockets."""
    found = []
    for name in WORKER_ADDRESSES:
        url = env.get(name, "").removeprefix("db+")
        if not url:
            continue
        parts = urlsplit(url)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        if socket_dir.startswith("/") or (parts.scheme.startswith("postgresql") and not parts.hostname):
            found.append(f"{name} reaches its database over the Unix socket in {socket_dir or 'the default folder'}")
        elif parts.hostname in LOOPBACK:
            found.append(f"{name} names {parts.hostname}")
    return found


def worker_environment(env: dict[str, str], name: str, workdir: Path) -> dict[str, str]:
    """One worker's environment: its name, its own artifact cache, its own log-server port; the key files are the
    stack's (`shared_key_files`), the same for every worker."""
    return {**env, WORKER_NAME: name, ENV_ARTIFACT_DIR: str(workdir / "artifacts"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}


def worker_command(airflow: str, name: str, concurrency: int) -> list[str]:
    return [airflow, "celery", "worker", "--concurrency", str(concurrency), "--celery-hostname", f"{name}@%h",
            "--without-mingle", "--without-gossip"]


def descendants(pid: int) -> list[psutil.Process]:
    """Every process `pid` started, and theirs (Airflow's task processes leave the worker's process group)."""
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


@dataclass
class Cluster:
    env: dict[str, str]  # what the services run with (workers add their own name and folders)
    base_url: str
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    workdirs: dict[str, Path] = field(default_factory=dict)  # worker name -> its working directory
    commands: dict[str, tuple[list[str], dict[str, str], Path]] = field(default_factory=dict)  # to restart a part
    started: dict[str, float] = field(default_factory=dict)  # part -> time.monotonic() it (re)started
    seen: dict[str, list[psutil.Process]] = field(default_factory=dict)  # part -> what it had started, last look

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.commands[name] = (args, env, cwd)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True)
        self.started[name] = time.monotonic()

    def restart(self, name: str) -> None:
        """Start part `name` again, as it was started (a worker keeps its name, folder and cache)."""
        self.start(name, *self.commands[name])

    def forget(self, name: str) -> None:
        """Drop a part that stopped for good (a worker stopped on purpose)."""
        self.processes.pop(name, None)
        self.workdirs.pop(name, None)
        self.commands.pop(name, None)
        self.started.pop(name, None)
        self.seen.pop(name, None)

    def look(self) -> None:
        """Note what each running worker has started: once a worker is dead, its orphans can no longer be found."""
        for name, process in self.processes.items():
            if name in self.workdirs and process.poll() is None:
                self.seen[name] = descendants(process.pid)

    def end_orphans(self, name: str) -> list[int]:
        """SIGKILL what part `name` had started and left running (a dead worker's task process); their pids."""
        ended = []
        for child in self.seen.pop(name, []):
            try:
                child.kill()  # psutil checks the process is still the one seen, not a reused pid
                ended.append(child)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(ended, timeout=10)
        return [child.pid for child in ended]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop one part with everything it started (a worker's task processes too): SIGKILL is a lost machine."""
        process = self.processes[name]
        self.seen[name] = [*self.seen.get(name, []), *descendants(process.pid)]
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        self.end_orphans(name)  # what left the part's process group, and outlived it

    def stop(self) -> None:
        """Stop every part, workers first (SIGTERM: a warm shutdown)."""
        for name in reversed(list(self.processes)):
            self.kill(name, signal.SIGTERM)

    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def write_state(self, folder: Path) -> None:
        """`stack.json` in `folder`: who supervises, every part's pid (one process group each), the UI's URL."""
        state = {"supervisor": os.getpid(), "base_url": self.base_url, "parts": self.pids(),
                 "workers": list(self.workdirs), "logs": str(self.log_dir)}
        temporary = folder / f".{STATE_FILE}.tmp"
        temporary.write_text(json.dumps(state, indent=1))
        temporary.replace(folder / STATE_FILE)

    def exited(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def airflow_binary() -> str:
    return shutil.which("airflow", path=os.path.dirname(sys.executable)) or "airflow"


@contextmanager
def redis_server(port: int, folder: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """A private redis-server (Debian's package) on `host`:`port`, keeping nothing on disk; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server); "
                                "or pass --broker-url redis://HOST:PORT/0 of a running Redis")
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([binary, "--port", str(port), "--bind", host, "--save", "", "--appendonly",
                                "no", "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((host, port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.1)
        yield f"redis://{host}:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def celery_airflow(env: dict[str, str], root: Path, workers: int = 2, concurrency: int = 1,
                   broker_url: str | None = None, host: str = "127.0.0.1") -> Iterator[Cluster]:
    """Redis (unless `broker_url`), then every Airflow part on the CeleryExecutor, under `root` (logs in
    root/logs, worker N's working directory root/worker-N); everything is stopped on exit. `host` is the
    address the workers reach this machine's parts at (the API server, the Redis started here)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        broker = broker_url or stack.enter_context(redis_server(free_port(), root / "redis", host))
        # The workers share this machine's cores: each task's thread pools get cores // every slot (pipeline.runtime.threads).
        cluster_env = {**celery_environment(env, broker, concurrency, workers),
                       MACHINE_SLOTS: str(workers * concurrency)}
        port = cluster_env.get("AIRFLOW__API__PORT", "8080")
        cluster_env[EXECUTION_API] = reached_at(cluster_env.get(EXECUTION_API) or f"http://{host}:{port}/execution/",
                                                host)
        cluster = Cluster(cluster_env, f"http://{host}:{port}", log_dir)
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
            cluster.start(name, worker_command(airflow, name, concurrency),
                          worker_environment(cluster_env, name, workdir), workdir)
        write_private(root / ENV_FILE, json.dumps({"env": cluster_env, "concurrency": concurrency}))
        cluster.write_state(root)
        yield cluster


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (it holds the stack's secrets)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


@dataclass(frozen=True)
class Backoff:
    """How long a dead worker waits before its restart: `first` seconds, doubling with each death in a row up to
    `most`; a worker that ran `settled` seconds before it died starts the count again."""
    first: float = 2.0
    most: float = 60.0
    settled: float = 120.0

    def delay(self, deaths_in_a_row: int) -> float:
        return float(min(self.most, self.first * 2 ** (deaths_in_a_row - 1)))


def exit_reason(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def supervise(cluster: Cluster, folder: Path, stopping: Callable[[], bool], say: Callable[[str], None],
              backoff: Backoff = Backoff(), interval: float = 1.0) -> str | None:
    """Watch the parts until `stopping()`. A worker that dies is restarted after a back-off while the other parts
    keep running; one that exits with status 0 was stopped on purpose (SIGTERM: a warm shutdown) and is let go.
    Any other part that stops ends the watch: its name is returned. `stack.json` in `folder` follows the pids."""
    deaths: Counter[str] = Counter()
    due: dict[str, float] = {}  # a dead worker -> when it restarts
    while not stopping():
        now = time.monotonic()
        cluster.look()
        for name in cluster.exited():
            if name in due:
                continue
            if name not in cluster.workdirs:
                return name
            process = cluster.processes[name]
            if process.returncode == 0:
                say(f"{name} (pid {process.pid}) stopped (exit status 0); not restarted")
                cluster.forget(name)
                cluster.write_state(folder)
                continue
            ran = now - cluster.started[name]
            deaths[name] = 1 if ran >= backoff.settled else deaths[name] + 1
            delay = backoff.delay(deaths[name])
            say(f"{name} (pid {process.pid}) died ({exit_reason(process.returncode)}) after {ran:.0f} s; "
                f"restarting it in {delay:.0f} s (death {deaths[name]} in a row)")
            orphans = cluster.end_orphans(name)
            if orphans:
                say(f"{name}: ended what it left running: pids {orphans}")
            due[name] = now + delay
        for name, when in list(due.items()):
            if now >= when:
                del due[name]
                cluster.restart(name)
                cluster.write_state(folder)
                say(f"{name} restarted: pid {cluster.processes[name].pid}")
        time.sleep(interval)
    return None


def extra_worker(root: Path) -> tuple[str, list[str], dict[str, str], Path]:
    """One more worker for the stack running under `root`: (name, command, environment, working directory).
    Its name is the next free worker-N; it runs in the foreground of whoever starts it, unsupervised."""
    env_file = root / ENV_FILE
    if not env_file.exists():
        raise FileNotFoundError(f"{env_file} does not exist: start the stack first (python -m pipeline "
                                "airflow-celery), with the same AIRFLOW_HOME")
    saved = json.loads(env_file.read_text())
    taken = {int(p.name.removeprefix("worker-")) for p in root.glob("worker-*") if p.name[7:].isdigit()}
    name = f"worker-{max(taken, default=0) + 1}"
    workdir = root / name
    workdir.mkdir(parents=True)
    return (name, worker_command(airflow_binary(), name, int(saved["concurrency"])),
            worker_environment(saved["env"], name, workdir), workdir)
