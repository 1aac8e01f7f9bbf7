"""Who saw what: one row in `pipeline.access_log` per read of patient-level data (sql/020_access_log.sql).

A row says who read (a principal name, never a secret), through which channel, what (the resource and its
filters, never the patients' ids: an erasure never has to reach into this append-only log), when, how many
rows, and the request or command. The REST API queues its rows beside its forecasts (`PredictionLog`), off
the request path; the CLI and the Models view write theirs at once.
"""

from __future__ import annotations

import getpass
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

ACCESS_LOG = sa.table("access_log", *(sa.column(c) for c in ("entry_id", "at", "principal", "channel", "what",
                                                             "model", "rows", "request")), schema="pipeline")
CHANNELS = ("cli", "rest", "view")
MAX_REQUEST_CHARS = 500  # a command line or a request line, cut: the log is for reading, not for payloads


@dataclass(frozen=True)
class Access:
    """One read of patient-level data."""

    principal: str
    channel: str
    what: str
    rows: int
    request: str
    model: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"access channel {self.channel!r} is not one of {', '.join(CHANNELS)}")

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "request": self.request[:MAX_REQUEST_CHARS]}


def record(target: Engine | Connection, accesses: list[Access]) -> None:
    """Append reads to the access log: in the caller's transaction (a Connection), or in one of its own."""
    if not accesses:
        return
    rows = [a.row() for a in accesses]
    if isinstance(target, Connection):
        target.execute(sa.insert(ACCESS_LOG), rows)
        return
    with target.begin() as conn:
        conn.execute(sa.insert(ACCESS_LOG), rows)


def cli_principal() -> str:
    """Who runs a command: cli:<login name>."""
    try:
        user = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: `python -m pipeline ARGS`."""
    return "python -m pipeline " + shlex.join(sys.argv[1:] if argv is None else argv)


def cli_read(engine: Engine, what: str, rows: int, model: str | None) -> None:
    """Record a CLI command's read of patient rows."""
    record(engine, [Access(cli_principal(), "cli", what, rows, command_line(), model)])


def recent(conn: Connection, limit: int = 50) -> list[dict[str, Any]]:
    """The latest reads, newest first."""
    rows = conn.execute(sa.select(ACCESS_LOG).order_by(ACCESS_LOG.c.entry_id.desc()).limit(limit)).mappings()
    return [dict(r) for r in rows]
