"""Airflow task logs in the pipeline's PostgreSQL (table pipeline.task_logs), so that any machine reads a log any
worker wrote: one row per upload of a try's log file, keyed by the file's path relative to the log folder.
Airflow's side (the remote-logging object that calls these) is plugins/task_log_store.py."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

INSERT = sa.text("INSERT INTO pipeline.task_logs (relative_path, content, size_bytes, hostname) "
                 "VALUES (:path, :content, :size, :hostname)")
NEWEST = sa.text("SELECT content, hostname, uploaded_at FROM pipeline.task_logs WHERE relative_path = :path "
                 "ORDER BY id DESC LIMIT 1")


def relative_log_path(path: str | Path, base_log_folder: Path) -> str:
    """`path` (absolute, or relative to `base_log_folder`) as the key it is stored under."""
    given = Path(path)
    if given.is_absolute():
        given = given.relative_to(base_log_folder)
    return given.as_posix()


def save_log(conn: Connection, relative_path: str, data: bytes, hostname: str) -> int:
    """Store one upload of the log at `relative_path` (its bytes as text; PostgreSQL text holds no NUL); its size."""
    text = data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    conn.execute(INSERT, {"path": relative_path, "content": text, "size": len(data), "hostname": hostname})
    return len(data)


def newest_log(conn: Connection, relative_path: str) -> tuple[str, str, str] | None:
    """(content, hostname, uploaded_at as ISO text) of the newest upload at `relative_path`, or None."""
    row = conn.execute(NEWEST, {"path": relative_path}).first()
    return None if row is None else (row.content, row.hostname, row.uploaded_at.isoformat())
