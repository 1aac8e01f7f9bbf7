"""`python -m pipeline <command>`: every stage by hand, with the arguments the DAG uses."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipeline import db, demo, registry, runs, stages
from pipeline.config import ConfigError, load_config
from pipeline.runs import error_line
from pipeline.settings import Settings


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


MAX_MARGIN = 0.5  # the same bound as the retrain DAG's `margin` param


def watermark_arg(text: str) -> datetime:
    """--watermark: an ISO timestamp (UTC unless it says otherwise), not in the future."""
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO timestamp, e.g. 2026-07-01T00:00:00+00:00") from None
    stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    if stamp > datetime.now(UTC):
        raise argparse.ArgumentTypeError(f"{text} is in the future: a run reads rows recorded up to its watermark, "
                                         "and rows not recorded yet cannot be read")
    return stamp


def margin_arg(text: str) -> float:
    """--margin: a relative RMSE improvement between 0 and MAX_MARGIN, as the DAG's param allows."""
    try:
        margin = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= margin <= MAX_MARGIN:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is outside [0, {MAX_MARGIN}] (0.01 means 1 %)")
    return margin


def count_arg(text: str) -> int:
    """A count of at least 1."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return count


def _run(args: argparse.Namespace) -> stages.Run:
    """The run a command works on; a new id is kept on `args`, so a failure can be recorded against it."""
    args.run_id = args.run_id or f"cli__{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    return stages.Run(run_id=args.run_id, watermark=args.watermark or datetime.now(UTC), triggered_by="cli")


def _drift(pairs: list[str], flag: str = "--drift", example: str = "bmi=+4") -> dict[str, float]:
    """Parse `column=+shift` pairs."""
    drift = {}
    for pair in pairs:
        column, sep, shift = pair.partition("=")
        if not sep:
            raise SystemExit(f"{flag} expects column=shift (e.g. {example}), got '{pair}'")
        drift[column.strip()] = float(shift)
    return drift


def cmd_init_db(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    return {"applied": db.apply_schema(ws.engine)}


def cmd_seed_demo(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    db.apply_schema(ws.engine)
    return {"inserted": demo.seed_demo(ws.engine), "table": demo.DEMO_TABLE}


def cmd_seed_clinic_export(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    return {"inserted": demo.seed_clinic_export(ws.engine), "table": demo.CLINIC_TABLE}


def cmd_simulate_arrivals(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    ids = demo.simulate_arrivals(ws.engine, args.rows, args.seed, _drift(args.drift), labelled=not args.unlabelled,
                                 bad_rows=args.bad_rows)
    return {"inserted": len(ids), "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}


def cmd_ingest(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    run = _run(args)
    return {"run_id": run.run_id, **stages.ingest_snapshot(ws, run)}


def cmd_validate(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    return stages.validate_snapshot(ws, _run(args), args.snapshot)


def cmd_train(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    return stages.train_candidate(ws, _run(args), args.snapshot)


def cmd_evaluate(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    return stages.evaluate_candidate(ws, _run(args), args.version, args.margin)


def _operator() -> str:
    return f"cli:{os.environ.get('USER', 'operator')}"


def cmd_promote(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    """Apply the run's recorded decision; with --to, make that version champion by the operator's choice."""
    if args.to is None:
        if args.reason is not None or args.force:
            raise ValueError("--reason and --force go with --to VERSION (making a version champion by hand)")
        return stages.promote_candidate(ws, _run(args), dry_run=args.dry_run, actor="cli")
    if args.dry_run or args.watermark:
        raise ValueError("--dry-run and --watermark apply a run's recorded decision; they do not go with --to")
    from pipeline import champion

    run_id = args.run_id or f"promote__{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    return champion.promote_version(ws, run_id, args.to, args.reason or "", actor=_operator(), force=args.force)


def cmd_shadow(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    """The shadow set: list it, or add or remove one version, as an event."""
    from pipeline import champion

    added = champion.last_kept_candidate(ws) if args.add_rejected else args.add
    if added is not None:
        result = champion.add_shadow(ws, added, _operator(), args.reason)
    elif args.remove is not None:
        result = champion.remove_shadow(ws, args.remove, _operator(), args.reason)
    else:
        result = champion.shadows(ws)
    if args.json:
        return result
    print(f"model {result['model']}: champion version {result['champion']}; in shadow "
          f"({len(result['shadows'])} of at most {result['max_shadows']}):")
    for shadow in result["shadows"]:
        e = shadow["evidence"]
        print(f"  v{shadow['version']}  added {shadow['added_at']:%Y-%m-%d %H:%M:%S} by {shadow['added_by']}: "
              f"{shadow['reason']}  ({e['shadow_forecasts']} shadow forecasts in {e['shadow_runs']} runs, "
              f"{e['shadow_forecasts_with_outcome']} with their outcome known)")
    if not result["shadows"]:
        print("  none")
    return None


def cmd_retrain(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    """All stages in order, outside Airflow (the DAG runs the same functions)."""
    run = _run(args)
    with runs.running(ws.engine, ws.settings, run.run_id, "retrain"):  # one lock for the whole command
        return _retrain(ws, run, args)


def _retrain(ws: stages.Workspace, run: stages.Run, args: argparse.Namespace) -> Any:
    params = {"margin": args.margin, "dry_run": args.dry_run, "force": args.force}
    snapshot = stages.ingest_snapshot(ws, run, params)
    if not stages.has_new_data(ws, run, snapshot["snapshot_hash"], force=args.force):
        return {"run_id": run.run_id, "status": "skipped", "snapshot_hash": snapshot["snapshot_hash"]}
    checked = stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])
    candidate = stages.train_candidate(ws, run, checked["clean_snapshot_hash"])
    stages.evaluate_candidate(ws, run, candidate["version"], args.margin)
    return {"run_id": run.run_id, **stages.promote_candidate(ws, run, dry_run=args.dry_run, actor="cli")}


def cmd_drift(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    result = stages.monitor_drift(ws, _run(args))
    if args.json:
        return result
    print(f"drift verdict: {result['verdict']} over {result['recent_rows']} recent rows")
    for f in result["features"]:
        print(f"  {f['feature']:<10} PSI {f['psi']:.3f} ({f['level']})  {f['test']} p={f['p_value']:.2g}"
              f"{'  DRIFT' if f['drifted'] else ''}")
    if result["report_path"]:
        print(f"report: {result['report_path']}")
    return None


def cmd_performance(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    """The forecasts judged on the outcomes known now, per version; the champion's verdict. Sends no retrain
    signal: the monitor_performance DAG does (an event on the retrain asset)."""
    from pipeline import performance

    result = performance.monitor_performance(ws, _run(args), send_signal=False)
    if args.json:
        return result
    print(f"performance of {result['model']} as of {result['as_of']:%Y-%m-%d %H:%M:%S %Z}: {result['verdict']}")
    print(f"  {result['reason']}")
    for warning in result["warnings"]:
        print(f"  warning: {warning}")
    for v in result["versions"]:
        holdout = "—" if v["holdout_rmse"] is None else f"{v['holdout_rmse']:.2f} (x{v['ratio']:.2f})"
        print(f"  v{v['version']} {v['source']:<6} {v['outcomes']:>6} outcomes  live RMSE {v['live_rmse']:.2f}  "
              f"holdout {holdout}  MAE {v['mae']:.2f}  bias {v['bias']:+.2f}  coverage {v['coverage']:.0%} "
              f"(nominal {v['nominal_coverage']:.0%}){'  champion' if v['champion'] else ''}"
              f"{'  DEGRADED' if v['degraded'] else ''}")
    for s in result["shadows"]:
        shown = "" if s["rows"] == 0 else (f": RMSE {s['shadow_rmse']:.2f} vs {s['champion_rmse']:.2f}, squared "
                                          f"error {s['mean_difference']:+.1f} [{s['low']:+.1f}, {s['high']:+.1f}]")
        print(f"  shadow v{s['shadow_version']} vs champion v{s['champion_version']} on {s['rows']} shared records"
              f"{shown}: {s['verdict']}")
    print(f"report: {result['report_path']}")
    return None


def cmd_simulate_outcomes(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    from pipeline import outcomes

    return outcomes.fill_outcomes(ws.engine, ws.model, args.months, args.seed,
                                  _drift(args.shift, "--shift", "glucose=+30"))


def cmd_quality(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    """The last validations: rows read, valid, quarantined by reason."""
    with ws.engine.connect() as conn:
        history = registry.quality_history(conn, ws.model, args.runs)
    if args.json:
        return history
    def by_reason(counts: dict[str, int] | None) -> dict[str, int]:
        return dict(sorted((counts or {}).items()))  # jsonb keeps its own key order

    for v in history:
        print(f"{v['run_id']}: read {v['rows_read']}, valid {v['rows_valid']}, quarantined {v['rows_quarantined']}"
              f" {by_reason(v['reason_counts'])}; awaiting outcome {v['rows_unlabelled'] or 0}"
              f" ({v['unlabelled_faulty'] or 0} with faults {by_reason(v['unlabelled_reason_counts'])})"
              f"{'' if v['success'] else '  FAILED'}")
    return None


def cmd_history(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    """Every change of champion: when, from which version to which, by what, and why."""
    with ws.engine.connect() as conn:
        events = registry.promotion_history(conn, ws.model)
    if args.json:
        return events
    for e in events:
        print(f"{e['at']:%Y-%m-%d %H:%M:%S} v{e['from_version'] or '-'} -> v{e['to_version']}  "
              f"by {e['actor']} ({e['run_id']}): {e['reason']}")
    return None


def cmd_rollback(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    run_id = args.run_id or f"rollback__{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    return stages.rollback_champion(ws, run_id, args.reason, args.to, actor=f"cli:{os.environ.get('USER', 'operator')}",
                                    force=args.force)


def cmd_score(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    """Forecast the records that need one with the champion (the score_patients DAG runs the same)."""
    from pipeline import scoring

    result = scoring.score_batch(ws, args.scoring_run_id or f"score__{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
    if args.json:
        return result
    print(f"scoring run {result['run_id']}: {result['rows_selected']} records selected ({result['score_records']}), "
          f"{result['rows_scored']} scored by version {result['version']} of {result['model']} "
          f"(interval {result['coverage']:.0%}), {result['rows_refused']} refused {result['reason_counts']}")
    for shadow in result["shadows"]:
        print(f"  shadow version {shadow['version']}: " + (f"{shadow['rows_scored']} scored" if shadow["status"] == "done"
                                                           else f"stopped: {shadow['reason']}"))
    return None


def cmd_card(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    from pipeline import cards

    pages = {"card": str(cards.render_model_card(ws, args.version))}
    if args.comparison:
        pages["comparison"] = str(cards.render_comparison(ws, args.comparison))
    return pages


def cmd_reproduce(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    result = stages.reproduce_version(ws, args.version)
    if not result["predictions_identical"]:
        print(f"version {args.version} did NOT reproduce", file=sys.stderr)
    return result


def _evaluation_of_version(conn: Any, champion: dict[str, Any] | None) -> dict[str, Any] | None:
    """The evaluation of the run that trained the champion (a rollback's run has none), if recorded."""
    if champion is None:
        return None
    try:
        return registry.get_evaluation(conn, champion["run_id"])
    except LookupError:
        return None


def status_report(ws: stages.Workspace, runs: int = 5) -> dict[str, Any]:
    """The champion (version, metrics, snapshot, when promoted) and the latest runs."""
    with ws.engine.connect() as conn:
        champion = registry.current_champion(conn, ws.model)
        recent = registry.recent_runs(conn, ws.model, runs)
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


def cmd_status(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    report = status_report(ws, args.runs)
    if args.json:
        return report
    champion = report["champion"]
    print(f"model {report['model']} ({ws.config.path})")
    if champion is None:
        print("no champion yet")
    else:
        m = champion["holdout_metrics"] or {}
        print(f"champion: version {champion['version']} ({champion['model_family']}), promoted "
              f"{champion['promoted_at']:%Y-%m-%d %H:%M:%S %Z} by {champion['promoted_by_run']}")
        print(f"  holdout RMSE {m.get('rmse', float('nan')):.2f}  MAE {m.get('mae', float('nan')):.2f}  "
              f"R² {m.get('r2', float('nan')):.3f}  on {m.get('n')} rows")
        print(f"  snapshot {champion['snapshot_hash'][:16]}…  artifact {champion['artifact_hash'][:16]}…")
    for run in report["recent_runs"]:
        print(f"run {run['run_id']}: {run_state(run)} - {run['reason'] or ''}")
    return None


def cmd_serve(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    """`serve`: the REST API on the champion, until interrupted; refuses to start without API tokens."""
    from pipeline import serving

    serving.serve(ws, serving.tokens_from_environment(os.environ), args.host, args.port, args.insecure_local)
    return None


def cmd_db_url(ws: stages.Workspace, args: argparse.Namespace) -> Any:
    print(ws.engine.url.render_as_string(hide_password=False))
    return None


def exec_airflow(settings: Settings, airflow_args: list[str]) -> None:
    """Replace this process with `airflow ...`, configured for this project."""
    from pipeline.localenv import ADMIN_USER, admin_password, airflow_environment, airflow_home

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


def check_config(settings: Settings) -> int:
    """`check-config`: load and check the config (and its suite) alone, touching no database."""
    try:
        config = load_config(settings.config_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print({"config": str(config.path), "model": config.model, "ok": True})
    return 0


def stop_embedded(settings: Settings) -> int:
    """`db-stop`: stop the embedded server without starting one first."""
    stopped = db.stop_embedded_postgres(settings.pgdata_dir)
    where = settings.pgdata_dir
    print(f"stopped embedded PostgreSQL (pid {stopped}) on {where}" if stopped
          else f"no embedded PostgreSQL running on {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("--config", metavar="PATH", help="the model's config file (default: PIPELINE_CONFIG, "
                        "else pipeline.yaml); every command works on the model it names")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Any, help_text: str, run: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if run:
            p.add_argument("--run-id", help="the run to record under (the DAG passes its run id)")
            p.add_argument("--watermark", type=watermark_arg,
                           help="ISO timestamp: read rows recorded up to here (default now; never in the future)")
        return p

    add("init-db", cmd_init_db, "apply the SQL files in sql/ (safe twice)")
    add("seed-demo", cmd_seed_demo, "load the 442-patient diabetes study into the source table")
    add("seed-clinic-export", cmd_seed_clinic_export, "load the worked example's clinic export into clinic.visits "
        "(its own column names, d/m/Y text dates, a few faults; see examples/clinic/)")
    p = add("simulate-arrivals", cmd_simulate_arrivals, "append new plausible labelled records")
    p.add_argument("--rows", type=count_arg, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drift", action="append", default=[], metavar="COLUMN=SHIFT",
                   help="shift a numeric column, e.g. bmi=+4 (repeatable)")
    p.add_argument("--unlabelled", action="store_true", help="outcome not known yet (progression_12m NULL)")
    p.add_argument("--bad-rows", type=int, default=0, metavar="K",
                   help="make K rows faulty (unknown sex, kPa blood pressure, birth after visit, ...) and K more messy")
    add("ingest", cmd_ingest, "snapshot the labelled rows up to the watermark", run=True)
    for name, handler, text in (("validate", cmd_validate, "validate a snapshot with the expectation suite"),
                                ("train", cmd_train, "train the candidate on a clean snapshot (validate's output)")):
        add(name, handler, text, run=True).add_argument("--snapshot", required=True, help="snapshot hash")
    p = add("evaluate", cmd_evaluate, "score candidate and champion on the holdout, record the decision", run=True)
    p.add_argument("--version", type=count_arg, required=True, help="candidate model version")
    p.add_argument("--margin", type=margin_arg, help="relative RMSE improvement needed, 0 to 0.5 (default: config)")
    p = add("promote", cmd_promote, "apply the run's recorded decision; or, with --to, make a version champion by "
            "hand", run=True)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--to", type=count_arg, metavar="VERSION", help="make this registered version champion (a shadow, "
                   "say): hash-checked, recorded as an event with its live evidence")
    p.add_argument("--reason", help="why (needed with --to): recorded with the event")
    p.add_argument("--force", action="store_true",
                   help="with --to: even a version that failed its policy checks (recorded with the event)")
    p = add("shadow", cmd_shadow, "the versions the batch also scores beside the champion, never shown to the CRM: "
            "list them, or add or remove one (at most serving.max_shadows)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--add", type=count_arg, metavar="VERSION")
    which.add_argument("--add-rejected", action="store_true",
                       help="add the candidate of the latest run that was evaluated and kept the champion")
    which.add_argument("--remove", type=count_arg, metavar="VERSION")
    p.add_argument("--reason", default="", help="why: recorded with the event")
    p.add_argument("--json", action="store_true")
    p = add("retrain", cmd_retrain, "every stage in order, without Airflow", run=True)
    p.add_argument("--margin", type=margin_arg, help="relative RMSE improvement needed, 0 to 0.5 (default: config)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--force", action="store_true", help="retrain even when no new labelled rows arrived")
    p = add("drift", cmd_drift, "compare recent records with the champion's training snapshot", run=True)
    p.add_argument("--json", action="store_true", help="print the full per-feature result as JSON")
    p = add("performance", cmd_performance, "judge the forecasts on the outcomes known now: per version live "
            "against holdout RMSE, MAE, bias, coverage; the champion's verdict (sends no retrain signal)", run=True)
    p.add_argument("--json", action="store_true", help="the full result, every metric row included, as JSON")
    p = add("simulate-outcomes", cmd_simulate_outcomes, "fill in the outcomes of forecast records whose visit was "
            "--months ago or earlier (demo table), by UPDATE: the trigger stamps label_recorded_at")
    p.add_argument("--months", type=int, default=12, help="the outcome is known this many months after the visit: "
                   "visits on or before today minus MONTHS get theirs (0: every forecast record; default 12)")
    p.add_argument("--shift", action="append", default=[], metavar="COLUMN=SHIFT",
                   help="concept shift: outcomes computed as if COLUMN were SHIFT higher (stored value unchanged), "
                   "e.g. glucose=+30 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p = add("status", cmd_status, "the champion and the latest runs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs", type=count_arg, default=5)
    p = add("quality", cmd_quality, "the last validations: rows read, valid, quarantined by reason")
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs", type=count_arg, default=10)
    p = add("history", cmd_history, "every change of champion (append-only)")
    p.add_argument("--json", action="store_true")
    p = add("rollback", cmd_rollback, "make an earlier version champion again, as a recorded event")
    p.add_argument("--to", type=count_arg, help="the version (default: the one the champion replaced)")
    p.add_argument("--reason", required=True)
    p.add_argument("--force", action="store_true",
                   help="roll back even to a version that failed its policy checks (recorded with the event)")
    p.add_argument("--run-id", help="the id to record the rollback under")
    p = add("score", cmd_score, "forecast every record that needs one with the champion, into pipeline.predictions")
    p.add_argument("--run-id", dest="scoring_run_id", help="the scoring run's id (again: its rows are replaced)")
    p.add_argument("--json", action="store_true")
    p = add("card", cmd_card, "write a version's model card (and a decision's comparison page); prints the paths")
    p.add_argument("version", type=count_arg)
    p.add_argument("--comparison", metavar="RUN_ID", help="also the champion/challenger page of this run's decision")
    p = add("reproduce", cmd_reproduce, "rebuild a version from its snapshot; compare predictions bit for bit")
    p.add_argument("version", type=count_arg)
    p = add("serve", cmd_serve, "the REST API: forecasts from the champion, hot-swapped when it changes "
            "(tokens from the file PIPELINE_API_TOKEN_FILE names)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--insecure-local", action="store_true",
                   help="serve without authentication when no tokens are configured (this machine only)")
    add("db-url", cmd_db_url, "print the database URL in use (starts the embedded server if needed)")
    sub.add_parser("db-stop", help="stop the embedded PostgreSQL (PIPELINE_PGDATA); data is kept")
    sub.add_parser("check-config", help="check the config and its expectation suite, without a database")
    p = sub.add_parser("airflow", help="run the airflow CLI configured for this project")
    p.add_argument("airflow_args", nargs=argparse.REMAINDER)
    return parser


def end_failed_run(ws: stages.Workspace, run_id: str, reason: str, kind: str) -> None:
    """Record the command's run as failed, so it never stays 'running'; a database that is gone is said so."""
    try:
        stages.mark_run_failed(ws, run_id, reason, kind)
    except sa.exc.DBAPIError:
        print(f"warning: run {run_id} could not be marked failed: the database is unreachable", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    if args.config:
        settings = dataclasses.replace(settings, config_path=Path(args.config))
    if args.command == "airflow":
        exec_airflow(settings, args.airflow_args)
    if args.command == "db-stop":
        return stop_embedded(settings)
    if args.command == "check-config":
        return check_config(settings)
    ws = None
    try:
        ws = stages.Workspace.open(settings)
        result = args.handler(ws, args)
    except Exception as exc:  # noqa: BLE001 - the CLI reports every failure as one clear line
        line = error_line(exc, settings)
        if ws is not None and getattr(args, "run_id", None):
            end_failed_run(ws, args.run_id, f"{args.command}: {line}", runs.failure_kind(exc))
        print(f"error: {line}", file=sys.stderr)
        return 1
    if result is not None:
        _print(result)
    return 0
