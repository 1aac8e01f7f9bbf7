"""Airflow for this project: `airflow ...` configured for it, and the CeleryExecutor stack."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from typing import Any

from pipeline.contract.settings import Settings


def exec_airflow(settings: Settings, airflow_args: list[str]) -> None:
    """Replace this process with `airflow ...`, configured for this project."""
    from pipeline.cli.localenv import ADMIN_USER, admin_password, airflow_environment, airflow_home

    env = {**os.environ, **airflow_environment(settings, dict(os.environ))}
    if airflow_args[:1] == ["standalone"]:  # `make airflow`: every DAG starts unpaused (UNPAUSED_DAGS in the README)
        env.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False")
    bin_dir = os.path.dirname(sys.executable)  # `airflow standalone` starts `airflow ...` from PATH
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    if airflow_args[:1] in (["standalone"], ["api-server"]):
        home = airflow_home(env)
        port = env.get("AIRFLOW__API__PORT", "8080")
        print(f"Airflow UI: http://localhost:{port}  user: {ADMIN_USER}  password: {admin_password(home)}"
              f"  (kept in {home / 'passwords.json'})", flush=True)
    binary = shutil.which("airflow", path=bin_dir) or "airflow"
    os.execvpe(binary, [binary, *airflow_args], env)


def run_celery_airflow(settings: Settings, workers: int, concurrency: int, broker_url: str | None,
                       host: str = "127.0.0.1") -> None:
    """Airflow on the CeleryExecutor with `workers` Celery workers (`pipeline.cli.cluster`), until Ctrl-C, SIGTERM
    or until a part other than a worker stops (named, with its log's tail). A worker that dies is restarted."""
    from pipeline.cli.cluster import celery_airflow, supervise, unshared_addresses
    from pipeline.cli.localenv import ADMIN_USER, admin_password, airflow_environment, airflow_home
    from pipeline.store.health import shown

    env = {**os.environ, **airflow_environment(settings, dict(os.environ))}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    home = airflow_home(env)
    root = home / "celery"
    stop = {"signal": 0}
    signal.signal(signal.SIGTERM, lambda signum, _: stop.update(signal=signum))
    with celery_airflow(env, root, workers, concurrency, broker_url, host) as cluster:
        pids = ", ".join(f"{name} {pid}" for name, pid in cluster.pids().items() if name in cluster.workdirs)
        print(f"Airflow UI: {cluster.base_url}  user: {ADMIN_USER}  password: {admin_password(home)}\n"
              f"CeleryExecutor, broker {shown(cluster.env['AIRFLOW__CELERY__BROKER_URL'])}, {workers} worker(s) of "
              f"concurrency {concurrency}: {', '.join(cluster.workdirs)}; logs in {cluster.log_dir}\n"
              f"A worker that dies is restarted; every pid is in {root / 'stack.json'}.\n"
              f"  add a worker:  python -m pipeline airflow-celery --add-worker   (in another terminal, same "
              f"AIRFLOW_HOME; Ctrl-C stops it)\n"
              f"  stop a worker: kill -TERM <its pid>   (a warm shutdown: it finishes its task first, and is not "
              f"restarted; now: {pids})", flush=True)
        for address in unshared_addresses(cluster.env):
            print(f"note: a worker on another machine could not reach this: {address} (set it to an address "
                  "every machine reaches; --host for the parts started here)", flush=True)
        try:
            ended = supervise(cluster, root, lambda: bool(stop["signal"]), lambda line: print(line, flush=True))
        except KeyboardInterrupt:
            return
        if ended:
            print(f"{ended} stopped, so the stack stops; the end of its log:\n{cluster.log_tail(ended)}",
                  file=sys.stderr)


def run_extra_worker(settings: Settings) -> None:
    """Replace this process with one more Celery worker for the stack `airflow-celery` runs (same AIRFLOW_HOME)."""
    from pipeline.cli.cluster import extra_worker
    from pipeline.cli.localenv import airflow_home

    name, command, env, workdir = extra_worker(airflow_home(dict(os.environ)) / "celery")
    print(f"{name} in {workdir}: Ctrl-C or kill -TERM {os.getpid()} stops it (a warm shutdown)", flush=True)
    os.chdir(workdir)
    os.execvpe(command[0], command, env)


def register(sub: Any) -> None:
    """The parsers of `airflow` and `airflow-celery` (no workspace: they run Airflow)."""
    p = sub.add_parser("airflow", help="run the airflow CLI configured for this project")
    p.add_argument("airflow_args", nargs=argparse.REMAINDER)
    p = sub.add_parser("airflow-celery", help="run Airflow on the CeleryExecutor: Redis, scheduler, API server, "
                       "triggerer, DAG processor and Celery workers (until Ctrl-C)")
    p.add_argument("--workers", type=int, default=2, help="Celery workers started here (0: every worker runs on "
                   "another machine, with this stack's settings)")
    p.add_argument("--concurrency", type=int, default=1, help="task slots per worker")
    p.add_argument("--broker-url", help="a running Redis (default: start redis-server on a free port)")
    p.add_argument("--host", default="127.0.0.1", help="the address workers reach this machine's parts at (the "
                   "API server's execution API, the Redis started here); default 127.0.0.1, one machine")
    p.add_argument("--add-worker", action="store_true", help="start one more worker for the stack already running "
                   "with this AIRFLOW_HOME, in the foreground (Ctrl-C stops it)")
