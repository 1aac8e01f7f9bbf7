"""The outcome of a DAG run in operator words: the note Airflow shows beside the run.

`outcome_note` is a retrain's wording, from plain data, and `note_of_run` reads that data from the registry.
`score_note`, `drift_note`, `performance_note`, `champion_note` and `failure_note` word the other DAGs'
outcomes from what their task returned; the task records them (`pipeline.run_notes`) and the `run_notes`
plugin copies them into Airflow when the run ends. A note never says more than Airflow keeps (`MAX_NOTE`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from pipeline.registry import records

MAX_REASON = 160
MAX_NOTE = 1000  # Airflow's dag_run_note.content is a varchar(1000)


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
        return validation_note(reason)
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


def validation_note(reason: str | None) -> str:
    """'validation failed: <why>: <expectation> on <column> (<n> rows); ...', every failed expectation listed,
    compactly (the row ids are in the quality report), within `MAX_NOTE`."""
    lines = (reason or "").strip().splitlines()
    headline = lines[0].rstrip(":") if lines else "no reason recorded"
    failed = []
    for line in lines[1:]:
        found = re.match(r"\s*- (\S+) on (\S+?)(?:: (\d+) row\(s\))?(?:[:,]|$)", line)
        if found:
            expectation, column, rows = found.groups()
            failed.append(f"{expectation} on {column}" + (f" ({rows} rows)" if rows else ""))
    text = f"validation failed: {headline}" + (f": {'; '.join(failed)}" if failed else "")
    if len(text) <= MAX_NOTE:
        return text
    shown, rest = text[: MAX_NOTE - 40].rsplit("; ", 1)[0], len(failed)
    rest -= shown.count("; ") + 1
    return f"{shown}; and {rest} more (see the quality report)"


def _counts(counts: dict[str, Any] | None) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted((counts or {}).items(), key=lambda kv: (-kv[1], kv[0])))


def score_note(summary: dict[str, Any]) -> str:
    """'v3 scored 34 of 40 records; 6 refused: missing_required 4, impossible_dates 2' (and each shadow)."""
    text = (f"v{summary['version']} scored {summary['rows_scored']} of {summary['rows_selected']} records "
            f"({summary.get('score_records', 'selected')})")
    if summary.get("rows_refused"):
        text += f"; {summary['rows_refused']} refused: {_counts(summary.get('reason_counts'))}"
    for shadow in summary.get("shadows") or []:
        text += (f"; shadow v{shadow['version']} scored {shadow.get('rows_scored', 0)}" if shadow.get("status") == "done"
                 else f"; shadow v{shadow['version']} stopped: {short_reason(shadow.get('reason'))}")
    return _capped(text)


def erasure_note(results: list[dict[str, Any]]) -> str:
    """'2 erasure requests: #4 done (3 snapshots rewritten), #5 duplicate' or 'no erasure request pending'
    (never a patient's id: the note is read by every operator)."""
    if not results:
        return "no erasure request pending"
    parts = []
    for r in results:
        part = f"#{r['request_id']} {r['status']}"
        if r.get("versions_trained_on_erased"):
            part += f" (versions trained on the patient: {', '.join(f'v{v}' for v in r['versions_trained_on_erased'])})"
        parts.append(part)
    return _capped(f"{len(results)} erasure request{'s' if len(results) != 1 else ''}: {', '.join(parts)}")


def drift_note(result: dict[str, Any]) -> str:
    """'drift in bmi (PSI 0.41), glucose (PSI 0.28) on 60 recent records: retrain requested' or the quiet verdicts."""
    verdict, rows = result["verdict"], result.get("recent_rows", 0)
    quarantined = f"; {result['quarantined_rows']} quarantined by the contract ({_counts(result.get('quarantine_reasons'))})" \
        if result.get("quarantined_rows") else ""
    if verdict == "no_champion":
        return "no champion yet: nothing to compare"
    if verdict == "insufficient_data":
        return f"no verdict: {rows} recent records, fewer than monitoring.drift.min_rows{quarantined}"
    features = {f["feature"]: f for f in result.get("features") or []}
    if verdict == "drift":
        named = ", ".join(f"{name}{_psi(features.get(name))}" for name in result.get("drifted_features") or [])
        return _capped(f"drift in {named} on {rows} recent records: retrain requested{quarantined}")
    top = max(features.values(), key=lambda f: f.get("psi") or 0.0, default=None)
    worst = f" (largest PSI {top['psi']:.2f}, {top['feature']})" if top and top.get("psi") is not None else ""
    return _capped(f"stable: no feature drifted on {rows} recent records{worst}{quarantined}")


def _psi(feature: dict[str, Any] | None) -> str:
    return f" (PSI {feature['psi']:.2f})" if feature and feature.get("psi") is not None else ""


def performance_note(result: dict[str, Any]) -> str:
    """'v1 DEGRADED: live RMSE 127.5 on 40 outcomes, 2.36 x holdout 54.1 [2.14, 2.57]: retrain requested', or
    the verdict's own sentence when there is none to judge."""
    version, verdict = result.get("champion_version") or result.get("version"), result["verdict"]
    count = result.get("refused_outcomes")
    count = (count or {}).get("refused", 0) if isinstance(count, dict) or count is None else count
    refused = f"; {count} outcomes refused by the contract" if count else ""
    if verdict in ("degraded", "not_degraded"):
        ratio = result["live_rmse"] / result["holdout_rmse"]
        interval = f" [{result['ratio_low']:.2f}, {result['ratio_high']:.2f}]" if result.get("ratio_low") is not None \
            else ""
        word = "DEGRADED" if verdict == "degraded" else "not degraded"
        text = (f"v{version} {word}: live RMSE {result['live_rmse']:.1f} on {result['outcomes']} outcomes, "
                f"{ratio:.2f} x holdout {result['holdout_rmse']:.1f}{interval}")
        if verdict == "degraded":
            text += ": retrain requested" if result.get("signal_id") is not None else ": retrain already requested"
        return _capped(text + refused)
    return _capped(f"{verdict.replace('_', ' ')}: {short_reason(result.get('reason'))}{refused}")


def champion_note(result: dict[str, Any], mode: str) -> str:
    """'done: v2 is champion (was v1), promote: <reason>' after a Set champion run."""
    forced = f"; forced past: {'; '.join(result['forced_past'])}" if result.get("forced_past") else ""
    was = f"was v{result['replaced']}" if result.get("replaced") is not None else "no champion before"
    return _capped(f"done: v{result['champion']} is champion ({was}), {mode}: {result['reason']}{forced}")


def failure_note(task_id: str, line: str, kind: str, refused: bool = False) -> str:
    """'refused: <why, in the form's words>; nothing changed' or 'failed (<kind>) in <task>: <line>'."""
    if refused:
        return _capped(f"refused: {line}; nothing changed")
    return _capped(f"failed ({kind}) in {task_id}: {line}")


def _capped(text: str) -> str:
    return text if len(text) <= MAX_NOTE else text[: MAX_NOTE - 1].rstrip() + "…"


def _when(stamp: str | datetime) -> str:
    when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else stamp
    return f"{when:%Y-%m-%d %H:%M %Z}".strip()


def note_of_run(conn: Connection, run_id: str) -> str:
    """The note of a run, read from the registry."""
    return outcome_note(records.get_run(conn, run_id), records.evaluation_of_run(conn, run_id))
