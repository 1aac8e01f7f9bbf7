"""The registry and the champion: status, quality, history, shadow, rollback."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from typing import Any

from pipeline import stages
from pipeline.cli.common import aligned, count_arg, counts, metrics_line, operator_name, text_champion_changed, when
from pipeline.registry import records
from pipeline.workspace import Workspace


def cmd_shadow(ws: Workspace, args: argparse.Namespace) -> Any:
    """The shadow set: list it, or add or remove one version, as an event."""
    from pipeline import champion

    added = champion.last_kept_candidate(ws) if args.add_rejected else args.add
    if added is not None:
        result = champion.add_shadow(ws, added, operator_name(), args.reason)
    elif args.remove is not None:
        result = champion.remove_shadow(ws, args.remove, operator_name(), args.reason)
    else:
        result = champion.shadows(ws)
    return result


def text_shadow(result: dict[str, Any]) -> str:
    lines = [f"model {result['model']}: champion version {result['champion']}; in shadow "
             f"({len(result['shadows'])} of at most {result['max_shadows']}):"]
    rows = [[f"v{s['version']}", f"added {s['added_at']:%Y-%m-%d %H:%M:%S} by {s['added_by']}",
             f"{s['evidence']['shadow_forecasts']} shadow forecasts in {s['evidence']['shadow_runs']} runs, "
             f"{s['evidence']['shadow_forecasts_with_outcome']} with their outcome known", s["reason"]]
            for s in result["shadows"]]
    return "\n".join(lines + (aligned(rows) if rows else ["  none"]))


def cmd_quality(ws: Workspace, args: argparse.Namespace) -> Any:
    """The last validations: rows read, valid, quarantined by reason."""
    with ws.engine.connect() as conn:
        history = records.quality_history(conn, ws.model, args.runs)
    return history


def text_quality(history: list[dict[str, Any]]) -> str:
    if not history:
        return "no validations yet"
    rows = [["run", "when", "read", "valid", "quarantined", "awaiting outcome (faulty)", "result", "quarantined by reason"]]
    rows += [[v["run_id"], f"{v['created_at']:%Y-%m-%d %H:%M}", str(v["rows_read"]), str(v["rows_valid"]),
              str(v["rows_quarantined"]), f"{v['rows_unlabelled'] or 0} ({v['unlabelled_faulty'] or 0})",
              "ok" if v["success"] else "FAILED", counts(v["reason_counts"]) + (
                  f"; awaiting outcome: {counts(v['unlabelled_reason_counts'])}" if v["unlabelled_faulty"] else "")]
             for v in history]
    return "\n".join(aligned(rows, indent=""))


def cmd_history(ws: Workspace, args: argparse.Namespace) -> Any:
    """Every change of champion: when, from which version to which, by what, and why."""
    with ws.engine.connect() as conn:
        events = records.promotion_history(conn, ws.model)
    return events


def text_history(events: list[dict[str, Any]]) -> str:
    if not events:
        return "no champion yet"
    rows = [["when", "from", "to", "by", "run", "reason"]]
    rows += [[f"{e['at']:%Y-%m-%d %H:%M:%S}", "-" if e["from_version"] is None else f"v{e['from_version']}",
              f"v{e['to_version']}", e["actor"], e["run_id"], e["reason"]] for e in events]
    return "\n".join(aligned(rows, indent=""))


def cmd_rollback(ws: Workspace, args: argparse.Namespace) -> Any:
    run_id = args.run_id or f"rollback__{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    return stages.rollback_champion(ws, run_id, args.reason, args.to, actor=f"cli:{os.environ.get('USER', 'operator')}",
                                    force=args.force)


def _evaluation_of_version(conn: Any, champion: dict[str, Any] | None) -> dict[str, Any] | None:
    """The evaluation of the run that trained the champion (a rollback's run has none), if recorded."""
    if champion is None:
        return None
    try:
        return records.get_evaluation(conn, champion["run_id"])
    except LookupError:
        return None


def status_report(ws: Workspace, runs: int = 5) -> dict[str, Any]:
    """The champion (version, metrics, snapshot, when promoted) and the latest runs."""
    with ws.engine.connect() as conn:
        champion = records.current_champion(conn, ws.model)
        recent = records.recent_runs(conn, ws.model, runs)
        evaluation = _evaluation_of_version(conn, champion)
    summary = None
    if champion:
        summary = {
            "version": champion["version"], "model_family": champion["model_family"],
            "holdout_metrics": evaluation["candidate_metrics"] if evaluation else None,
            "snapshot_hash": champion["snapshot_hash"], "artifact_hash": champion["artifact_hash"],
            "promoted_at": champion["promoted_at"], "promoted_by_run": champion["promoted_by_run"],
            "code_version": champion["code_version"],
        }
    if summary is not None:
        from pipeline import erasure

        summary["erasure_deadline"] = erasure.retrain_deadline(ws)
    return {"model": ws.model, "champion": summary, "recent_runs": recent}


def run_state(run: dict[str, Any]) -> str:
    """A run's status as an operator reads it: which stage a live run is in, why a failed one failed."""
    if run["status"] == "running":
        return f"running (stage {run['active_stage']}, {run['owner']})" if run["active_stage"] else \
            "running (between stages)"
    if run["status"] == "failed" and run["failure_kind"]:
        return f"failed ({run['failure_kind']})"
    return str(run["status"])


def cmd_status(ws: Workspace, args: argparse.Namespace) -> Any:
    return {**status_report(ws, args.runs), "config": str(ws.config.path)}


def text_status(report: dict[str, Any]) -> str:
    champion = report["champion"]
    lines = [f"model {report['model']} ({report['config']})"]
    if champion is None:
        lines.append("no champion yet")
    else:
        lines += [f"champion: version {champion['version']} ({champion['model_family']}), promoted "
                  f"{when(champion['promoted_at'])} by {champion['promoted_by_run']}",
                  f"  holdout {metrics_line(champion['holdout_metrics'])}",
                  f"  snapshot {champion['snapshot_hash'][:16]}…  artifact {champion['artifact_hash'][:16]}…"]
        if deadline := champion.get("erasure_deadline"):
            lines.append(f"  TRAINED ON ERASED DATA ({deadline['erasures']} erasure(s) since, the first "
                         f"{when(deadline['first_erasure_at'])}): must be replaced by {when(deadline['deadline'])} "
                         f"(erasure.retrain_within_days {deadline['retrain_within_days']:g}); the retrain DAG forces it")
    if not report["recent_runs"]:
        return "\n".join([*lines, "no runs yet"])
    rows = [["started", "run", "started by", "state", "reason"]] + [
        [f"{run['started_at']:%Y-%m-%d %H:%M}", run["run_id"], run["triggered_by"], run_state(run), run["reason"] or ""]
        for run in report["recent_runs"]]
    return "\n".join([*lines, "latest runs:", *aligned(rows)])


def register(add: Any) -> None:
    """The parsers of the registry and champion commands."""
    p = add("shadow", cmd_shadow, "the versions the batch also scores beside the champion, never shown to the CRM: "
            "list them, or add or remove one (at most serving.max_shadows)", text=text_shadow,
            json_help="{model, champion, max_shadows, shadows: [{version, added_at, added_by, reason, evidence}]}")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--add", type=count_arg, metavar="VERSION")
    which.add_argument("--add-rejected", action="store_true",
                       help="add the candidate of the latest run that was evaluated and kept the champion")
    which.add_argument("--remove", type=count_arg, metavar="VERSION")
    p.add_argument("--reason", default="", help="why: recorded with the event")
    p = add("status", cmd_status, "the champion and the latest runs, with how each was started", text=text_status,
            json_help="{model, config, champion: {version, model_family, holdout_metrics, snapshot_hash, "
            "artifact_hash, promoted_at, promoted_by_run, code_version} or null, recent_runs: [{run_id, "
            "triggered_by, status, reason, failure_kind, active_stage, started_at, finished_at, decision, ...}]}")
    p.add_argument("--runs", type=count_arg, default=5)
    p = add("quality", cmd_quality, "the last validations: rows read, valid, quarantined by reason", text=text_quality,
            json_help="[{run_id, snapshot_hash, success, rows_read, rows_valid, rows_quarantined, reason_counts, "
            "rows_unlabelled, unlabelled_faulty, unlabelled_reason_counts, report_path, created_at, ...}], newest first")
    p.add_argument("--runs", type=count_arg, default=10)
    add("history", cmd_history, "every change of champion (append-only)", text=text_history,
        json_help="[{at, from_version, to_version, actor, run_id, reason, evidence, ...}], oldest first")
    p = add("rollback", cmd_rollback, "make an earlier version champion again, as a recorded event",
            text=text_champion_changed, json_help="{champion, replaced, reason, run_id, forced_past}")
    p.add_argument("--to", type=count_arg, help="the version (default: the one the champion replaced)")
    p.add_argument("--reason", required=True)
    p.add_argument("--force", action="store_true",
                   help="roll back even to a version that failed its policy checks (recorded with the event)")
    p.add_argument("--run-id", help="the id to record the rollback under")
