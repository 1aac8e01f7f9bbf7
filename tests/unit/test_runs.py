"""The kind of a failure (what Airflow retries, which arrivals signal again) and its one line."""

from __future__ import annotations

import dataclasses

import adbc_driver_manager
import psycopg2
import pytest
import sqlalchemy as sa

from pipeline.contract.config import ConfigError
from pipeline.contract.settings import Settings
from pipeline.data.validate import ValidationFailed
from pipeline.registry import runs
from pipeline.store.artifacts import ArtifactIntegrityError

IO = adbc_driver_manager.AdbcStatusCode.IO


def caused_by(cause: BaseException) -> ValueError:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise ValueError("wrapped") from exc
    except ValueError as wrapped:
        return wrapped


@pytest.mark.parametrize(("exc", "kind"), [
    (sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly")), "infrastructure"),
    (OSError(28, "No space left on device", "/store/models/x.joblib"), "infrastructure"),
    (PermissionError(13, "Permission denied"), "infrastructure"),
    (ArtifactIntegrityError("artifact missing"), "infrastructure"),
    (caused_by(OSError(30, "Read-only file system")), "infrastructure"),
    (psycopg2.InterfaceError("connection already closed"), "infrastructure"),  # a raw connection's, unwrapped
    (psycopg2.OperationalError("server closed the connection unexpectedly"), "infrastructure"),
    (sa.exc.InterfaceError("COPY", {}, psycopg2.InterfaceError("connection already closed")), "infrastructure"),
    (adbc_driver_manager.OperationalError("IO: server closed the connection", status_code=IO), "infrastructure"),
    (caused_by(psycopg2.OperationalError("terminating connection due to administrator command")), "infrastructure"),
    (KeyboardInterrupt(), "abandoned"),
    (ValidationFailed("patient_records", [], headline="over the limit"), "data"),
    (ConfigError("promotion.margin: -1 is outside [0, 0.5]"), "data"),
    (ValueError("snapshot is not a validated clean snapshot"), "data"),
    (sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")), "data"),
    (psycopg2.IntegrityError("duplicate key value violates unique constraint"), "data"),
])
def test_failure_kind(exc: BaseException, kind: str) -> None:
    assert runs.failure_kind(exc) == kind


def test_an_error_line_never_shows_the_password() -> None:
    settings = dataclasses.replace(Settings.from_env(), database_url="postgresql://ml:hunter2pass@db.example/crm")

    line = runs.error_line(RuntimeError("could not connect to postgresql://ml:hunter2pass@db.example/crm"), settings)

    assert line == "could not connect to postgresql://ml:***@db.example/crm"


@pytest.mark.parametrize("exc", [
    psycopg2.OperationalError("server closed the connection unexpectedly\n\tThis probably means ..."),
    sa.exc.OperationalError("COPY pipeline.predictions", {"secret": 1}, Exception("server closed the connection")),
    adbc_driver_manager.OperationalError("IO: [libpq] server closed the connection", status_code=IO),
])
def test_a_database_error_of_any_driver_names_the_database_in_one_line(exc: BaseException) -> None:
    settings = dataclasses.replace(Settings.from_env(), database_url="postgresql://ml:hunter2pass@db.example/crm")

    line = runs.error_line(exc, settings)

    assert line.startswith("database postgresql://ml:***@db.example/crm (PIPELINE_DATABASE_URL): "), line
    assert "server closed the connection" in line and line.endswith("is it running and reachable?")
    assert "\n" not in line and "hunter2pass" not in line and "secret" not in line
