"""The bench's results: one row per (size, step), printed as a table, saved as JSON and a plot."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STAGES = ("ingest_snapshot", "validate_snapshot", "train_candidate", "evaluate_candidate", "promote_candidate")
DAG_ROW = "retrain (whole DAG)"
FIRST_ROW = "first retrain (one process)"
READ_ROW = "  read rows -> Arrow"
COLUMNS = ("rows", "step", "seconds", "rows/s", "floor s", "vs floor", "peak MB", "last run s", "last vs floor",
           "last run MB")


def step(name: str, seconds: float, rows: int, floor: float | None = None, peak_mb: float | None = None,
         **extra: Any) -> dict[str, Any]:
    """One measured step; `vs_floor` is the floor's seconds over the step's (1.0: as fast as the floor)."""
    return {"step": name, "seconds": seconds, "rows": rows, "rows_per_second": rows / seconds if seconds else None,
            "floor_seconds": floor, "vs_floor": floor / seconds if floor and seconds else None,
            "peak_mb": peak_mb, **extra}


def steps_named(sizes: list[dict[str, Any]], name: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(size, step) for each size that measured a step of this name."""
    for size in sizes:
        step = next((s for s in size["steps"] if s["step"] == name), None)
        if step is not None:
            yield size, step


def whole_dag(steps: list[dict[str, Any]], rows: int, floor: float) -> dict[str, Any]:
    """The DAG's work: its stages' seconds summed; its peak is the largest stage's (one process per task)."""
    stages = [s for s in steps if s["step"] in STAGES]
    return step(DAG_ROW, sum(s["seconds"] for s in stages), rows, floor, max(s["peak_mb"] for s in stages))


def fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "rows":
        return f"10^{round(math.log10(value))}" if value and math.log10(value).is_integer() else f"{value:,}"
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "mb":
        return f"{value:,.0f}"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def table(sizes: list[dict[str, Any]], previous: dict[tuple[int, str], float],
          previous_peak: dict[tuple[int, str], float] | None = None,
          previous_ratio: dict[tuple[int, str], float] | None = None) -> str:
    """A fixed-width table of every size's steps, with the previous run's seconds, ratio to its floor and peak MB
    beside."""
    lines, peaks, ratios = [], previous_peak or {}, previous_ratio or {}
    for size in sizes:
        for s in size["steps"]:
            key = (size["rows"], s["step"])
            lines.append([fmt(size["rows"], "rows"), s["step"], fmt(s["seconds"], "s"),
                          fmt(s["rows_per_second"], "rate"), fmt(s["floor_seconds"], "s"),
                          fmt(s["vs_floor"], "ratio"), fmt(s["peak_mb"], "mb"),
                          fmt(previous.get(key), "s"), fmt(ratios.get(key), "ratio"), fmt(peaks.get(key), "mb")])
        for name, floor in size["floors"].items():
            key = (size["rows"], f"floor: {name}")
            lines.append([fmt(size["rows"], "rows"), f"  floor: {name}", fmt(floor["seconds"], "s"),
                          fmt(floor.get("rows", size["snapshot_rows"]) / floor["seconds"], "rate"), "", "",
                          fmt(floor.get("peak_mb"), "mb"), fmt(previous.get(key), "s"), "", fmt(peaks.get(key), "mb")])
    widths = [max(len(str(c)) for c in col) for col in zip(COLUMNS, *lines, strict=False)]
    render = ["  ".join(str(c).rjust(w) if i != 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                      strict=True)))
              for r in [list(COLUMNS), *lines]]
    return "\n".join([render[0], "-" * len(render[0]), *render[1:]])


def _earlier(path: Path, field: str) -> dict[tuple[int, str], float]:
    """`field` per (rows, step) of an earlier result file, for the steps and floors that have it."""
    if not path.is_file():
        return {}
    values = {}
    for size in json.loads(path.read_text()).get("sizes", []):
        for s in size["steps"]:
            if s.get(field) is not None:
                values[(size["rows"], s["step"])] = s[field]
        for name, floor in size.get("floors", {}).items():
            if floor.get(field) is not None:
                values[(size["rows"], f"floor: {name}")] = floor[field]
    return values


def previous_seconds(path: Path) -> tuple[dict[tuple[int, str], float], str | None]:
    """Seconds per (rows, step) of an earlier result file, and the commit it measured."""
    commit = json.loads(path.read_text()).get("commit") if path.is_file() else None
    return _earlier(path, "seconds"), commit


def previous_peaks(path: Path) -> dict[tuple[int, str], float]:
    """Peak MB per (rows, step) of an earlier result file (steps and floors that measured one)."""
    return _earlier(path, "peak_mb")


def previous_ratios(path: Path) -> dict[tuple[int, str], float]:
    """Each step's ratio to its floor in an earlier result file (the steps that have a floor)."""
    return _earlier(path, "vs_floor")


def plot(sizes: list[dict[str, Any]], path: Path) -> None:
    """Seconds against rows, log-log, one line per stage and floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 6))
    names = [s["step"] for s in sizes[0]["steps"]] if sizes else []
    for name in names:
        points = [(size["rows"], s["seconds"]) for size in sizes for s in size["steps"] if s["step"] == name]
        axes.plot(*zip(*points, strict=True), marker="o", label=name.strip(),
                  linewidth=2.5 if name == DAG_ROW else 1.5)
    for name in sizes[0]["floors"] if sizes else []:
        points = [(size["rows"], size["floors"][name]["seconds"]) for size in sizes if name in size["floors"]]
        axes.plot(*zip(*points, strict=True), marker="x", linestyle="--", label=f"floor: {name}")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("rows in the source table")
    axes.set_ylabel("seconds")
    axes.set_title("Cost of a retrain against rows")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
