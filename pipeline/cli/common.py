"""What every command group shares: argument types, output for people and for scripts, and the run a command works on."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipeline.contract import params
from pipeline.registry import records
from pipeline.registry.runs import Run
from pipeline.workspace import Workspace


class UnknownTarget(LookupError):
    """A run id or version given on the command line names nothing the command can work on; nothing ran."""


def as_json(value: Any) -> str:
    """`--json` output: one strict JSON document. A number that is not finite (NaN, infinity), which JSON cannot
    hold, is null; a document that is an object then says where and what each was under `not_finite`."""
    notes: dict[str, str] = {}
    document = finite_only(value, "$", notes)
    if notes and isinstance(document, dict):
        document = {**document, "not_finite": notes}
    return json.dumps(document, indent=2, default=str, allow_nan=False)


def finite_only(value: Any, path: str, notes: dict[str, str]) -> Any:
    """`value` with every NaN or infinite number made None, its JSON path and reason noted in `notes`."""
    if isinstance(value, dict):
        return {k: finite_only(v, f"{path}.{k}", notes) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_only(v, f"{path}[{i}]", notes) for i, v in enumerate(value)]
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        notes[path] = f"{float(value)} is not a finite number, so null"
        return None
    if isinstance(value, np.floating):
        return float(value)
    return value


def aligned(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Rows of cells (as many in each) as lines, every column but the last padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)] if rows else []
    return [(indent + "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])).rstrip()
            for row in rows]


def counts(by_key: dict[str, Any] | None) -> str:
    """`{'out_of_range': 1, 'unknown_category': 2}` as `out_of_range 1, unknown_category 2` (sorted), or `none`."""
    return ", ".join(f"{k} {v}" for k, v in sorted((by_key or {}).items())) or "none"


def when(stamp: datetime | None) -> str:
    return "-" if stamp is None else f"{stamp:%Y-%m-%d %H:%M:%S %Z}".strip()


def watermark_arg(text: str) -> datetime:
    """--watermark: an ISO timestamp (UTC unless it says otherwise), not in the future (as the `as_of` param)."""
    try:
        return params.parse_timestamp(text, datetime.now(UTC))
    except params.ParamsRefused as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def margin_arg(text: str) -> float:
    """--margin: checked by the retrain DAG's own `margin` param definition (`pipeline.contract.params`), never clamped."""
    try:
        return params.parse_number("margin", text)
    except params.ParamsRefused as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_arg(text: str) -> int:
    """A count of at least 1."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return count


def run_of(args: argparse.Namespace) -> Run:
    """The run a command works on; a new id is kept on `args`, so a failure can be recorded against it."""
    args.run_id = args.run_id or f"cli__{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    return Run(run_id=args.run_id, watermark=args.watermark or datetime.now(UTC), triggered_by="cli")


def shifts_of(pairs: list[str], flag: str = "--drift", example: str = "bmi=+4") -> dict[str, float]:
    """Parse `column=+shift` pairs."""
    drift = {}
    for pair in pairs:
        column, sep, shift = pair.partition("=")
        if not sep:
            raise SystemExit(f"{flag} expects column=shift (e.g. {example}), got '{pair}'")
        drift[column.strip()] = float(shift)
    return drift


def known_run(ws: Workspace, run_id: str) -> dict[str, Any]:
    """The run `run_id` names, if it is a run of this model (an ingest started it); else UnknownTarget."""
    with ws.engine.connect() as conn:
        row = records.get_run(conn, run_id)
    if row is None:
        raise UnknownTarget(f"unknown run id {run_id!r}: no run has it (`python -m pipeline status --runs 50` lists "
                            "the latest; a run starts at its ingest)")
    if row["model"] != ws.model:
        raise UnknownTarget(f"run {run_id!r} is a run of model {row['model']!r}, not of {ws.model!r} (--config)")
    return row


def registered_version(ws: Workspace, version: int) -> dict[str, Any]:
    """The registered version of this model, else UnknownTarget naming it."""
    with ws.engine.connect() as conn:
        try:
            return records.get_model(conn, version, ws.model)
        except LookupError as exc:
            raise UnknownTarget(str(exc)) from None


def continued_run(ws: Workspace, args: argparse.Namespace) -> Run:
    """The run a later stage continues: one an ingest started, when --run-id names it (else a new one)."""
    if args.run_id:
        known_run(ws, args.run_id)
    return run_of(args)


def metrics_line(metrics: dict[str, Any] | None) -> str:
    """Holdout metrics as `RMSE 54.05  MAE 42.42  R² 0.549  on 88 rows`, or `-` when there are none."""
    if not metrics:
        return "-"
    return (f"RMSE {metrics.get('rmse', float('nan')):.2f}  MAE {metrics.get('mae', float('nan')):.2f}  "
            f"R² {metrics.get('r2', float('nan')):.3f}  on {metrics.get('n')} rows")


def operator_name() -> str:
    return f"cli:{os.environ.get('USER', 'operator')}"


def text_champion_changed(result: dict[str, Any]) -> str:
    replaced = "" if result["replaced"] is None else f", replacing version {result['replaced']}"
    lines = [f"version {result['champion']} is champion{replaced} (run {result['run_id']}): {result['reason']}"]
    if result["forced_past"]:
        lines.append(f"  forced past its failed checks: {'; '.join(result['forced_past'])}")
    if evidence := result.get("evidence"):
        lines.append(f"  live evidence: {evidence['shadow_forecasts']} shadow forecasts in {evidence['shadow_runs']} "
                     f"runs, {evidence['shadow_forecasts_with_outcome']} with their outcome known")
    return "\n".join(lines)


def command_adder(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> Callable[..., argparse.ArgumentParser]:
    """`add(name, handler, help_text, run=False, text=None, json_help="")`: adds a command to `sub`. With
    `text` (its result as lines for people) the command also takes --json; with `run`, --run-id and --watermark."""

    def add(name: str, handler: Any, help_text: str, run: bool = False, text: Any = None,
            json_help: str = "") -> argparse.ArgumentParser:
        """A command; with `text` (its result as lines for people) it also takes --json (the result as JSON)."""
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler, text=text, json=False)
        if text is not None:
            p.add_argument("--json", action="store_true",
                           help=f"print one JSON document instead of text{': ' if json_help else ''}{json_help}")
        if run:
            p.add_argument("--run-id", help="the run to record under (the DAG passes its run id)")
            p.add_argument("--watermark", type=watermark_arg,
                           help="ISO timestamp: read rows recorded up to here (default now; never in the future)")
        return p

    return add
