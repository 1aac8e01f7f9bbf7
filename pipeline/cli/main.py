"""`python -m pipeline <command>`: every stage by hand, with the arguments the DAG uses.

Output. Every command prints text for people on stdout: one line per thing, columns aligned. With `--json` it
prints one JSON document instead, for scripts (`status --json | jq .champion`). Read commands (status, quality,
history, drift, performance, shadow without --add/--remove, card, reproduce, check-config, db-url) show the
state; write commands (init-db, seed-*, simulate-*, ingest, validate, train, evaluate, promote, retrain, score,
rollback, shadow --add/--remove, db-stop) change it and print a short summary of what they did, or with
`--json` everything they return. `serve`, `airflow` and `airflow-celery` run until stopped and have no --json. A failure is one
`error: ...` line on stderr and exit status 1, nothing on stdout; a run id or version that names nothing the
command can work on is refused so before anything runs. Piped into `head`, a command stops quietly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipeline import stages
from pipeline.contract import params
from pipeline.contract.config import load_config
from pipeline.contract.settings import Settings
from pipeline.data import demo
from pipeline.registry import records, runs
from pipeline.registry.runs import Run, error_line
from pipeline.runtime import threads
from pipeline.store import db
from pipeline.workspace import Workspace


class UnknownTarget(LookupError):
    """A run id or version given on the command line names nothing the command can work on; nothing ran."""


def as_json(value: Any) -> str:
    """`--json` output: one JSON document."""
    return json.dumps(value, indent=2, default=str)


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


def _run(args: argparse.Namespace) -> Run:
    """The run a command works on; a new id is kept on `args`, so a failure can be recorded against it."""
    args.run_id = args.run_id or f"cli__{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    return Run(run_id=args.run_id, watermark=args.watermark or datetime.now(UTC), triggered_by="cli")


def _drift(pairs: list[str], flag: str = "--drift", example: str = "bmi=+4") -> dict[str, float]:
    """Parse `column=+shift` pairs."""
    drift = {}
    for pair in pairs:
        column, sep, shift = pair.partition("=")
        if not sep:
            raise SystemExit(f"{flag} expects column=shift (e.g. {example}), got '{pair}'")
        drift[column.strip()] = float(shift)
    return drift


def cmd_init_db(ws: Workspace, args: argparse.Namespace) -> Any:
    return {"applied": db.apply_schema(ws.engine)}


def text_init_db(result: dict[str, Any]) -> str:
    files = result["applied"]
    return f"schema applied: {len(files)} files of sql/" + (f" ({files[0]} to {files[-1]})" if files else "")


def cmd_seed_demo(ws: Workspace, args: argparse.Namespace) -> Any:
    db.apply_schema(ws.engine)
    return {"inserted": demo.seed_demo(ws.engine), "table": demo.DEMO_TABLE}


def cmd_seed_clinic_export(ws: Workspace, args: argparse.Namespace) -> Any:
    return {"inserted": demo.seed_clinic_export(ws.engine), "table": demo.CLINIC_TABLE}


def text_seeded(result: dict[str, Any]) -> str:
    return f"inserted {result['inserted']} rows into {result['table']}" + (
        "" if result["inserted"] else " (they were there already)")


def cmd_simulate_arrivals(ws: Workspace, args: argparse.Namespace) -> Any:
    ids = demo.simulate_arrivals(ws.engine, args.rows, args.seed, _drift(args.drift), labelled=not args.unlabelled,
                                 bad_rows=args.bad_rows)
    return {"inserted": len(ids), "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}


def text_simulate_arrivals(result: dict[str, Any]) -> str:
    ids = f" (ids {result['first_id']} to {result['last_id']})" if result["inserted"] else ""
    return f"inserted {result['inserted']} new records{ids}"


def cmd_ingest(ws: Workspace, args: argparse.Namespace) -> Any:
    run = _run(args)
    return {"run_id": run.run_id, **stages.ingest_snapshot(ws, run)}


def text_ingest(result: dict[str, Any]) -> str:
    awaiting = result["unlabelled_rows"]
    return "\n".join([f"run {result['run_id']}: {result['row_count']} labelled rows of {result['source_table']} "
                      f"recorded up to {result['watermark']}, frozen", *aligned([
                          ["snapshot", result["snapshot_hash"]], ["file", result["path"]],
                          ["awaiting outcome", f"{awaiting} rows" + (f", frozen as {result['unlabelled_hash']}"
                                                                      if result["unlabelled_hash"] else "")]])])


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


def _continued_run(ws: Workspace, args: argparse.Namespace) -> Run:
    """The run a later stage continues: one an ingest started, when --run-id names it (else a new one)."""
    if args.run_id:
        known_run(ws, args.run_id)
    return _run(args)


def cmd_validate(ws: Workspace, args: argparse.Namespace) -> Any:
    return stages.validate_snapshot(ws, _continued_run(ws, args), args.snapshot)


def text_validate(result: dict[str, Any]) -> str:
    return "\n".join([
        f"snapshot {result['snapshot_hash']}: read {result['rows_read']} rows, {result['rows_valid']} valid, "
        f"{result['rows_quarantined']} quarantined ({counts(result['reason_counts'])})",
        *aligned([["clean snapshot", result["clean_snapshot_hash"]],
                  ["awaiting outcome", f"{result['rows_unlabelled'] or 0} rows, {result['unlabelled_faulty'] or 0} "
                                       f"with faults ({counts(result['unlabelled_reason_counts'])})"],
                  ["report", str(result["report_path"] or "-")]])])


def cmd_train(ws: Workspace, args: argparse.Namespace) -> Any:
    return stages.train_candidate(ws, _continued_run(ws, args), args.snapshot)


def text_train(result: dict[str, Any]) -> str:
    rows = [["family", "CV RMSE", "seconds"]] + [
        [family, f"{cv['cv_rmse_mean']:.2f} ± {cv['cv_rmse_std']:.2f}", f"{cv['seconds']:.1f}"]
        for family, cv in sorted(result["cv_metrics"].items(), key=lambda item: item[1]["cv_rmse_mean"])]
    interval = result.get("interval")  # a retried run's candidate comes back without it
    lines = [f"version {result['version']} ({result['model_family']}) registered, artifact {result['artifact_hash']}",
             *aligned(rows)]
    if interval:
        lines.append(f"  {interval['coverage']:.0%} interval: forecast ± {interval['half_width']:.1f}")
    return "\n".join(lines)


def metrics_line(metrics: dict[str, Any] | None) -> str:
    """Holdout metrics as `RMSE 54.05  MAE 42.42  R² 0.549  on 88 rows`, or `-` when there are none."""
    if not metrics:
        return "-"
    return (f"RMSE {metrics.get('rmse', float('nan')):.2f}  MAE {metrics.get('mae', float('nan')):.2f}  "
            f"R² {metrics.get('r2', float('nan')):.3f}  on {metrics.get('n')} rows")


def cmd_evaluate(ws: Workspace, args: argparse.Namespace) -> Any:
    check_candidate_of_run(ws, args.run_id, args.version)
    return stages.evaluate_candidate(ws, _run(args), args.version, args.margin)


def check_candidate_of_run(ws: Workspace, run_id: str | None, version: int) -> None:
    """`evaluate` judges a run's own candidate: the version is registered, and trained by the run --run-id names."""
    trained_by = registered_version(ws, version)["run_id"]
    if run_id is None:
        raise UnknownTarget(f"evaluate needs --run-id: the run that trained version {version} is {trained_by!r}")
    known_run(ws, run_id)
    if run_id != trained_by:
        raise UnknownTarget(f"version {version} is not the candidate of run {run_id!r} (run {trained_by!r} trained "
                            f"it): evaluate --run-id {trained_by} --version {version}")


def text_evaluate(result: dict[str, Any]) -> str:
    champion = result["champion_version"]
    return "\n".join([f"decision: {result['decision']}: {result['reason']}", *aligned([
        [f"candidate v{result['candidate_version']}", metrics_line(result["candidate_metrics"])],
        ["champion " + ("(none)" if champion is None else f"v{champion}"), metrics_line(result["champion_metrics"])],
        ["card", str(result.get("card") or "-")], ["comparison", str(result.get("comparison") or "-")]])])


def _operator() -> str:
    return f"cli:{os.environ.get('USER', 'operator')}"


def cmd_promote(ws: Workspace, args: argparse.Namespace) -> Any:
    """Apply the run's recorded decision; with --to, make that version champion by the operator's choice."""
    if args.to is None:
        if args.reason is not None or args.force:
            raise ValueError("--reason and --force go with --to VERSION (making a version champion by hand)")
        check_decision_of_run(ws, args.run_id)
        return stages.promote_candidate(ws, _run(args), dry_run=args.dry_run, actor="cli")
    if args.dry_run or args.watermark:
        raise ValueError("--dry-run and --watermark apply a run's recorded decision; they do not go with --to")
    from pipeline import champion

    run_id = args.run_id or f"promote__{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    return champion.promote_version(ws, run_id, args.to, args.reason or "", actor=_operator(), force=args.force)


def check_decision_of_run(ws: Workspace, run_id: str | None) -> None:
    """`promote` without --to applies the decision its run recorded: the run exists and was evaluated."""
    if run_id is None:
        raise UnknownTarget("promote needs --run-id RUN (apply the decision that run's evaluate recorded), "
                            "or --to VERSION --reason TEXT (make a version champion by hand)")
    known_run(ws, run_id)
    with ws.engine.connect() as conn:
        try:
            records.get_evaluation(conn, run_id)
        except LookupError:
            raise UnknownTarget(f"run {run_id!r} has no recorded decision: evaluate its candidate first "
                                f"(python -m pipeline evaluate --run-id {run_id} --version V)") from None


def text_promote(result: dict[str, Any]) -> str:
    """A recorded decision applied (its reason says what happened), or a version made champion by hand."""
    return str(result["reason"]) if "status" in result else text_champion_changed(result)


def text_champion_changed(result: dict[str, Any]) -> str:
    replaced = "" if result["replaced"] is None else f", replacing version {result['replaced']}"
    lines = [f"version {result['champion']} is champion{replaced} (run {result['run_id']}): {result['reason']}"]
    if result["forced_past"]:
        lines.append(f"  forced past its failed checks: {'; '.join(result['forced_past'])}")
    if evidence := result.get("evidence"):
        lines.append(f"  live evidence: {evidence['shadow_forecasts']} shadow forecasts in {evidence['shadow_runs']} "
                     f"runs, {evidence['shadow_forecasts_with_outcome']} with their outcome known")
    return "\n".join(lines)


def cmd_shadow(ws: Workspace, args: argparse.Namespace) -> Any:
    """The shadow set: list it, or add or remove one version, as an event."""
    from pipeline import champion

    added = champion.last_kept_candidate(ws) if args.add_rejected else args.add
    if added is not None:
        result = champion.add_shadow(ws, added, _operator(), args.reason)
    elif args.remove is not None:
        result = champion.remove_shadow(ws, args.remove, _operator(), args.reason)
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


def cmd_retrain(ws: Workspace, args: argparse.Namespace) -> Any:
    """All stages in order, outside Airflow (the DAG runs the same functions)."""
    run = _run(args)
    with runs.running(ws.engine, ws.settings, run.run_id, "retrain"):  # one lock for the whole command
        return _retrain(ws, run, args)


def _retrain(ws: Workspace, run: Run, args: argparse.Namespace) -> Any:
    conf = params.check_conf({"margin": args.margin, "dry_run": args.dry_run, "force": args.force}, run.watermark)
    snapshot = stages.ingest_snapshot(ws, run, conf)
    if not stages.has_new_data(ws, run, snapshot["snapshot_hash"], force=args.force):
        return {"run_id": run.run_id, "status": "skipped", "snapshot_hash": snapshot["snapshot_hash"]}
    checked = stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])
    candidate = stages.train_candidate(ws, run, checked["clean_snapshot_hash"])
    stages.evaluate_candidate(ws, run, candidate["version"], args.margin)
    return {"run_id": run.run_id, **stages.promote_candidate(ws, run, dry_run=args.dry_run, actor="cli")}


def text_retrain(result: dict[str, Any]) -> str:
    if result["status"] == "skipped":
        return f"run {result['run_id']}: skipped: no new labelled rows since the last trained snapshot " \
               f"{result['snapshot_hash']} (--force trains anyway)"
    return f"run {result['run_id']}: {result['reason']}"


def cmd_drift(ws: Workspace, args: argparse.Namespace) -> Any:
    return stages.monitor_drift(ws, _run(args))


def text_drift(result: dict[str, Any]) -> str:
    rows = [[f["feature"], f"PSI {f['psi']:.3f}", f"({f['level']})", f"{f['test']} p={f['p_value']:.2g}",
             "DRIFT" if f["drifted"] else ""] for f in result["features"]]
    report = [f"report: {result['report_path']}"] if result["report_path"] else []
    return "\n".join([f"drift verdict: {result['verdict']} over {result['recent_rows']} recent rows",
                      *aligned(rows), *report])


def cmd_performance(ws: Workspace, args: argparse.Namespace) -> Any:
    """The forecasts judged on the outcomes known now, per version; the champion's verdict. Sends no retrain
    signal: the monitor_performance DAG does (an event on the retrain asset)."""
    from pipeline.monitoring import performance

    return performance.monitor_performance(ws, _run(args), send_signal=False)


def text_performance(result: dict[str, Any]) -> str:
    lines = [f"performance of {result['model']} as of {when(result['as_of'])}: {result['verdict']}",
             f"  {result['reason']}", *(f"  warning: {warning}" for warning in result["warnings"])]
    lines += aligned([[f"v{v['version']}", v["source"], f"{v['outcomes']} outcomes", f"live RMSE {v['live_rmse']:.2f}",
                       "holdout " + ("-" if v["holdout_rmse"] is None else
                                     f"{v['holdout_rmse']:.2f} (x{v['ratio']:.2f})"),
                       f"MAE {v['mae']:.2f}", f"bias {v['bias']:+.2f}",
                       f"coverage {v['coverage']:.0%} (nominal {v['nominal_coverage']:.0%})",
                       " ".join(["champion"] * v["champion"] + ["DEGRADED"] * v["degraded"])]
                      for v in result["versions"]])
    for s in result["shadows"]:
        shown = "" if s["rows"] == 0 else (f": RMSE {s['shadow_rmse']:.2f} vs {s['champion_rmse']:.2f}, squared "
                                          f"error {s['mean_difference']:+.1f} [{s['low']:+.1f}, {s['high']:+.1f}]")
        lines.append(f"  shadow v{s['shadow_version']} vs champion v{s['champion_version']} on {s['rows']} shared "
                     f"records{shown}: {s['verdict']}")
    return "\n".join([*lines, f"report: {result['report_path']}"])


def cmd_simulate_outcomes(ws: Workspace, args: argparse.Namespace) -> Any:
    from pipeline.monitoring import outcomes

    return outcomes.fill_outcomes(ws.engine, ws.model, args.months, args.seed,
                                  _drift(args.shift, "--shift", "glucose=+30"))


def text_simulate_outcomes(result: dict[str, Any]) -> str:
    shift = ", ".join(f"{column} {value:+g}" for column, value in result["shift"].items())
    filled = f"filled the outcome of {result['filled']} forecast records with a visit up to {result['visits_up_to']}"
    if not result["filled"]:
        return filled
    return (f"{filled} (ids {result['first_id']} to {result['last_id']}, mean outcome {result['mean_outcome']:.1f}"
            f"{'; shifted as if ' + shift if shift else ''})")


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


def cmd_score(ws: Workspace, args: argparse.Namespace) -> Any:
    """Forecast the records that need one with the champion (the score_patients DAG runs the same)."""
    from pipeline.serving import scoring

    return scoring.score_batch(ws, args.scoring_run_id or f"score__{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")


def text_score(result: dict[str, Any]) -> str:
    refused = f" ({counts(result['reason_counts'])})" if result["rows_refused"] else ""
    lines = [f"scoring run {result['run_id']}: {result['rows_selected']} records selected ({result['score_records']}), "
             f"{result['rows_scored']} scored by version {result['version']} of {result['model']} "
             f"(interval {result['coverage']:.0%}), {result['rows_refused']} refused{refused}"]
    lines += [f"  shadow version {shadow['version']}: " + (f"{shadow['rows_scored']} scored" if shadow["status"] == "done"
                                                           else f"stopped: {shadow['reason']}")
              for shadow in result["shadows"]]
    return "\n".join(lines)


def cmd_card(ws: Workspace, args: argparse.Namespace) -> Any:
    from pipeline.model import cards

    registered_version(ws, args.version)
    if args.comparison:
        check_decision_of_run(ws, args.comparison)
    pages = {"card": str(cards.render_model_card(ws, args.version))}
    if args.comparison:
        pages["comparison"] = str(cards.render_comparison(ws, args.comparison))
    return pages


def text_pages(pages: dict[str, Any]) -> str:
    return "\n".join(aligned([[f"{name}:", str(path)] for name, path in pages.items()], indent=""))


def cmd_reproduce(ws: Workspace, args: argparse.Namespace) -> Any:
    registered_version(ws, args.version)
    result = stages.reproduce_version(ws, args.version)
    if not result["predictions_identical"]:
        print(f"version {args.version} did NOT reproduce", file=sys.stderr)
    return result


def text_reproduce(result: dict[str, Any]) -> str:
    verdict = "reproduces" if result["predictions_identical"] else "did NOT reproduce"
    same = {True: "identical", False: "different"}
    differences = ", ".join(f"{name} {v['recorded']} then, {v['now']} now"
                            for name, v in sorted(result["library_differences"].items())) or "none"
    return "\n".join([f"version {result['version']} {verdict}: predictions {same[result['predictions_identical']]} "
                      f"on {result['rows_compared']} rows", *aligned([
                          ["artifact", same[result["artifact_identical"]]],
                          ["snapshot", result["snapshot_hash"]],
                          ["training rows", f"{result['train_rows']} (recorded {result['recorded_train_rows']})"],
                          ["code version", f"{result['code_version_recorded']} (now {result['code_version_now']})"],
                          ["library differences", differences]])])


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
    if not report["recent_runs"]:
        return "\n".join([*lines, "no runs yet"])
    rows = [["started", "run", "started by", "state", "reason"]] + [
        [f"{run['started_at']:%Y-%m-%d %H:%M}", run["run_id"], run["triggered_by"], run_state(run), run["reason"] or ""]
        for run in report["recent_runs"]]
    return "\n".join([*lines, "latest runs:", *aligned(rows)])


def cmd_serve(ws: Workspace, args: argparse.Namespace) -> Any:
    """`serve`: the REST API on the champion, until interrupted; refuses to start without API tokens."""
    from pipeline.serving import rest

    rest.serve(ws, rest.tokens_from_environment(os.environ), args.host, args.port, args.insecure_local)
    return None


def cmd_db_url(ws: Workspace, args: argparse.Namespace) -> Any:
    return {"url": ws.engine.url.render_as_string(hide_password=False)}


def exec_airflow(settings: Settings, airflow_args: list[str]) -> None:
    """Replace this process with `airflow ...`, configured for this project."""
    from pipeline.cli.localenv import ADMIN_USER, admin_password, airflow_environment, airflow_home

    env = {**os.environ, **airflow_environment(settings, dict(os.environ))}
    bin_dir = os.path.dirname(sys.executable)  # `airflow standalone` starts `airflow ...` from PATH
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    if airflow_args[:1] in (["standalone"], ["api-server"]):
        home = airflow_home(env)
        port = env.get("AIRFLOW__API__PORT", "8080")
        print(f"Airflow UI: http://localhost:{port}  user: {ADMIN_USER}  password: {admin_password(home)}"
              f"  (kept in {home / 'passwords.json'})", flush=True)
    binary = shutil.which("airflow", path=bin_dir) or "airflow"
    os.execvpe(binary, [binary, *airflow_args], env)


def run_celery_airflow(settings: Settings, workers: int, concurrency: int, broker_url: str | None) -> None:
    """Airflow on the CeleryExecutor with `workers` Celery workers (`pipeline.cli.cluster`), until Ctrl-C or until
    a part stops (named, with its log's tail)."""
    from pipeline.cli.cluster import celery_airflow
    from pipeline.cli.localenv import ADMIN_USER, admin_password, airflow_environment, airflow_home

    env = {**os.environ, **airflow_environment(settings, dict(os.environ))}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    home = airflow_home(env)
    stop = {"signal": 0}
    signal.signal(signal.SIGTERM, lambda signum, _: stop.update(signal=signum))
    with celery_airflow(env, home / "celery", workers, concurrency, broker_url) as cluster:
        print(f"Airflow UI: {cluster.base_url}  user: {ADMIN_USER}  password: {admin_password(home)}\n"
              f"CeleryExecutor, broker {cluster.env['AIRFLOW__CELERY__BROKER_URL']}, {workers} worker(s) of "
              f"concurrency {concurrency}: {', '.join(cluster.workdirs)}; logs in {cluster.log_dir}", flush=True)
        try:
            while not stop["signal"] and not cluster.exited():
                time.sleep(1)
        except KeyboardInterrupt:
            return
        for name in cluster.exited():
            print(f"{name} stopped; the end of its log:\n{cluster.log_tail(name)}", file=sys.stderr)


def check_config(settings: Settings) -> dict[str, Any]:
    """`check-config`: load and check the config (and its suite) alone, touching no database."""
    config = load_config(settings.config_path)
    return {"config": str(config.path), "model": config.model, "ok": True}


def text_check_config(result: dict[str, Any]) -> str:
    return f"{result['config']}: model {result['model']}, config and expectation suite ok"


def stop_embedded(settings: Settings) -> dict[str, Any]:
    """`db-stop`: stop the embedded server without starting one first."""
    return {"stopped_pid": db.stop_embedded_postgres(settings.pgdata_dir), "pgdata": str(settings.pgdata_dir)}


def text_db_stop(result: dict[str, Any]) -> str:
    pid, where = result["stopped_pid"], result["pgdata"]
    return f"stopped embedded PostgreSQL (pid {pid}) on {where}" if pid else f"no embedded PostgreSQL running on {where}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="PATH", help="the model's config file (default: PIPELINE_CONFIG, "
                        "else pipeline.yaml); every command works on the model it names")
    sub = parser.add_subparsers(dest="command", required=True)

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

    add("init-db", cmd_init_db, "apply the SQL files in sql/ (safe twice)", text=text_init_db,
        json_help="{applied: [file names]}")
    add("seed-demo", cmd_seed_demo, "load the 442-patient diabetes study into the source table", text=text_seeded,
        json_help="{inserted, table}")
    add("seed-clinic-export", cmd_seed_clinic_export, "load the worked example's clinic export into clinic.visits "
        "(its own column names, d/m/Y text dates, a few faults; see examples/clinic/)", text=text_seeded,
        json_help="{inserted, table}")
    p = add("simulate-arrivals", cmd_simulate_arrivals, "append new plausible labelled records",
            text=text_simulate_arrivals, json_help="{inserted, first_id, last_id}")
    p.add_argument("--rows", type=count_arg, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drift", action="append", default=[], metavar="COLUMN=SHIFT",
                   help="shift a numeric column, e.g. bmi=+4 (repeatable)")
    p.add_argument("--unlabelled", action="store_true", help="outcome not known yet (progression_12m NULL)")
    p.add_argument("--bad-rows", type=int, default=0, metavar="K",
                   help="make K rows faulty (unknown sex, kPa blood pressure, birth after visit, ...) and K more messy")
    add("ingest", cmd_ingest, "snapshot the labelled rows up to the watermark", run=True, text=text_ingest,
        json_help="{run_id, snapshot_hash, path, row_count, watermark, source_table, query, unlabelled_rows, ...}")
    for name, handler, help_text, text, keys in (
            ("validate", cmd_validate, "validate a snapshot with the expectation suite", text_validate,
             "{snapshot_hash, clean_snapshot_hash, rows_read, rows_valid, rows_quarantined, reason_counts, ...}"),
            ("train", cmd_train, "train the candidate on a clean snapshot (validate's output)", text_train,
             "{version, model_family, artifact_hash, cv_metrics, interval}")):
        add(name, handler, help_text, run=True, text=text, json_help=keys).add_argument(
            "--snapshot", required=True, help="snapshot hash")
    p = add("evaluate", cmd_evaluate, "score candidate and champion on the holdout, record the decision", run=True,
            text=text_evaluate, json_help="{candidate_version, champion_version, candidate_metrics, "
            "champion_metrics, decision, reason, card, comparison}")
    p.add_argument("--version", type=count_arg, required=True, help="candidate model version")
    p.add_argument("--margin", type=margin_arg, help="relative RMSE improvement needed, 0 to 0.5 (default: config)")
    p = add("promote", cmd_promote, "apply the run's recorded decision; or, with --to, make a version champion by "
            "hand", run=True, text=text_promote, json_help="{status, candidate_version, reason}; with --to "
            "{champion, replaced, reason, run_id, forced_past, evidence}")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--to", type=count_arg, metavar="VERSION", help="make this registered version champion (a shadow, "
                   "say): hash-checked, recorded as an event with its live evidence")
    p.add_argument("--reason", help="why (needed with --to): recorded with the event")
    p.add_argument("--force", action="store_true",
                   help="with --to: even a version that failed its policy checks (recorded with the event)")
    p = add("shadow", cmd_shadow, "the versions the batch also scores beside the champion, never shown to the CRM: "
            "list them, or add or remove one (at most rest.max_shadows)", text=text_shadow,
            json_help="{model, champion, max_shadows, shadows: [{version, added_at, added_by, reason, evidence}]}")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--add", type=count_arg, metavar="VERSION")
    which.add_argument("--add-rejected", action="store_true",
                       help="add the candidate of the latest run that was evaluated and kept the champion")
    which.add_argument("--remove", type=count_arg, metavar="VERSION")
    p.add_argument("--reason", default="", help="why: recorded with the event")
    p = add("retrain", cmd_retrain, "every stage in order, without Airflow", run=True, text=text_retrain,
            json_help="{run_id, status, candidate_version, reason} (skipped: {run_id, status, snapshot_hash})")
    p.add_argument("--margin", type=margin_arg, help="relative RMSE improvement needed, 0 to 0.5 (default: config)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--force", action="store_true", help="retrain even when no new labelled rows arrived")
    add("drift", cmd_drift, "compare recent records with the champion's training snapshot", run=True, text=text_drift,
        json_help="the full per-feature result: {verdict, recent_rows, features: [{feature, psi, level, test, "
        "p_value, drifted, ...}], report_path, ...}")
    add("performance", cmd_performance, "judge the forecasts on the outcomes known now: per version live "
        "against holdout RMSE, MAE, bias, coverage; the champion's verdict (sends no retrain signal)", run=True,
        text=text_performance, json_help="the full result, every metric row included: {model, as_of, verdict, "
        "reason, warnings, versions, shadows, report_path, signal, ...}")
    p = add("simulate-outcomes", cmd_simulate_outcomes, "fill in the outcomes of forecast records whose visit was "
            "--months ago or earlier (demo table), by UPDATE: the trigger stamps label_recorded_at",
            text=text_simulate_outcomes, json_help="{filled, visits_up_to, months, seed, shift, first_id, last_id, "
            "mean_outcome}")
    p.add_argument("--months", type=int, default=12, help="the outcome is known this many months after the visit: "
                   "visits on or before today minus MONTHS get theirs (0: every forecast record; default 12)")
    p.add_argument("--shift", action="append", default=[], metavar="COLUMN=SHIFT",
                   help="concept shift: outcomes computed as if COLUMN were SHIFT higher (stored value unchanged), "
                   "e.g. glucose=+30 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
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
    p = add("score", cmd_score, "forecast every record that needs one with the champion, into pipeline.predictions",
            text=text_score, json_help="{run_id, model, version, rows_selected, rows_scored, rows_refused, "
            "reason_counts, shadows, ...}")
    p.add_argument("--run-id", dest="scoring_run_id", help="the scoring run's id (again: its rows are replaced)")
    p = add("card", cmd_card, "write a version's model card (and a decision's comparison page); prints the paths",
            text=text_pages, json_help="{card, comparison}")
    p.add_argument("version", type=count_arg)
    p.add_argument("--comparison", metavar="RUN_ID", help="also the champion/challenger page of this run's decision")
    p = add("reproduce", cmd_reproduce, "rebuild a version from its snapshot; compare predictions bit for bit",
            text=text_reproduce, json_help="{version, predictions_identical, rows_compared, artifact_identical, "
            "snapshot_hash, train_rows, recorded_train_rows, library_differences, code_version_recorded, "
            "code_version_now}")
    p.add_argument("version", type=count_arg)
    p = add("serve", cmd_serve, "the REST API: forecasts from the champion, hot-swapped when it changes "
            "(tokens from the file PIPELINE_API_TOKEN_FILE names)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--insecure-local", action="store_true",
                   help="serve without authentication when no tokens are configured (this machine only)")
    add("db-url", cmd_db_url, "print the database URL in use (starts the embedded server if needed)",
        text=lambda result: result["url"], json_help="{url}")
    add("db-stop", None, "stop the embedded PostgreSQL (PIPELINE_PGDATA); data is kept", text=text_db_stop,
        json_help="{stopped_pid (null when none ran), pgdata}").set_defaults(without_database=stop_embedded)
    add("check-config", None, "check the config and its expectation suite, without a database",
        text=text_check_config, json_help="{config, model, ok}").set_defaults(without_database=check_config)
    p = sub.add_parser("airflow", help="run the airflow CLI configured for this project")
    p.add_argument("airflow_args", nargs=argparse.REMAINDER)
    p = sub.add_parser("airflow-celery", help="run Airflow on the CeleryExecutor: Redis, scheduler, API server, "
                       "triggerer, DAG processor and Celery workers (until Ctrl-C)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=1, help="task slots per worker")
    p.add_argument("--broker-url", help="a running Redis (default: start redis-server on a free port)")
    return parser


def end_failed_run(ws: Workspace, run_id: str, reason: str, kind: str) -> None:
    """Record the command's run as failed, so it never stays 'running'; a database that is gone is said so."""
    try:
        stages.mark_run_failed(ws, run_id, reason, kind)
    except sa.exc.DBAPIError:
        print(f"warning: run {run_id} could not be marked failed: the database is unreachable", file=sys.stderr)


def execute(args: argparse.Namespace, settings: Settings) -> Any:
    """The command's result. A failure of a run's stage marks the run failed; a refused run id or version
    (UnknownTarget) ran nothing, so it marks nothing."""
    if getattr(args, "without_database", None):
        return args.without_database(settings)
    ws = stages.open_workspace(settings)
    try:
        if not hasattr(args, "run_id"):
            return args.handler(ws, args)
        # a stage, as a task runs it: pools sized to the slot (said at debug: stderr is for the error line)
        with threads.sized(ws.config.training.n_jobs, logging.DEBUG):
            return args.handler(ws, args)
    except Exception as exc:
        if getattr(args, "run_id", None) and not isinstance(exc, UnknownTarget):
            end_failed_run(ws, args.run_id, f"{args.command}: {error_line(exc, settings)}", runs.failure_kind(exc))
        raise


def main(argv: list[str] | None = None) -> int:
    """Run one command: its result on stdout as text for people, or as JSON with --json; a failure as one line
    on stderr, exit status 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # an environment variable with a value it does not allow: one line, as any failure
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.config:
        settings = dataclasses.replace(settings, config_path=Path(args.config))
    if args.command == "airflow":
        exec_airflow(settings, args.airflow_args)
    if args.command == "airflow-celery":
        run_celery_airflow(settings, args.workers, args.concurrency, args.broker_url)
        return 0
    try:
        result = execute(args, settings)
    except Exception as exc:  # noqa: BLE001 - the CLI reports every failure as one clear line
        print(f"error: {error_line(exc, settings)}", file=sys.stderr)
        return 1
    if result is None:
        return 0
    try:
        print(as_json(result) if args.json else args.text(result), flush=True)
    except BrokenPipeError:
        # The reader stopped early (`| head`): nothing more to say. What is left in the buffer goes nowhere, so
        # the flush at exit does not complain either (https://docs.python.org/3/library/signal.html#note-on-sigpipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
