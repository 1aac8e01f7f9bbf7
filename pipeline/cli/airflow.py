"""Airflow for this project: `airflow ...` configured for it, and the CeleryExecutor stack."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
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


def run_celery_airflow(settings: Settings, workers: int, concurrency: int, broker_url: str | None) -> None:
    """Airflow on the CeleryExecutor with `workers` Celery workers (`pipeline.cli.cluster`), until Ctrl-C or until
    a part stops (named, with its log's tail)."""
    from pipeline.cli.cluster import celery_airflow
    from pipeline.cli.localenv import ADMIN_USER, admin_password, airflow_environment, airflow_home

    env = {**os.environ, **airflow_environment(settings, dict(os.environ))}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    home = airflow_home(env)
    stop = {"signal": 0}
    signal.signal(signal.SIGTERM, lambda signum, _: stop.update(signal=signum))
    with celery_airflow(env, home / "celery", workers, concurrency, broker_url) as cluster:
        print(f"Airflow UI: {cluster.base_url}  user: {ADMIN_USER}  password: {admin_password(home)}\n"
              f"CeleryExecutor, broker {cluster.env['AIRFLOW__CELERY__BROKER_URL']}, {workers} worker(s) of "
              f"concurrency {concurrency}: {', '.join(cluster.workdirs)}; logs in {cluster.log_dir}", flush=True)
        try:
            while not stop["signal"] and not cluster.exited():
                time.sleep(1)
        except KeyboardInterrupt:
            return
        for name in cluster.exited():
            print(f"{name} stopped; the end of its log:\n{cluster.log_tail(name)}", file=sys.stderr)


def register(sub: Any) -> None:
    """The parsers of `airflow` and `airflow-celery` (no workspace: they run Airflow)."""
    p = sub.add_parser("airflow", help="run the airflow CLI configured for this project")
    p.add_argument("airflow_args", nargs=argparse.REMAINDER)
    p = sub.add_parser("airflow-celery", help="run Airflow on the CeleryExecutor: Redis, scheduler, API server, "
                       "triggerer, DAG processor and Celery workers (until Ctrl-C)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=1, help="task slots per worker")
    p.add_argument("--broker-url", help="a running Redis (default: start redis-server on a free port)")
