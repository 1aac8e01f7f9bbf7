"""Erasure of one patient from many snapshots: time and bytes rewritten (issue 30).

    .venv/bin/python -m bench.erasure [--snapshots 30] [--rows 100000]

Builds `--snapshots` raw snapshots of `--rows` generated patient rows each (windows over one id range, so every
snapshot holds the erased patient and each has its own hash) in a scratch database and artifact folder, then
erases one patient with `pipeline.erasure.erase`, as `python -m pipeline erase` does. Prints the time, the bytes
rewritten and the bytes of the store before, and checks the patient is in none of the snapshots afterwards.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from bench.measure import scratch
from pipeline import erasure
from pipeline.data import ingest
from pipeline.store import artifacts
from pipeline.workspace import Workspace

STEP = 1000  # each snapshot's window of ids starts this much after the one before


def patient_table(first_id: int, rows: int, seed: int) -> pa.Table:
    """`rows` generated patient rows with ids from `first_id`, in the source table's columns and types."""
    rng = np.random.default_rng(seed)
    ids = np.arange(first_id, first_id + rows, dtype="int64")
    days = rng.integers(-20000, -7000, rows).astype("int32")
    recorded = (np.datetime64("2026-01-01T00:00:00", "us") + ids.astype("timedelta64[s]")).astype("int64")
    numbers = {name: rng.normal(mean, sd, rows).round(1) for name, mean, sd in
               (("bmi", 26, 4), ("bp_mean", 94, 14), ("tc", 189, 34), ("ldl", 115, 30), ("hdl", 50, 13),
                ("tch", 4, 1.3), ("ltg", 4.6, 0.5), ("glucose", 91, 11), ("progression_12m", 152, 77))}
    return pa.table({"patient_id": ids, "birth_date": pa.array(days, pa.date32()),
                     "visit_date": pa.array(days + 20000, pa.date32()),
                     "sex": pa.array(np.where(rng.random(rows) < 0.5, "F", "M")),
                     **{k: pa.array(v, pa.float64()) for k, v in numbers.items()},
                     "recorded_at": pa.array(recorded, pa.timestamp("us", "UTC")),
                     "label_recorded_at": pa.array(recorded, pa.timestamp("us", "UTC"))})


def build(ws: Workspace, snapshots: int, rows: int) -> int:
    """Store and register the snapshots; their total size in bytes."""
    total = 0
    for i in range(snapshots):
        data = ingest.snapshot_table_bytes(patient_table(1 + i * STEP, rows, seed=i))
        digest, path = artifacts.store_bytes(ws.store, "snapshots", data, ".parquet")
        total += len(data)
        with ws.engine.begin() as conn:
            conn.execute(sa.text("""
                INSERT INTO pipeline.snapshots (snapshot_hash, source_table, query, watermark, row_count, path,
                                                first_run_id)
                VALUES (:h, 'public.patient_records', 'bench', :wm, :n, :p, :run)
            """), {"h": digest, "wm": datetime(2026, 7, 1, tzinfo=UTC), "n": rows, "p": ws.relative(path),
                   "run": f"bench-{i}"})
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshots", type=int, default=30)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    if args.rows <= (args.snapshots - 1) * STEP:
        parser.error(f"--rows must be over {(args.snapshots - 1) * STEP} so that every snapshot holds the patient")
    with scratch("erasure") as (base, url, folder):
        ws = Workspace.open(replace(base, database_url=url, artifact_dir=folder / "artifacts",
                                    erasure_key_file=folder / "erasure.key", artifact_store="local"))
        stored = build(ws, args.snapshots, args.rows)
        patient = str(args.snapshots * STEP)  # inside every window
        started = time.perf_counter()
        outcome = erasure.erase(ws, patient, "bench", "bench")
        seconds = time.perf_counter() - started
        report = erasure.erasure_report(ws, patient)
        assert report["erased"] and len(outcome["snapshots"]) == args.snapshots, report
        print(f"erasure of one patient from {args.snapshots} snapshots of {args.rows} rows "
              f"({stored / 1e6:.1f} MB stored): {seconds:.2f} s, {outcome['bytes_rewritten'] / 1e6:.1f} MB rewritten "
              f"({outcome['bytes_rewritten'] / stored:.2f}x the store); erasure-report: "
              f"{sum(p['searched'] for p in report['places'] if p['place'].startswith('snapshot'))} files searched, "
              f"{report['found']} found")
        ws.engine.dispose()


if __name__ == "__main__":
    main()
