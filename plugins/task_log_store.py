"""Task logs that every machine can read: Airflow's remote logging into the pipeline's PostgreSQL
(pipeline.task_logs, pipeline.store.task_logs). A worker uploads a try's log file when the try ends; the API
server reads it back from there, so it never needs the worker's log folder or its log server.

Turned on by `AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS=plugins.task_log_store.LOGGING_CONFIG` (the CeleryExecutor
stack and docker-compose.yaml set it): Airflow takes the logging setup from LOGGING_CONFIG, Airflow's own, and the
remote-log object from REMOTE_TASK_LOG beside it. `[logging] remote_logging` stays False: it only selects
Airflow's built-in object stores, and would refuse a base folder they do not know."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow.config_templates.airflow_local_settings import BASE_LOG_FOLDER, DEFAULT_LOGGING_CONFIG

LOGGING_CONFIG: dict[str, Any] = copy.deepcopy(DEFAULT_LOGGING_CONFIG)


def _engine() -> Any:
    from pipeline.contract.config import DatabasePolicy
    from pipeline.contract.settings import Settings
    from pipeline.store import db

    return db.create_engine(db.database_url(Settings.from_env()), DatabasePolicy())


@dataclass
class DatabaseLogIO:
    """Airflow's RemoteLogIO protocol (airflow.logging.remote) over pipeline.task_logs."""

    base_log_folder: Path
    processors: tuple[Any, ...] = ()  # nothing is sent while a task runs; its whole file is, when it ends

    def upload(self, path: str | Path, ti: Any = None) -> None:
        """Store the log file at `path` (relative to the log folder, or absolute); it stays on disk too."""
        from pipeline.cli.cluster import worker_hostname
        from pipeline.store.task_logs import relative_log_path, save_log

        relative = relative_log_path(path, self.base_log_folder)
        local = self.base_log_folder / relative
        if not local.is_file():
            return
        engine = _engine()
        try:
            with engine.begin() as conn:
                save_log(conn, relative, local.read_bytes(), worker_hostname())
        finally:
            engine.dispose()

    def read(self, relative_path: str, ti: Any) -> tuple[list[str], list[str] | None]:
        """(where it came from, [the log's text]), or (why there is none, None): Airflow then looks on the local
        disk and asks the worker's log server."""
        from pipeline.store.task_logs import newest_log

        try:
            engine = _engine()
            try:
                with engine.connect() as conn:
                    found = newest_log(conn, relative_path)
            finally:
                engine.dispose()
        except Exception as exc:  # noqa: BLE001 - a log that cannot be read is said so, the page still renders
            return [f"pipeline.task_logs could not be read for {relative_path}: {exc}"], None
        if found is None:
            return [f"pipeline.task_logs has no upload of {relative_path} (the try has not ended, or its worker "
                    "was lost before it could upload)"], None
        content, hostname, uploaded_at = found
        return [f"pipeline.task_logs: {relative_path}, uploaded by {hostname} at {uploaded_at}"], [content]


REMOTE_TASK_LOG = DatabaseLogIO(Path(BASE_LOG_FOLDER))
