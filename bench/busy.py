"""A retrain with a busy process beside it: what a task meets on a worker whose other slots are working.

The measured retrain's five stages run again, each in a fresh process as before, for a run of their own
on the same rows, while `python -c 'while 1: pass'` keeps one core busy. Its seconds are compared with
the quiet retrain's (the 'retrain (whole DAG)' row of the same size): OpenMP threads spinning on the busy
core made the train stage 10x slower and more; sized pools with passive waits (pipeline.runtime.threads) keep the
retrain within 2x.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench import report

STEP = "retrain with a busy process beside it"
TARGET = 2.0  # its seconds over the quiet retrain's, at most


@contextmanager
def busy_process() -> Iterator[int]:
    """One Python process spinning on a core until the block ends; yields its pid."""
    spinner = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        yield spinner.pid
    finally:
        spinner.kill()
        spinner.wait()


def measure(run_stage: Callable[..., dict[str, Any]], base: dict[str, Any], label: str, rows: int,
            quiet_seconds: float) -> dict[str, Any]:
    """The retrain's stages for a run of their own, a busy process beside them; the step's row, whose floor
    is the quiet retrain (vs floor: quiet seconds over busy seconds)."""
    spec, tag = {**base, "run_id": f"{base['run_id']}-busy"}, f"{label} busy:"
    with busy_process():
        snapshot = run_stage(spec, tag, "ingest_snapshot")
        checked = run_stage(spec, tag, "validate_snapshot", snapshot_hash=snapshot["result"]["snapshot_hash"])
        trained = run_stage(spec, tag, "train_candidate", clean_snapshot_hash=checked["result"]["clean_snapshot_hash"])
        evaluated = run_stage(spec, tag, "evaluate_candidate", version=trained["result"]["version"])
        promoted = run_stage(spec, tag, "promote_candidate")
    measured = {"ingest_snapshot": snapshot, "validate_snapshot": checked, "train_candidate": trained,
                "evaluate_candidate": evaluated, "promote_candidate": promoted}
    seconds = sum(m["seconds"] for m in measured.values())
    return report.step(STEP, seconds, rows, quiet_seconds, max(m["peak_mb"] for m in measured.values()),
                       vs_quiet=seconds / quiet_seconds, stages={name: m["seconds"] for name, m in measured.items()})


def verdicts(sizes: list[dict[str, Any]]) -> list[str]:
    """The busy retrain's seconds against the quiet one's, per size measured."""
    lines = []
    for size, step in report.steps_named(sizes, STEP):
        lines.append(f"retrain with a busy process beside it at {report.fmt(size['rows'], 'rows')}: "
                     f"{step['seconds']:.1f} s, {step['vs_quiet']:.2f}x the quiet retrain's {step['floor_seconds']:.1f} s "
                     f"(train_candidate {step['stages']['train_candidate']:.1f} s) (target <= {TARGET}x) "
                     f"{'OK' if step['vs_quiet'] <= TARGET else 'MISSED'}")
    return lines
