"""Shared helpers for tests that drive retrains through the stage functions, as the DAG does."""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from pipeline import stages
from pipeline.contract.config import load_config
from pipeline.contract.settings import ENV_ARTIFACT_DIR, ENV_CONFIG, ENV_DATABASE_URL, ENV_KEY_FILE, Settings
from pipeline.data import demo
from pipeline.registry import records
from pipeline.registry.runs import Run
from pipeline.store import crypto
from pipeline.workspace import Workspace

DEMO_WATERMARK = datetime(2026, 7, 1, tzinfo=UTC)  # after every demo row (the last is 2026-06)
LATER_WATERMARK = datetime(2100, 1, 1, tzinfo=UTC)  # after arrivals too, which are recorded now


def make_run(run_id: str, watermark: datetime = LATER_WATERMARK) -> Run:
    return Run(run_id=run_id, watermark=watermark, triggered_by="test")


# A scoring run's writer waiting on a lock as it copies its refusals (after its forecasts, on its transaction).
SCORER_WAITING = ("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                  "AND query LIKE 'COPY pipeline.scoring_refusals%'")


def fetch(ws: Workspace, sql: str, **params: Any) -> list[dict[str, Any]]:
    """The rows of `sql`; a sealed quarantine or validation row (encryption at rest) comes back opened, as its
    readers see it (select its key_ref and sealed columns, or *, to have it opened)."""
    with ws.engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(sa.text(sql), params).mappings()]
    return [records.opened(row, ws.keyring) if row.get("sealed") is not None else row for row in rows]


def command_env(settings: Settings, *, config: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment a `python -m pipeline` command or server started beside a test's workspace runs with: the
    settings' database and artifact folder, and the local key file the workspace's keys come from (so it opens what
    the workspace sealed); the shipped config unless `config` names another; one OpenMP thread (it shares two cores
    with the test run); then `extra`."""
    from pipeline.store import keys

    security = load_config(config or settings.config_path).security
    env = {**os.environ, ENV_DATABASE_URL: str(settings.database_url), ENV_ARTIFACT_DIR: str(settings.artifact_dir),
           ENV_KEY_FILE: str(keys.key_file_path(settings, security)), "OMP_NUM_THREADS": "1", **extra}
    env.pop(ENV_CONFIG, None)
    if config is not None:
        env[ENV_CONFIG] = str(config)
    return env


def stored_bytes(ws: Workspace, path: Path | str) -> bytes:
    """A stored file's plaintext, as the pipeline reads it (a sealed file opened with the workspace's keys)."""
    return crypto.read_plain(Path(path), ws.keyring)


def stored_text(ws: Workspace, path: Path | str) -> str:
    return stored_bytes(ws, path).decode()


def stored_frame(ws: Workspace, path: Path | str) -> pd.DataFrame:
    """A stored Parquet file as pandas reads it (`pd.read_parquet`), sealed or plain."""
    return pd.read_parquet(io.BytesIO(stored_bytes(ws, path)))


def rewrite_stored(ws: Workspace, path: Path, plaintext: bytes) -> None:
    """Replace a stored file's content as someone with its key could: `plaintext` sealed under the file's own data
    key (or written plain, for a plain file). Only the hash check can tell it is not what the name says."""
    ref = crypto.key_ref_of(path)
    data = plaintext if ref is None else crypto.seal(plaintext, ref, ws.keyring.get(ref, str(path)))
    path.chmod(0o644)
    path.write_bytes(data)


def quick_workspace(ws: Workspace) -> Workspace:
    """The workspace with one cheap model family and three folds: for tests about rows and records,
    not about which family wins (cross-validating the shipped three takes seconds per retrain)."""
    training = dataclasses.replace(ws.config.training, families={"ridge": ws.config.training.families["ridge"]},
                                   cv_folds=3)
    return dataclasses.replace(ws, config=dataclasses.replace(ws.config, training=training))


def retrain_through_stages(ws: Workspace, run: Run, margin: float | None = None) -> dict[str, Any]:
    """Every stage in the order the DAG runs them; the candidate trains on the clean snapshot."""
    snapshot = stages.ingest_snapshot(ws, run)
    assert stages.has_new_data(ws, run, snapshot["snapshot_hash"])
    checked = stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])
    candidate = stages.train_candidate(ws, run, checked["clean_snapshot_hash"])
    evaluation = stages.evaluate_candidate(ws, run, candidate["version"], margin)
    outcome = stages.promote_candidate(ws, run, actor="test")
    return {"snapshot": snapshot, "checked": checked, "clean_snapshot_hash": checked["clean_snapshot_hash"],
            "candidate": candidate, "evaluation": evaluation, "outcome": outcome}


def promote_demo_champion(ws: Workspace,
                          retrain: Callable[[Workspace, Run], dict[str, Any]] | None = None
                          ) -> dict[str, Any]:
    """The demo study loaded and retrained up to DEMO_WATERMARK (through every stage, or `retrain`):
    version 1 is the champion."""
    demo.seed_demo(ws.engine)
    result = (retrain or retrain_through_stages)(ws, make_run("first", DEMO_WATERMARK))
    assert result["outcome"]["status"] == "promoted"
    return result


def champion_state(ws: Workspace) -> dict[str, Any]:
    """Everything that makes up the champion, to compare before and after a run."""
    with ws.engine.connect() as conn:
        model = records.current_champion(conn, ws.model)
    assert model is not None
    return {
        "champion": fetch(ws, "SELECT * FROM pipeline.champion"),
        "model": model,
        "events": fetch(ws, "SELECT * FROM pipeline.promotion_events ORDER BY event_id"),
        "artifact": stored_bytes(ws, ws.settings.artifact_dir / model["artifact_path"]),
    }


def wait_until(condition: Callable[[], Any], what: str, deadline: float = 180.0) -> Any:
    """Poll `condition` until it gives something truthy (returned); a generous deadline, for a loaded machine."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
