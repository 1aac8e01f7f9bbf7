"""Is the stack ready to run tasks: its databases answer, its broker answers PING, a Celery worker answers a ping.

What `python -m pipeline health` prints and the API server's `/pipeline-health` endpoint (plugins/stack_health.py)
returns, for compose healthchecks and load balancers. Every address comes from the environment the Airflow parts
run with (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, AIRFLOW__CELERY__BROKER_URL, PIPELINE_DATABASE_URL), never an
assumed localhost. Under the LocalExecutor there is no broker and no worker to check. Nothing here imports Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

TIMEOUT_SECONDS = 3  # each check's limit: a server that does not answer within it is down
BROKER_URL = "AIRFLOW__CELERY__BROKER_URL"
METADATA_URL = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"


@dataclass(frozen=True)
class Check:
    name: str  # database, metadata database, broker, workers
    ok: bool
    detail: str  # what answered, or what is wrong and where


def shown(url: str) -> str:
    """A URL as it may be printed: without its password."""
    return sa.make_url(url).render_as_string(hide_password=True)


def check_database(name: str, url: str) -> Check:
    """`SELECT 1` on the database `url` names, giving up after TIMEOUT_SECONDS."""
    engine = sa.create_engine(url, connect_args={"connect_timeout": TIMEOUT_SECONDS}, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        return Check(name, False, f"{shown(url)}: {str(exc.orig).strip().splitlines()[0]}")
    finally:
        engine.dispose()
    return Check(name, True, shown(url))


def check_broker(url: str) -> Check:
    """Redis's PING on the broker (another broker: a connection through kombu)."""
    try:
        if url.startswith(("redis://", "rediss://")):
            import redis

            with redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS,
                                      socket_connect_timeout=TIMEOUT_SECONDS) as client:
                client.ping()
        else:
            from kombu.connection import Connection

            with Connection(url, connect_timeout=TIMEOUT_SECONDS) as connection:  # type: ignore[no-untyped-call]
                connection.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001 - any failure to reach it means the broker is down
        return Check("broker", False, f"{shown(url)} does not answer: {exc}")
    return Check("broker", True, f"{shown(url)} answers PING")


def check_workers(url: str) -> Check:
    """A broadcast ping through the broker: the Celery workers that answer within TIMEOUT_SECONDS."""
    from celery import Celery

    app = Celery(broker=url, set_as_current=False)
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_timeout = TIMEOUT_SECONDS
    try:
        replies = app.control.ping(timeout=TIMEOUT_SECONDS / 2) or []
    except Exception as exc:  # noqa: BLE001 - the broker failed between the two checks
        return Check("workers", False, f"no ping through {shown(url)}: {exc}")
    finally:
        app.close()
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return Check("workers", False, f"no Celery worker answered a ping within {TIMEOUT_SECONDS / 2:g} s "
                     f"through {shown(url)}")
    return Check("workers", True, f"{len(names)} answered: {', '.join(names)}")


def readiness(environ: Mapping[str, str], pipeline_url: str | None) -> list[Check]:
    """Every check the stack's environment calls for: its databases, and its broker and workers when it runs the
    CeleryExecutor. The workers are not pinged when the broker is down (the broker is what is wrong)."""
    done = []
    if pipeline_url:
        done.append(check_database("database", pipeline_url))
    metadata = environ.get(METADATA_URL)
    if metadata and metadata != pipeline_url:
        done.append(check_database("metadata database", metadata))
    broker = environ.get(BROKER_URL)
    if environ.get("AIRFLOW__CORE__EXECUTOR", "").endswith("CeleryExecutor") or broker:
        if not broker:
            return [*done, Check("broker", False, f"{BROKER_URL} is not set, and the executor is Celery's")]
        done.append(check_broker(broker))
        done.append(check_workers(broker) if done[-1].ok else
                    Check("workers", False, "not pinged: the broker is down"))
    return done


def report(checks: list[Check]) -> dict[str, Any]:
    """The checks as one JSON-ready document: `healthy` and each check by name."""
    return {"healthy": all(c.ok for c in checks), "checks": {c.name: asdict(c) for c in checks}}


class Unhealthy(RuntimeError):
    """A check failed: the message names each failing check and what is wrong."""

    def __init__(self, checks: list[Check]) -> None:
        super().__init__("unhealthy: " + "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok))
        self.checks = checks
