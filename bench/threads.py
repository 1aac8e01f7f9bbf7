"""The threads of a fit, chosen by its size, against one and two threads for every fit, quiet and busy.

`pipeline.runtime.threads.for_fit` gives a fit on fewer than ONE_THREAD_BELOW_ROWS rows one thread (every CV
fold of the search) and the task's pool from there (the final fit of a large snapshot): on a quiet VM and a
busy one alike, OpenMP's threads then never wait for a core another fold or process holds. The train stage
runs again, each time in a fresh process and as a run of its own on the same clean snapshot, with
`training.n_jobs` set to 1 and to 2 (every fit on that many threads), quietly and with
`python -c 'while 1: pass'` beside it; the measured train stage (the size's own choice) and the busy retrain's
train stage are the choice's rows. Target: the choice within 1.2x of the better of one and two threads, quiet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench import busy, report

STEP = "train_candidate, threads chosen by size"
FORCED = (1, 2)  # training.n_jobs of the forced runs: every fit on this many threads
TARGET = 1.2  # the choice's seconds over the better forced run's, at most (quiet)


def config_with_threads(config_path: Path, n_jobs: int) -> Path:
    """The bench's config with `training.n_jobs: n_jobs`, beside it."""
    raw = yaml.safe_load(config_path.read_text())
    raw["training"]["n_jobs"] = n_jobs
    target = config_path.with_name(f"{config_path.stem}-n_jobs-{n_jobs}.yaml")
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target


def measure(run_stage: Callable[..., dict[str, Any]], base: dict[str, Any], label: str, rows: int,
            clean_snapshot_hash: str, chosen: float, chosen_busy: float) -> dict[str, Any]:
    """Train with each forced thread count, quiet then busy; the step's row (its seconds: the choice's, quiet;
    its floor: the better forced run, quiet)."""
    forced: dict[str, dict[int, float]] = {"quiet": {}, "busy": {}}
    for setting in ("quiet", "busy"):
        for n_jobs in FORCED:
            spec = {**base, "config_path": str(config_with_threads(Path(base["config_path"]), n_jobs)),
                    "run_id": f"{base['run_id']}-threads-{n_jobs}-{setting}"}
            tag = f"{label} {setting}, every fit on {n_jobs} thread{'s' if n_jobs > 1 else ''}:"
            with busy.busy_process() if setting == "busy" else contextlib.nullcontext():
                measured = run_stage(spec, tag, "train_candidate", clean_snapshot_hash=clean_snapshot_hash)
            forced[setting][n_jobs] = measured["seconds"]
    better = min(forced["quiet"].values())
    return report.step(STEP, chosen, rows, better, None, chosen_busy=chosen_busy,
                       forced={setting: {str(n): s for n, s in by.items()} for setting, by in forced.items()},
                       vs_better=chosen / better)


def verdicts(sizes: list[dict[str, Any]]) -> list[str]:
    """The choice against one and two threads, per size measured."""
    lines = []
    for size, step in report.steps_named(sizes, STEP):
        quiet, busy_ = step["forced"]["quiet"], step["forced"]["busy"]
        lines.append(f"train threads at {report.fmt(size['rows'], 'rows')}: chosen by size {step['seconds']:.2f} s, "
                     f"1 thread {quiet['1']:.2f} s, 2 threads {quiet['2']:.2f} s quiet; busy: chosen "
                     f"{step['chosen_busy']:.2f} s, 1 thread {busy_['1']:.2f} s, 2 threads {busy_['2']:.2f} s; the "
                     f"choice {step['vs_better']:.2f}x the better of 1 and 2 threads quiet (target <= {TARGET}x) "
                     f"{'OK' if step['vs_better'] <= TARGET else 'MISSED'}")
    return lines
