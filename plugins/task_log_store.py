"""Task logs that every machine can read: Airflow's remote logging into the pipeline's PostgreSQL
(pipeline.task_logs, pipeline.store.task_logs). A worker sends a try's log lines while the try runs (in chunks, at
most one a second) and its whole log file when the try ends; the API server reads them back from there, so it
never needs the worker's log folder or its log server, and a try whose worker was lost still shows what it wrote.

Turned on by `AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS=plugins.task_log_store.LOGGING_CONFIG` (the CeleryExecutor
stack and docker-compose.yaml set it): Airflow takes the logging setup from LOGGING_CONFIG, Airflow's own, and the
remote-log object from REMOTE_TASK_LOG beside it. `[logging] remote_logging` stays False: it only selects
Airflow's built-in object stores, and would refuse a base folder they do not know."""

from __future__ import annotations

import copy
import json
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow.config_templates.airflow_local_settings import BASE_LOG_FOLDER, DEFAULT_LOGGING_CONFIG
from airflow.configuration import conf

LOGGING_CONFIG: dict[str, Any] = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
CHUNK_SECONDS = 1.0  # a running try's lines reach the database at most this long after they are written


def _engine() -> Any:
    """An engine on the pipeline's database that keeps no connection between uses (the task supervisor forks)."""
    import sqlalchemy as sa

    from pipeline.contract.config import DatabasePolicy
    from pipeline.contract.settings import Settings
    from pipeline.store import db

    url = db.with_timeouts(db.database_url(Settings.from_env()), DatabasePolicy())
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def _save(relative: str, data: bytes, complete: bool) -> None:
    from pipeline.cli.cluster import worker_hostname
    from pipeline.store.task_logs import save_log

    engine = _engine()
    try:
        with engine.begin() as conn:
            save_log(conn, relative, data, worker_hostname(), complete)
    finally:
        engine.dispose()


@dataclass
class LineShipper:
    """A structlog processor in the task supervisor's file logger: it queues each line written to a try's log file
    and sends the queue as one chunk, at most CHUNK_SECONDS later, from a timer thread. Other loggers (stdout, the
    task's socket, the DAG processor's files) pass through."""

    base_log_folder: Path
    not_tasks: Path  # the DAG processor's logs, under the log folder by default
    pending: dict[str, list[bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    timer: threading.Timer | None = None

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        relative = self.relative_path(logger)
        if relative is not None and isinstance(event_dict, dict):
            line = json.dumps(event_dict, default=str).encode() + b"\n"
            with self.lock:
                self.pending.setdefault(relative, []).append(line)
                if self.timer is None:
                    self.timer = threading.Timer(CHUNK_SECONDS, self.flush)
                    self.timer.daemon = True
                    self.timer.start()
        return event_dict

    def relative_path(self, logger: Any) -> str | None:
        """The log file's path under the log folder, when `logger` writes one (not stdout, not the task's socket)."""
        name = getattr(getattr(logger, "_file", None), "name", None)
        if not isinstance(name, str) or not Path(name).is_relative_to(self.base_log_folder) \
                or Path(name).is_relative_to(self.not_tasks):
            return None
        return Path(name).relative_to(self.base_log_folder).as_posix()

    def flush(self) -> None:
        """Send what is queued, one chunk per file; a failure is reported and the lines stay in the file."""
        with self.lock:
            pending, self.pending, self.timer = self.pending, {}, None
        for relative, lines in pending.items():
            try:
                _save(relative, b"".join(lines), complete=False)
            except Exception as exc:  # noqa: BLE001 - shipping must never break the task; the file has every line
                print(f"task_log_store: {len(lines)} lines of {relative} not sent to pipeline.task_logs: {exc}",
                      file=sys.stderr)


@dataclass
class DatabaseLogIO:
    """Airflow's RemoteLogIO protocol (airflow.logging.remote) over pipeline.task_logs."""

    base_log_folder: Path
    shipper: LineShipper

    @property
    def processors(self) -> tuple[Any, ...]:
        return (self.shipper,)

    def upload(self, path: str | Path, ti: Any = None) -> None:
        """Store the whole log file at `path` (relative to the log folder, or absolute); it stays on disk too."""
        from pipeline.store.task_logs import relative_log_path

        self.shipper.flush()
        relative = relative_log_path(path, self.base_log_folder)
        local = self.base_log_folder / relative
        if local.is_file():
            _save(relative, local.read_bytes(), complete=True)

    def read(self, relative_path: str, ti: Any) -> tuple[list[str], list[str] | None]:
        """(where it came from, [the log's text]), or (why there is none, None): Airflow then looks on the local
        disk and asks the worker's log server."""
        from pipeline.store.task_logs import stored_log

        try:
            engine = _engine()
            try:
                with engine.connect() as conn:
                    found = stored_log(conn, relative_path)
            finally:
                engine.dispose()
        except Exception as exc:  # noqa: BLE001 - a log that cannot be read is said so, the page still renders
            return [f"pipeline.task_logs could not be read for {relative_path}: {exc}"], None
        if found is None:
            return [f"pipeline.task_logs has no line of {relative_path} yet"], None
        if found.complete:
            return [f"pipeline.task_logs: {relative_path}, uploaded by {found.hostname} at {found.uploaded_at}"], \
                [found.content]
        return [f"pipeline.task_logs: {relative_path}, the lines {found.hostname} sent while the try ran (the last "
                f"at {found.uploaded_at}); the try did not upload its whole log: it is running, or its worker was "
                "lost"], [found.content]


REMOTE_TASK_LOG = DatabaseLogIO(Path(BASE_LOG_FOLDER), LineShipper(
    Path(BASE_LOG_FOLDER), Path(conf.get("logging", "dag_processor_child_process_log_directory"))))
