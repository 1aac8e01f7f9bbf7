"""Airflow task logs in the pipeline's PostgreSQL (table pipeline.task_logs), so that any machine reads a log any
worker wrote: the whole file when a try ends, and its lines in chunks while it runs (what is left of a try whose
worker was lost), keyed by the file's path relative to the log folder. Airflow's side (the remote-logging object
that calls these) is plugins/task_log_store.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

INSERT = sa.text("INSERT INTO pipeline.task_logs (relative_path, content, complete, size_bytes, hostname) "
                 "VALUES (:path, :content, :complete, :size, :hostname)")
NEWEST_COMPLETE = sa.text("SELECT content, hostname, uploaded_at FROM pipeline.task_logs "
                          "WHERE relative_path = :path AND complete ORDER BY id DESC LIMIT 1")
CHUNKS = sa.text("SELECT content, hostname, uploaded_at FROM pipeline.task_logs "
                 "WHERE relative_path = :path AND NOT complete ORDER BY id")


@dataclass(frozen=True)
class StoredLog:
    content: str
    hostname: str  # the worker that wrote it
    uploaded_at: str  # ISO time of the (last) upload
    complete: bool  # the whole file as the try ended; else the chunks sent while it ran


def relative_log_path(path: str | Path, base_log_folder: Path) -> str:
    """`path` (absolute, or relative to `base_log_folder`) as the key it is stored under."""
    given = Path(path)
    if given.is_absolute():
        given = given.relative_to(base_log_folder)
    return given.as_posix()


def as_text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")  # PostgreSQL text holds no NUL


def save_log(conn: Connection, relative_path: str, data: bytes, hostname: str, complete: bool = True) -> int:
    """Store the log at `relative_path` (the whole file, or with `complete=False` a chunk of its lines); its size."""
    conn.execute(INSERT, {"path": relative_path, "content": as_text(data), "complete": complete, "size": len(data),
                          "hostname": hostname})
    return len(data)


def stored_log(conn: Connection, relative_path: str) -> StoredLog | None:
    """The newest whole upload of the log at `relative_path`, else its chunks joined in order, else None."""
    row = conn.execute(NEWEST_COMPLETE, {"path": relative_path}).first()
    if row is not None:
        return StoredLog(row.content, row.hostname, row.uploaded_at.isoformat(), True)
    chunks = conn.execute(CHUNKS, {"path": relative_path}).all()
    if not chunks:
        return None
    return StoredLog("".join(c.content for c in chunks), chunks[-1].hostname, chunks[-1].uploaded_at.isoformat(),
                     False)
