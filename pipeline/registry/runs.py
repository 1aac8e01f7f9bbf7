"""A run ends, whatever kills it.

While a stage works on a run, its process holds a PostgreSQL session advisory lock keyed on the run id,
on a connection of its own, and names the stage in `pipeline.training_runs.active_stage`. A stage that
raises marks its run failed with the reason and the kind of failure. A process killed outright
(SIGKILL, OOM) records nothing, but the server drops its connection and with it the lock: the next
command (`reap_abandoned`, run whenever a workspace opens) finds a run with a stage named and no lock
held, and marks it failed as abandoned.

The kind of a failure decides what happens to the rows that started the run:
- `data`: the rows, the contract or the config were at fault. Running again on the same rows fails
  the same way, so the run counts as having read its arrivals (no retry in Airflow either).
- `infrastructure`: the database, the disk or the artifact store failed. The arrivals were not
  consumed and signal again, and Airflow retries the task with backoff.
- `abandoned`: the process died or was interrupted; as for infrastructure.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import adbc_driver_manager
import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.contract.settings import Settings
from pipeline.store.artifacts import ArtifactIntegrityError
from pipeline.store.keys import KeyUnavailable

log = logging.getLogger(__name__)

_RUN_LOCK_ID = 72_410_004  # pg_advisory_lock(key, hashtext(run_id)): one process works on a run at a time
IDLE_RUN_HOURS = 24  # a run no stage has worked on for this long (between stages, say its scheduler gone) is dead
LOCK_WAIT_SECONDS = 5.0  # a reaper holds a run's lock for a moment; a live stage holds it for its length
# pg_advisory_lock(key): every stage holds it shared while it works; an erasure holds it exclusive, so an erasure
# waits for the stages at work to end, and a stage starting meanwhile waits for the erasure: no stage ever reads
# a snapshot while an erasure rewrites it, or registers one the erasure did not see.
ERASURE_LOCK_ID = 72_410_030
ERASURE_WAIT_SECONDS = 900.0  # how long a stage waits for an erasure in progress before it fails (and is retried)

@dataclass(frozen=True)
class Run:
    run_id: str
    watermark: datetime
    triggered_by: str = "cli"
    trigger_event: dict[str, Any] | None = None
    as_of: datetime | None = None  # a past cut-off asked for (the watermark): the run never promotes


class InfrastructureFailure(RuntimeError):
    """A stage failed on infrastructure; raised in Airflow (with the one-line reason) so the task is retried."""


INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    sa.exc.OperationalError,  # server gone, frozen (timeouts), refused, out of connections
    sa.exc.InterfaceError,
    sa.exc.DisconnectionError,
    sa.exc.TimeoutError,  # no connection free in the pool
    psycopg2.OperationalError,  # the same, raised on a raw connection (scoring's COPY writer), not wrapped
    psycopg2.InterfaceError,  # "connection already closed"
    adbc_driver_manager.OperationalError,  # the Arrow (COPY) reader's connection
    adbc_driver_manager.InterfaceError,
    OSError,  # disk full, read-only, permissions
    MemoryError,
    ArtifactIntegrityError,  # a stored file missing or corrupted: the store, not the rows
    KeyUnavailable,  # a key file or token missing, unreachable or wrong (pipeline.store.keys): not the rows
    InfrastructureFailure,
)


class RunBusy(RuntimeError):
    """Another live process is working on the run."""


class ErasureInProgress(InfrastructureFailure):
    """A stage waited too long for a patient's erasure to end; retried like any infrastructure failure."""


def _hold_erasure_lock_shared(conn: Connection, run_id: str, stage: str) -> None:
    """Hold the erasure lock shared on `conn` (see ERASURE_LOCK_ID), waiting for an erasure in progress."""
    deadline = time.monotonic() + ERASURE_WAIT_SECONDS
    while not conn.scalar(sa.text("SELECT pg_try_advisory_lock_shared(:k)"), {"k": ERASURE_LOCK_ID}):
        if time.monotonic() > deadline:
            raise ErasureInProgress(
                f"run {run_id}, stage {stage}: a patient's erasure has held the erasure lock for over "
                f"{ERASURE_WAIT_SECONDS:.0f} s; the stage did not start, so it never read rows being erased. "
                "Retry once the erasure ends (pipeline.erasure_requests)")
        time.sleep(0.2)


def _release_erasure_lock_shared(conn: Connection) -> None:
    conn.execute(sa.text("SELECT pg_advisory_unlock_shared(:k)"), {"k": ERASURE_LOCK_ID})


@contextmanager
def erasure_lock(engine: Engine, wait_seconds: float) -> Iterator[Connection]:
    """Hold the erasure lock exclusive for the block: every stage at work has ended, and none starts until the
    block ends. Waits up to `wait_seconds`, then fails naming the runs whose stages hold it."""
    conn = _autocommit(engine)
    try:
        deadline = time.monotonic() + wait_seconds
        while not conn.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": ERASURE_LOCK_ID}):
            if time.monotonic() > deadline:
                busy = conn.execute(sa.text(
                    "SELECT run_id, active_stage FROM pipeline.training_runs WHERE active_stage IS NOT NULL")).all()
                named = ", ".join(f"{r.run_id} (stage {r.active_stage})" for r in busy) or "a stage"
                raise RunBusy(f"the erasure waited {wait_seconds:.0f} s for {named} to end; nothing was erased. "
                              "Retry when it ends (the request stays pending)")
            time.sleep(0.2)
        try:
            yield conn
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ERASURE_LOCK_ID})
    finally:
        conn.close()



def failure_kind(exc: BaseException) -> str:
    """'infrastructure', 'abandoned' (interrupted) or 'data' (anything the same inputs would repeat)."""
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return "abandoned"
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # an infrastructure error wrapped by our own
        if isinstance(exc, INFRASTRUCTURE_ERRORS):
            return "infrastructure"
        seen.add(id(exc))
        exc = exc.__cause__  # type: ignore[assignment]
    return "data"


DATABASE_ERRORS: tuple[type[BaseException], ...] = (sa.exc.DBAPIError, psycopg2.Error, adbc_driver_manager.Error)
UNREACHABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, psycopg2.OperationalError, psycopg2.InterfaceError,
               adbc_driver_manager.OperationalError, adbc_driver_manager.InterfaceError)


def database_named(settings: Settings) -> str:
    """The database the settings point at, as an error names it: never its password."""
    if settings.database_url:
        return f"database {sa.engine.make_url(settings.database_url).render_as_string(hide_password=True)} " \
               "(PIPELINE_DATABASE_URL)"
    return f"the embedded PostgreSQL in {settings.pgdata_dir}"


def database_error(exc: BaseException, settings: Settings) -> str:
    """One line: which database, what failed, what to check; never the password, the SQL or its values."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    detail = (str(orig).strip().splitlines() or [type(orig).__name__])[0] if orig is not None else type(exc).__name__
    if isinstance(exc, adbc_driver_manager.Error):
        detail = f"reading the source rows over COPY failed: {detail}"
    hint = "; is it running and reachable?" if isinstance(exc, UNREACHABLE) else ""
    return f"{database_named(settings)}: {detail}{hint}"


def error_line(exc: BaseException, settings: Settings) -> str:
    """A failure as one line; a database error (of any driver: SQLAlchemy's, psycopg2's, ADBC's) names the
    database, and its SQL and parameters go to the debug log only. The database password never appears,
    whatever a driver put in its message."""
    if isinstance(exc, DATABASE_ERRORS):
        log.debug("database error", exc_info=exc)
        line = database_error(exc, settings)
    else:
        text = str(exc).strip()
        line = text.splitlines()[0] if "\n" in text and isinstance(exc, OSError) else (text or type(exc).__name__)
    password = sa.engine.make_url(settings.database_url).password if settings.database_url else None
    return line.replace(str(password), "***") if password else line


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Held:
    conn: Connection
    stages: list[str] = field(default_factory=list)


_held: dict[str, _Held] = {}  # run id -> this process's lock connection and the stages it is in


def _autocommit(engine: Engine) -> Connection:
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def _try_lock(conn: Connection, run_id: str) -> bool:
    return bool(conn.scalar(sa.text("SELECT pg_try_advisory_lock(:k, hashtext(:r))"), {"k": _RUN_LOCK_ID, "r": run_id}))


def _unlock(conn: Connection, run_id: str) -> None:
    conn.execute(sa.text("SELECT pg_advisory_unlock(:k, hashtext(:r))"), {"k": _RUN_LOCK_ID, "r": run_id})


def _acquire(engine: Engine, run_id: str) -> Connection:
    conn = _autocommit(engine)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while not _try_lock(conn, run_id):
            if time.monotonic() > deadline:
                holder = conn.execute(sa.text(
                    "SELECT owner, active_stage FROM pipeline.training_runs WHERE run_id = :r"), {"r": run_id}).first()
                who = f"{holder.owner} (stage {holder.active_stage})" if holder and holder.owner else "another process"
                raise RunBusy(f"run {run_id} is being worked on by {who}; wait for it to end, or start a new run")
            time.sleep(0.2)
    except BaseException:
        conn.close()
        raise
    return conn


def _enter_stage(conn: Connection, run_id: str, stage: str) -> None:
    """Name the stage; a run an earlier attempt left failed is running again (an Airflow retry)."""
    conn.execute(sa.text("""
        UPDATE pipeline.training_runs
           SET active_stage = :stage, owner = :owner, heartbeat_at = now(),
               reason = CASE WHEN status = 'failed' THEN NULL ELSE reason END,
               finished_at = CASE WHEN status = 'failed' THEN NULL ELSE finished_at END,
               failure_kind = CASE WHEN status = 'failed' THEN NULL ELSE failure_kind END,
               status = CASE WHEN status = 'failed' THEN 'running' ELSE status END
         WHERE run_id = :run_id
    """), {"stage": stage, "owner": owner(), "run_id": run_id})


def _leave_stage(conn: Connection, run_id: str, back_to: str | None) -> None:
    conn.execute(sa.text("""
        UPDATE pipeline.training_runs SET active_stage = :stage, heartbeat_at = now() WHERE run_id = :run_id
    """), {"stage": back_to, "run_id": run_id})


def fail_run(conn: Connection, run_id: str, reason: str, kind: str) -> None:
    """Mark a still-running run failed; a status already recorded (validation_failed, kept...) stays."""
    conn.execute(sa.text("""
        UPDATE pipeline.training_runs
           SET status = 'failed', reason = :reason, failure_kind = :kind, finished_at = now(), active_stage = NULL
         WHERE run_id = :run_id AND status = 'running'
    """), {"run_id": run_id, "reason": reason, "kind": kind})


def refuse_run(engine: Engine, model: str, run_id: str, triggered_by: str, cut_off: Any, conf: dict[str, Any],
               reason: str) -> None:
    """Record a run whose params were refused before any stage ran: failed (a data failure, never retried),
    with the reason naming the param, so `status` and the run's note say why nothing ran."""
    from pipeline.registry import records

    with engine.begin() as conn:
        records.start_run(conn, model, run_id, triggered_by, cut_off, conf)
        fail_run(conn, run_id, f"params refused: {reason}", "data")


def fail_if_idle(engine: Engine, run_id: str, reason: str, kind: str) -> bool:
    """Mark a run failed from outside its stages (the CLI's last word, Airflow's failure callback), unless
    another live process is working on it: that one records its own outcome. True when marked."""
    if run_id in _held:
        with engine.begin() as conn:
            fail_run(conn, run_id, reason, kind)
        return True
    with _autocommit(engine) as conn:
        if not _try_lock(conn, run_id):
            log.warning("run %s is being worked on by another process: not marked failed here", run_id)
            return False
        try:
            fail_run(conn, run_id, reason, kind)
        finally:
            _unlock(conn, run_id)
    return True


@contextmanager
def running(engine: Engine, settings: Settings, run_id: str, stage: str) -> Iterator[None]:
    """Work on a run as `stage`: hold its lock, name the stage, and on any exception mark the run failed
    with a one-line reason and its failure kind, then re-raise. Nested use in one process (the CLI's
    `retrain` around its stages) shares the lock."""
    held = _held.get(run_id)
    if held is None:
        conn = _acquire(engine, run_id)
        try:
            _hold_erasure_lock_shared(conn, run_id, stage)
        except BaseException:
            _unlock(conn, run_id)
            conn.close()
            raise
        held = _held[run_id] = _Held(conn)
    held.stages.append(stage)
    try:
        _enter_stage(held.conn, run_id, stage)
        yield
    except BaseException as exc:
        _record_failure(held.conn, run_id, stage, exc, settings)
        raise
    finally:
        held.stages.pop()
        _release(held, run_id)


@contextmanager
def sharing(engine: Engine, settings: Settings, run_id: str, stage: str) -> Iterator[None]:
    """Work on a run beside siblings of the same stage (the tasks of a mapped model search): hold its lock
    shared, so they run at once while an exclusive stage, and the reaper, see the run as alive; name the
    stage; on any exception mark the run failed, then re-raise. Inside `running` (the CLI), the held lock
    covers it."""
    if run_id in _held:
        yield
        return
    conn = _autocommit(engine)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while not conn.scalar(sa.text("SELECT pg_try_advisory_lock_shared(:k, hashtext(:r))"),
                              {"k": _RUN_LOCK_ID, "r": run_id}):
            if time.monotonic() > deadline:
                raise RunBusy(f"run {run_id} is held by a stage that excludes others; wait for it to end")
            time.sleep(0.2)
        try:
            _hold_erasure_lock_shared(conn, run_id, stage)
            try:
                _enter_stage(conn, run_id, stage)
                yield
                _leave_stage(conn, run_id, None)
            finally:
                _release_erasure_lock_shared(conn)
        except BaseException as exc:
            _record_failure(conn, run_id, stage, exc, settings)
            raise
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock_shared(:k, hashtext(:r))"), {"k": _RUN_LOCK_ID, "r": run_id})
    finally:
        conn.close()


def _record_failure(conn: Connection, run_id: str, stage: str, exc: BaseException, settings: Settings) -> None:
    try:
        fail_run(conn, run_id, f"{stage}: {error_line(exc, settings)}", failure_kind(exc))
    except Exception:  # noqa: BLE001 - the database is gone: the lock went with it, and the next command reaps
        log.debug("run %s could not be marked failed (the database is unreachable); "
                  "the next command marks it abandoned", run_id)  # the failure's own line names the database


def _release(held: _Held, run_id: str) -> None:
    try:
        _leave_stage(held.conn, run_id, held.stages[-1] if held.stages else None)
        if not held.stages:
            _release_erasure_lock_shared(held.conn)
            _unlock(held.conn, run_id)
    except Exception:  # noqa: BLE001 - a lost connection has released the lock already
        log.debug("could not leave the stage of run %s cleanly", run_id, exc_info=True)
    finally:
        if not held.stages:
            _held.pop(run_id, None)
            held.conn.close()


def reap_abandoned(engine: Engine, model: str) -> list[dict[str, Any]]:
    """Mark failed (abandoned) every running run of `model` whose stage's process is gone (a stage is
    named, and nobody holds the run's lock), or that no stage has worked on for IDLE_RUN_HOURS; and every
    running scoring run nobody holds. Returns the runs marked."""
    reaped = []
    with _autocommit(engine) as conn:
        candidates = conn.execute(sa.text("""
            SELECT run_id, active_stage, owner, heartbeat_at FROM pipeline.training_runs
             WHERE model = :model AND status = 'running' AND active_stage IS NOT NULL
        """), {"model": model}).mappings().all()
        for run in candidates:
            if run["run_id"] in _held or not _try_lock(conn, run["run_id"]):
                continue  # alive: this process, or another that holds the lock
            try:
                reason = (f"abandoned: the process {run['owner']} running stage {run['active_stage']} (started "
                          f"{run['heartbeat_at']:%Y-%m-%d %H:%M:%S %Z}) ended, or lost the database, without recording an "
                          "outcome (killed, out of memory, its machine or the database server lost)")
                done = conn.execute(sa.text("""
                    UPDATE pipeline.training_runs
                       SET status = 'failed', failure_kind = 'abandoned', reason = :reason, finished_at = now(),
                           active_stage = NULL
                     WHERE run_id = :run_id AND status = 'running' AND active_stage IS NOT NULL
                """), {"run_id": run["run_id"], "reason": reason}).rowcount
            finally:
                _unlock(conn, run["run_id"])
            if done:
                log.warning("run %s: %s", run["run_id"], reason)
                reaped.append({**run, "reason": reason})
        for run in conn.execute(sa.text("""
                UPDATE pipeline.training_runs
                   SET status = 'failed', failure_kind = 'abandoned', finished_at = now(),
                       reason = 'abandoned: no stage worked on it for ' || :hours || ' hours (last at '
                                || to_char(coalesce(heartbeat_at, started_at), 'YYYY-MM-DD HH24:MI:SS TZ')
                                || '); its scheduler or operator left it between stages'
                 WHERE model = :model AND status = 'running' AND active_stage IS NULL
                   AND coalesce(heartbeat_at, started_at) < now() - make_interval(hours => :hours)
                RETURNING run_id, reason
        """), {"model": model, "hours": IDLE_RUN_HOURS}).mappings():
            log.warning("run %s: %s", run["run_id"], run["reason"])
            reaped.append(dict(run))
        for run_id in conn.scalars(sa.text(
                "SELECT run_id FROM pipeline.scoring_runs WHERE model = :model AND status = 'running'"),
                {"model": model}).all():
            if run_id in _held or not _try_lock(conn, run_id):
                continue  # a scoring run is one piece of work: running and unlocked means its process is gone
            try:
                done = conn.execute(sa.text("""
                    UPDATE pipeline.scoring_runs SET status = 'failed', finished_at = now(),
                           reason = 'abandoned: its process ended without recording an outcome (killed, out of '
                                    'memory, or the database lost); its forecasts were rolled back'
                     WHERE run_id = :run_id AND status = 'running'
                """), {"run_id": run_id}).rowcount
            finally:
                _unlock(conn, run_id)
            if done:
                reaped.append({"run_id": run_id, "reason": "abandoned scoring run"})
    return reaped
