"""Ingest on real PostgreSQL: which rows a snapshot holds, and that its hash names its bytes."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pipeline import stages
from pipeline.data import demo, ingest
from pipeline.registry.runs import Run
from pipeline.workspace import Workspace
from tests.integration.stage_runs import DEMO_WATERMARK, LATER_WATERMARK, stored_bytes


def snapshot(ws: Workspace, watermark: datetime) -> tuple[ingest.Snapshot, pd.DataFrame]:
    taken, table = ingest.take_snapshot(ws.engine, ws.config.dataset, watermark, ws.settings.artifact_dir)
    return taken, ingest.arrow_to_frame(table)


def recorded_at(ws: Workspace, patient_id: int) -> datetime:
    with ws.engine.connect() as conn:
        return conn.scalar(sa.text("SELECT recorded_at FROM public.patient_records WHERE patient_id = :i"),
                           {"i": patient_id})


def test_same_rows_give_the_same_snapshot(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)

    first, first_frame = snapshot(ws, DEMO_WATERMARK)
    second, second_frame = snapshot(ws, DEMO_WATERMARK)

    assert first.snapshot_hash == second.snapshot_hash
    assert first.row_count == second.row_count == 442
    path = Path(first.path)
    assert path.name == f"{first.snapshot_hash}.parquet"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first.snapshot_hash
    pd.testing.assert_frame_equal(first_frame, second_frame)
    pd.testing.assert_frame_equal(pd.read_parquet(path), first_frame)


def test_watermark_excludes_later_rows(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    # Demo ids grow with recorded_at, so a watermark at patient 100's row keeps exactly ids 1..100.
    watermark = recorded_at(ws, 100)

    snap, frame = snapshot(ws, watermark)

    assert snap.row_count == len(frame) == 100
    assert sorted(frame["patient_id"]) == list(range(1, 101))
    assert frame["recorded_at"].max() <= pd.Timestamp(watermark)
    assert frame["recorded_at"].max() == pd.Timestamp(watermark)  # the watermark itself is included
    assert snap.watermark == watermark.isoformat()


def test_unlabelled_rows_are_excluded(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    unlabelled = [5, 50, 442]
    with ws.engine.begin() as conn:
        conn.execute(sa.text("UPDATE public.patient_records SET progression_12m = NULL WHERE patient_id = ANY(:ids)"),
                     {"ids": unlabelled})

    snap, frame = snapshot(ws, DEMO_WATERMARK)

    assert snap.row_count == 442 - len(unlabelled)
    assert not set(unlabelled) & set(frame["patient_id"])
    assert frame["progression_12m"].notna().all()
    # Left out of training, but counted and frozen beside the snapshot for validation to check.
    assert snap.unlabelled_rows == len(unlabelled)
    waiting = pd.read_parquet(str(snap.unlabelled_path))
    assert hashlib.sha256(Path(str(snap.unlabelled_path)).read_bytes()).hexdigest() == snap.unlabelled_hash
    assert list(waiting["patient_id"]) == unlabelled and waiting["progression_12m"].isna().all()


def test_a_label_filled_in_between_is_in_exactly_one_of_the_two(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    with ws.engine.begin() as conn:
        conn.execute(sa.text("UPDATE public.patient_records SET progression_12m = NULL WHERE patient_id <= 40"))
    snap, frame = snapshot(ws, DEMO_WATERMARK)
    waiting = pd.read_parquet(str(snap.unlabelled_path))
    assert snap.row_count + snap.unlabelled_rows == 442
    assert set(frame["patient_id"]).isdisjoint(waiting["patient_id"])


def test_arrivals_change_the_snapshot(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    before, _ = snapshot(ws, LATER_WATERMARK)

    arrivals = demo.simulate_arrivals(ws.engine, rows=12, seed=5)
    after, frame = snapshot(ws, LATER_WATERMARK)

    assert after.snapshot_hash != before.snapshot_hash
    assert after.row_count == before.row_count + len(arrivals) == 442 + 12
    assert set(arrivals) <= set(frame["patient_id"])
    assert Path(before.path).is_file() and Path(after.path).is_file()  # the older snapshot is kept


def test_missing_contract_column_is_named(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    with ws.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE public.patient_records RENAME COLUMN bmi TO bmi_kg"))

    with pytest.raises(ingest.SchemaError, match=r"lacks contract column\(s\) \['bmi'\]"):
        snapshot(ws, DEMO_WATERMARK)
    assert not (ws.settings.artifact_dir / "snapshots").exists()


def test_missing_table_is_named(ws: Workspace) -> None:
    contract = dataclasses.replace(ws.config.dataset, table="public.no_such_records")

    with pytest.raises(ingest.SchemaError, match=r"public\.no_such_records does not exist"):
        ingest.take_snapshot(ws.engine, contract, DEMO_WATERMARK, ws.settings.artifact_dir)


def test_ingest_stage_records_snapshot_and_run(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    run = Run(run_id="ingest-1", watermark=DEMO_WATERMARK, triggered_by="test")

    result = stages.ingest_snapshot(ws, run, {"margin": 0.05})

    with ws.engine.connect() as conn:
        snapshots = conn.execute(sa.text("SELECT * FROM pipeline.snapshots")).mappings().all()
        runs = conn.execute(sa.text("SELECT * FROM pipeline.training_runs")).mappings().all()
    assert len(snapshots) == 1 and len(runs) == 1
    row, run_row = snapshots[0], runs[0]
    assert row["snapshot_hash"] == result["snapshot_hash"]
    assert row["row_count"] == result["row_count"] == 442
    assert row["watermark"] == DEMO_WATERMARK
    assert row["query"] == result["query"]
    assert "progression_12m IS NOT NULL" in row["query"] and "2026-07-01 00:00:00+00:00" in row["query"]
    assert row["source_table"] == "public.patient_records"
    assert row["first_run_id"] == "ingest-1"
    assert hashlib.sha256(stored_bytes(ws, ws.settings.artifact_dir / row["path"])).hexdigest() == row["snapshot_hash"]
    assert run_row["run_id"] == "ingest-1"
    assert run_row["triggered_by"] == "test"
    assert run_row["watermark"] == DEMO_WATERMARK
    assert run_row["status"] == "running"
    assert run_row["snapshot_hash"] == result["snapshot_hash"]
    assert run_row["params"] == {"margin": 0.05}


def test_ingest_stage_twice_is_idempotent(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    run = Run(run_id="ingest-1", watermark=DEMO_WATERMARK, triggered_by="test")

    first = stages.ingest_snapshot(ws, run)
    second = stages.ingest_snapshot(ws, run)

    assert second == first
    with ws.engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM pipeline.snapshots")) == 1
        assert conn.scalar(sa.text("SELECT count(*) FROM pipeline.training_runs")) == 1
        assert conn.scalar(sa.text("SELECT snapshot_hash FROM pipeline.training_runs")) == first["snapshot_hash"]
    assert list((ws.settings.artifact_dir / "snapshots").glob("*.parquet")) == [Path(first["path"])]
