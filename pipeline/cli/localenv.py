"""The environment Airflow runs in on a developer's machine: home, folders, metadata DB, login.

Nothing here imports Airflow; it only computes `AIRFLOW__...` variables, keeping any the
user has already set.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pipeline.contract.settings import ENV_DATABASE_URL, ENV_VIEW_URL, PROJECT_ROOT, VIEW_PATH, Settings
from pipeline.store import db

ADMIN_USER = "admin"
METADATA_DATABASE = "airflow"


def airflow_home(environ: dict[str, str]) -> Path:
    return Path(environ.get("AIRFLOW_HOME") or PROJECT_ROOT / ".airflow")


def admin_password(home: Path) -> str:
    """The local admin password, made once and kept in AIRFLOW_HOME (git-ignored)."""
    path = home / "passwords.json"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({ADMIN_USER: secrets.token_urlsafe(12)}))
        path.chmod(0o600)
    return str(json.loads(path.read_text())[ADMIN_USER])


def airflow_environment(settings: Settings, environ: dict[str, str], metadata_db: str = METADATA_DATABASE) -> dict[str, str]:
    """Variables for running Airflow against this project; values already in `environ` win."""
    pipeline_url = db.database_url(settings)
    home = airflow_home(environ)
    admin_password(home)
    defaults = {
        "AIRFLOW_HOME": str(home),
        ENV_DATABASE_URL: pipeline_url,
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "OMP_WAIT_POLICY": "PASSIVE",  # tasks' idle OpenMP threads sleep, never spin on a busy core (pipeline.runtime.threads)
    }
    env = {**defaults, **{k: v for k, v in environ.items() if k in defaults and v}}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), environ.get("PYTHONPATH")) if p)
    if not environ.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):
        # Task processes reach the API server here; follow the port when it is not 8080.
        port = environ.get("AIRFLOW__API__PORT") or "8080"
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://localhost:{port}/execution/"
    if not environ.get(ENV_VIEW_URL):  # task logs link reports by their Models-view URL
        env[ENV_VIEW_URL] = f"http://localhost:{environ.get('AIRFLOW__API__PORT') or '8080'}{VIEW_PATH}"
    if not environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        metadata_url = db.with_database(pipeline_url, metadata_db)
        db.ensure_database(metadata_url)
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = metadata_url
    return env
