"""Ingest and validate, encrypted vs plain, in the same run (issue 30's target: encrypted <= 1.15x plain at 10^6 rows).

    .venv/bin/python -m bench.encryption [--rows 100000] [--rounds 3]

Loads `--rows` generated patient rows (a few faulty, so the quarantine and its sealed rows are exercised) into a
scratch database, then runs `stages.ingest_snapshot` + `stages.validate_snapshot` (what the retrain DAG's first two
tasks run) `--rounds` times with `security.encrypt_at_rest` true and false, alternating which goes first, each
round into a fresh artifact folder (so every file is written, never found already stored), after one untimed
warm-up round. Prints each mode's
fastest round and the ratio encrypted / plain. The machine may be busy: only the ratio within one run means much.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.measure import scratch
from pipeline import stages
from pipeline.contract.settings import Settings
from pipeline.data import demo
from pipeline.registry.runs import Run
from pipeline.workspace import Workspace

WATERMARK = datetime(2100, 1, 1, tzinfo=UTC)  # after every generated row


def workspace(base: Settings, url: str, folder: Path, encrypt: bool) -> Workspace:
    """A workspace on the scratch database with its own artifact folder, encrypting or not."""
    ws = Workspace.open(dataclasses.replace(base, database_url=url, artifact_dir=folder / "artifacts",
                                            erasure_key_file=folder.parent / "erasure.key",
                                            key_file=folder.parent / "master.key", artifact_store="local"))
    security = dataclasses.replace(ws.config.security, encrypt_at_rest=encrypt)
    return dataclasses.replace(ws, config=dataclasses.replace(ws.config, security=security))


def ingest_and_validate(ws: Workspace, run_id: str) -> float:
    """Seconds for one ingest + validate."""
    run = Run(run_id=run_id, watermark=WATERMARK, triggered_by="bench")
    started = time.perf_counter()
    snapshot = stages.ingest_snapshot(ws, run)
    stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with scratch("encryption", lambda engine: demo.simulate_arrivals(
            engine, rows=args.rows, seed=7, bad_rows=max(args.rows // 1000, 1))) as (base, url, folder):
        warm = workspace(base, url, folder / "warm-up", True)  # imports, GX, first connections: not timed
        ingest_and_validate(warm, "bench-warm-up")
        warm.engine.dispose()
        times: dict[bool, list[float]] = {True: [], False: []}
        for i in range(args.rounds):
            for encrypt in ((True, False) if i % 2 else (False, True)):
                ws = workspace(base, url, folder / f"{'sealed' if encrypt else 'plain'}-{i}", encrypt)
                times[encrypt].append(ingest_and_validate(ws, f"bench-{'sealed' if encrypt else 'plain'}-{i}"))
                ws.engine.dispose()
        sealed, plain = min(times[True]), min(times[False])
        print(f"ingest + validate of {args.rows} rows, fastest of {args.rounds} rounds: encrypted {sealed:.2f} s, "
              f"plain {plain:.2f} s: {sealed / plain:.2f}x (every round: encrypted "
              f"{', '.join(f'{t:.2f}' for t in times[True])}; plain {', '.join(f'{t:.2f}' for t in times[False])})")


if __name__ == "__main__":
    main()
