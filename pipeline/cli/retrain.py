"""A retrain's stages by hand, with the arguments the DAG uses: ingest, validate, train, evaluate, promote, retrain, card, reproduce, reevaluate."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from pipeline import stages
from pipeline.cli.common import (
    UnknownTarget,
    aligned,
    continued_run,
    count_arg,
    counts,
    known_run,
    margin_arg,
    metrics_line,
    operator_name,
    registered_version,
    run_of,
    text_champion_changed,
)
from pipeline.contract import params
from pipeline.registry import records, runs
from pipeline.registry.runs import Run
from pipeline.workspace import Workspace


def cmd_ingest(ws: Workspace, args: argparse.Namespace) -> Any:
    run = run_of(args)
    return {"run_id": run.run_id, **stages.ingest_snapshot(ws, run)}


def text_ingest(result: dict[str, Any]) -> str:
    awaiting = result["unlabelled_rows"]
    return "\n".join([f"run {result['run_id']}: {result['row_count']} labelled rows of {result['source_table']} "
                      f"recorded up to {result['watermark']}, frozen", *aligned([
                          ["snapshot", result["snapshot_hash"]], ["file", result["path"]],
                          ["awaiting outcome", f"{awaiting} rows" + (f", frozen as {result['unlabelled_hash']}"
                                                                      if result["unlabelled_hash"] else "")]])])


def cmd_validate(ws: Workspace, args: argparse.Namespace) -> Any:
    return stages.validate_snapshot(ws, continued_run(ws, args), args.snapshot)


def text_validate(result: dict[str, Any]) -> str:
    return "\n".join([
        f"snapshot {result['snapshot_hash']}: read {result['rows_read']} rows, {result['rows_valid']} valid, "
        f"{result['rows_quarantined']} quarantined ({counts(result['reason_counts'])})",
        *aligned([["clean snapshot", result["clean_snapshot_hash"]],
                  ["awaiting outcome", f"{result['rows_unlabelled'] or 0} rows, {result['unlabelled_faulty'] or 0} "
                                       f"with faults ({counts(result['unlabelled_reason_counts'])})"],
                  ["report", str(result["report_path"] or "-")]])])


def cmd_train(ws: Workspace, args: argparse.Namespace) -> Any:
    return stages.train_candidate(ws, continued_run(ws, args), args.snapshot)


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


def cmd_evaluate(ws: Workspace, args: argparse.Namespace) -> Any:
    check_candidate_of_run(ws, args.run_id, args.version)
    return stages.evaluate_candidate(ws, run_of(args), args.version, args.margin)


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


def cmd_promote(ws: Workspace, args: argparse.Namespace) -> Any:
    """Apply the run's recorded decision; with --to, make that version champion by the operator's choice."""
    if args.to is None:
        if args.reason is not None or args.force:
            raise ValueError("--reason and --force go with --to VERSION (making a version champion by hand)")
        check_decision_of_run(ws, args.run_id)
        return stages.promote_candidate(ws, run_of(args), dry_run=args.dry_run, actor="cli")
    if args.dry_run or args.watermark:
        raise ValueError("--dry-run and --watermark apply a run's recorded decision; they do not go with --to")
    from pipeline import champion

    run_id = args.run_id or f"promote__{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    return champion.promote_version(ws, run_id, args.to, args.reason or "", actor=operator_name(), force=args.force)


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


def cmd_retrain(ws: Workspace, args: argparse.Namespace) -> Any:
    """All stages in order, outside Airflow (the DAG runs the same functions)."""
    run = run_of(args)
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
    if not result["predictions_identical"] and not result.get("trained_on_erased"):
        print(f"version {args.version} did NOT reproduce", file=sys.stderr)
    return result


def text_reproduce(result: dict[str, Any]) -> str:
    verdict = "reproduces" if result["predictions_identical"] else "did NOT reproduce"
    note = [result["erasure_note"]] if result.get("erasure_note") else []
    same = {True: "identical", False: "different"}
    differences = ", ".join(f"{name} {v['recorded']} then, {v['now']} now"
                            for name, v in sorted(result["library_differences"].items())) or "none"
    return "\n".join([f"version {result['version']} {verdict}: predictions {same[result['predictions_identical']]} "
                      f"on {result['rows_compared']} rows", *aligned([
                          ["artifact", same[result["artifact_identical"]]],
                          ["snapshot", result["snapshot_hash"]],
                          ["training rows", f"{result['train_rows']} (recorded {result['recorded_train_rows']})"],
                          ["code version", f"{result['code_version_recorded']} (now {result['code_version_now']})"],
                          ["library differences", differences]]), *note])


def cmd_reevaluate(ws: Workspace, args: argparse.Namespace) -> Any:
    known_run(ws, args.run_id)
    result = stages.reproduce_evaluation(ws, args.run_id)
    if not (result["decision_identical"] and result["interval_identical"]):
        print(f"the evaluation of run {args.run_id} did NOT reproduce", file=sys.stderr)
    return result


def text_reevaluate(result: dict[str, Any]) -> str:
    def interval(r: dict[str, Any] | None) -> str:
        return "none" if r is None else f"[{r['low']:+.3f}, {r['high']:+.3f}] by {r['method']}, {r['samples']} resamples"

    same = {True: "identical", False: "different"}
    return "\n".join([f"run {result['run_id']}: version {result['candidate_version']} against "
                      f"{result['champion_version'] or 'no champion'}", *aligned([
                          ["decision", f"{result['decision_now']} (recorded {result['decision_recorded']}): "
                                       f"{same[result['decision_identical']]}"],
                          ["interval", f"{interval(result['resampling_now'])} (recorded "
                                       f"{interval(result['resampling_recorded'])}): {same[result['interval_identical']]}"]])])


def register(add: Any) -> None:
    """The parsers of a retrain's stages."""
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
    p = add("retrain", cmd_retrain, "every stage in order, without Airflow", run=True, text=text_retrain,
            json_help="{run_id, status, candidate_version, reason} (skipped: {run_id, status, snapshot_hash})")
    p.add_argument("--margin", type=margin_arg, help="relative RMSE improvement needed, 0 to 0.5 (default: config)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--force", action="store_true", help="retrain even when no new labelled rows arrived")
    p = add("card", cmd_card, "write a version's model card (and a decision's comparison page); prints the paths",
            text=text_pages, json_help="{card, comparison}")
    p.add_argument("version", type=count_arg)
    p.add_argument("--comparison", metavar="RUN_ID", help="also the champion/challenger page of this run's decision")
    p = add("reproduce", cmd_reproduce, "rebuild a version from its snapshot; compare predictions bit for bit",
            text=text_reproduce, json_help="{version, predictions_identical, rows_compared, artifact_identical, "
            "snapshot_hash, train_rows, recorded_train_rows, library_differences, code_version_recorded, "
            "code_version_now}")
    p.add_argument("version", type=count_arg)
    p = add("reevaluate", cmd_reevaluate, "evaluate a run's candidate again with its recorded policy and resampling "
            "method; compare the decision and the interval", text=text_reevaluate,
            json_help="{run_id, candidate_version, champion_version, decision_recorded, decision_now, "
            "resampling_recorded, resampling_now, interval_identical, decision_identical}")
    p.add_argument("run_id")
