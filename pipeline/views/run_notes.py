"""The outcome of a retrain run in one line: the note Airflow shows beside the run.

`outcome_note` is the wording, from plain data; `note_of_run` reads that data from the registry.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from pipeline.registry import records

MAX_REASON = 160


def short_reason(reason: str | None) -> str:
    """A recorded reason cut to what an operator reads at a glance: the problems of a lost challenge, the first
    line of anything else, without the holdout footnote."""
    text = re.sub(r"\s*\[compared on .*?\]$", "", (reason or "").strip()).splitlines()[0] if reason else ""
    lost = re.match(r"does not beat the champion \((.*?)\):", text)
    if lost:
        text = lost.group(1)
    for prefix in ("champion kept: ", "dry run: "):
        text = text.removeprefix(prefix)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1].rstrip() + "…"


def _rmse(metrics: dict[str, Any] | None) -> str | None:
    value = (metrics or {}).get("rmse")
    return f"{value:.1f}" if isinstance(value, int | float) else None


def _verdict(run: dict[str, Any], evaluation: dict[str, Any] | None, promote_word: str) -> str:
    """'<promote_word> v4: RMSE 46.9 → 45.1' or 'kept v1: <why> (candidate v4)' for a recorded decision."""
    evaluation = evaluation or {}
    candidate, champion = evaluation.get("candidate_version"), evaluation.get("champion_version")
    new, old = _rmse(evaluation.get("candidate_metrics")), _rmse(evaluation.get("champion_metrics"))
    if evaluation.get("decision") == "promote":
        change = f"RMSE {old} → {new}" if old and new else (f"RMSE {new} (first champion)" if new else "")
        return f"{promote_word} v{candidate}" + (f": {change}" if change else "")
    kept = f"kept v{champion}" if champion is not None else "no champion"
    why = short_reason(evaluation.get("reason") or run.get("reason"))
    return f"{kept}: {why}" + (f" (candidate v{candidate})" if candidate is not None else "")


def _text(run: dict[str, Any], evaluation: dict[str, Any] | None) -> str:
    status, reason = run.get("status"), run.get("reason")
    params = run.get("params") or {}
    if status == "skipped":
        return "skipped: no new data" if (reason or "").startswith("no new data") else f"skipped: {short_reason(reason)}"
    if status == "validation_failed":
        return f"validation failed: {short_reason(reason)}"
    if status == "failed":
        return f"failed: {short_reason(reason)}"
    if status == "running":
        return "no outcome recorded (the run is still marked running)"
    if params.get("as_of") or params.get("dry_run"):
        return _verdict(run, evaluation, "would promote")
    if status == "kept" and evaluation and evaluation.get("decision") == "promote":  # refused at promotion
        return f"kept v{evaluation.get('champion_version')}: {short_reason(reason)}"
    return _verdict(run, evaluation, "promoted")


def outcome_note(run: dict[str, Any] | None, evaluation: dict[str, Any] | None) -> str:
    """The note of a finished retrain run, from its `pipeline.training_runs` row (status, reason, params) and its
    evaluation (None when it never got that far)."""
    if run is None:
        return "failed before any stage ran: see the task log"
    params, text = run.get("params") or {}, _text(run, evaluation)
    if params.get("as_of"):
        return f"as of {_when(params['as_of'])}: {text}, never promoted"
    return f"DRY RUN: {text}" if params.get("dry_run") else text


def _when(stamp: str | datetime) -> str:
    when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else stamp
    return f"{when:%Y-%m-%d %H:%M %Z}".strip()


def note_of_run(conn: Connection, run_id: str) -> str:
    """The note of a run, read from the registry."""
    return outcome_note(records.get_run(conn, run_id), records.evaluation_of_run(conn, run_id))
