"""The kind of a failure (what Airflow retries, which arrivals signal again) and its one line."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa

from pipeline.contract.config import ConfigError
from pipeline.contract.settings import Settings
from pipeline.data.validate import ValidationFailed
from pipeline.registry import runs
from pipeline.store.artifacts import ArtifactIntegrityError


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
    (KeyboardInterrupt(), "abandoned"),
    (ValidationFailed("patient_records", [], headline="over the limit"), "data"),
    (ConfigError("promotion.margin: -1 is outside [0, 0.5]"), "data"),
    (ValueError("snapshot is not a validated clean snapshot"), "data"),
    (sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")), "data"),
])
def test_failure_kind(exc: BaseException, kind: str) -> None:
    assert runs.failure_kind(exc) == kind


def test_an_error_line_never_shows_the_password() -> None:
    settings = dataclasses.replace(Settings.from_env(), database_url="postgresql://ml:hunter2pass@db.example/crm")

    line = runs.error_line(RuntimeError("could not connect to postgresql://ml:hunter2pass@db.example/crm"), settings)

    assert line == "could not connect to postgresql://ml:***@db.example/crm"
