"""Arrivals: how many outcomes have become known since the last run looked, and when to signal."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.contract.config import DatasetContract
from pipeline.data.ingest import labelled_at, source_table

_SIGNAL_LOCK_ID = 72_410_003  # pg_advisory_xact_lock key: one signal decision at a time


def last_seen_watermark(conn: Connection, model: str) -> Any:
    """The latest time up to which a run of the model read the rows (None before its first run).

    A run that failed on infrastructure (database, disk, artifact store) or died did not consume its
    arrivals: they signal again. One that failed on the data did: the same rows would fail the same way.
    No watermark counts past the moment its run started, so no run can silence the watcher for good.
    """
    return conn.scalar(sa.text("""
        SELECT max(least(watermark, started_at)) FROM pipeline.training_runs
         WHERE model = :model AND NOT (status = 'failed' AND failure_kind IN ('infrastructure', 'abandoned'))
    """), {"model": model})


def count_new_labelled_rows(conn: Connection, contract: DatasetContract, since: Any) -> tuple[int, Any]:
    """Outcomes that became known after `since` (all when None) and up to now, and when the newest did.
    With a label time in the contract an outcome counts when it was filled in, so a late UPDATE of an old
    row counts; without one, when its row was recorded. A row stamped in the future is not readable by a
    run yet, so it is not counted until its time comes."""
    table = source_table(contract)
    ts, target = table.c[contract.timestamp_column], table.c[contract.target_column]
    known_at = labelled_at(contract, table)
    query = sa.select(sa.func.count(), sa.func.max(known_at)).where(target.is_not(None), ts <= sa.func.now())
    if contract.label_timestamp_column:
        query = query.where(known_at <= sa.func.now())
    if since is not None:
        query = query.where(known_at > since)
    count, newest = conn.execute(query).one()
    return int(count), newest


def _signal_pending(conn: Connection, model: str, since: Any, resignal_after: timedelta) -> bool:
    """A recent signal for the model that no run has answered yet (no run has read up to the signal's time)."""
    return bool(conn.scalar(sa.text("""
        SELECT EXISTS (
            SELECT 1 FROM pipeline.arrival_signals
             WHERE model = :model AND at > coalesce(CAST(:since AS timestamptz), '-infinity')
               AND at > now() - :resignal_after)
    """), {"model": model, "since": since, "resignal_after": resignal_after}))


def claim_arrival_signal(engine: Engine, model: str, contract: DatasetContract, min_new_rows: int,
                         resignal_after: timedelta = timedelta(minutes=30)) -> dict[str, Any] | None:
    """Record and return a signal when enough new labelled rows wait and none is pending.

    The state lives in PostgreSQL, so a restarted watcher neither loses nor repeats a signal;
    a signal that started no run within `resignal_after` is sent again.
    """
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:model))"), {"k": _SIGNAL_LOCK_ID, "model": model})
        since = last_seen_watermark(conn, model)
        count, newest = count_new_labelled_rows(conn, contract, since)
        if count < min_new_rows or _signal_pending(conn, model, since, resignal_after):
            return None
        signal_id, at = conn.execute(sa.text("""
            INSERT INTO pipeline.arrival_signals (model, since, up_to, new_rows) VALUES (:model, :since, :up_to, :n)
            RETURNING signal_id, at
        """), {"model": model, "since": since, "up_to": newest, "n": count}).one()
    return {"model": model, "signal_id": int(signal_id), "at": at.isoformat(), "new_rows": count,
            "since": since.isoformat() if since else None, "up_to": newest.isoformat()}
