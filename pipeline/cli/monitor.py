"""After deployment: drift and performance."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline import stages
from pipeline.cli.common import aligned, counts, run_of, when
from pipeline.workspace import Workspace


def cmd_drift(ws: Workspace, args: argparse.Namespace) -> Any:
    return stages.monitor_drift(ws, run_of(args))


def text_drift(result: dict[str, Any]) -> str:
    rows = [[f["feature"], f"PSI {f['psi']:.3f}", f"({f['level']})", f"{f['test']} p={f['p_value']:.2g}",
             "DRIFT" if f["drifted"] else ""] for f in result["features"]]
    report = [f"report: {result['report_path']}"] if result["report_path"] else []
    quarantined = result.get("quarantined_rows") or 0
    quality = [f"quarantined by the contract and left out (a data-quality signal, not drift): {quarantined} rows "
               f"{result.get('quarantine_reasons') or {}}"] if quarantined else []
    return "\n".join([f"drift verdict: {result['verdict']} over {result['recent_rows']} recent rows",
                      *quality, *aligned(rows), *report])


def cmd_performance(ws: Workspace, args: argparse.Namespace) -> Any:
    """The forecasts judged on the outcomes known now, per version; the champion's verdict. Sends no retrain
    signal: the monitor_performance DAG does (an event on the retrain asset)."""
    from pipeline.monitoring import performance

    return performance.monitor_performance(ws, run_of(args), send_signal=False)


def num(value: float | None, spec: str = ".2f") -> str:
    """A metric as text; '-' where none could be stored (a stored report holds a non-finite one as null)."""
    return "-" if value is None else format(value, spec)


def text_performance(result: dict[str, Any]) -> str:
    refused = result.get("refused_outcomes") or {}
    lines = [f"performance of {result['model']} as of {when(result['as_of'])}: {result['verdict']}",
             f"  {result['reason']}", *(f"  warning: {warning}" for warning in result["warnings"]),
             f"  outcomes refused by the contract (not judged): {refused.get('refused', 0)} of "
             f"{refused.get('outcomes', 0)} ({counts(refused.get('reason_counts'))})"]
    lines += aligned([[f"v{v['version']}", v["source"], f"{v['outcomes']} outcomes", f"live RMSE {num(v['live_rmse'])}",
                       "holdout " + ("-" if v["holdout_rmse"] is None else
                                     f"{num(v['holdout_rmse'])} (x{num(v['ratio'])})"),
                       f"MAE {num(v['mae'])}", f"bias {num(v['bias'], '+.2f')}",
                       f"coverage {num(v['coverage'], '.0%')} (nominal {num(v['nominal_coverage'], '.0%')})",
                       " ".join(["champion"] * v["champion"] + ["DEGRADED"] * v["degraded"])]
                      for v in result["versions"]])
    for s in result["shadows"]:
        shown = "" if s["rows"] == 0 else (f": RMSE {num(s['shadow_rmse'])} vs {num(s['champion_rmse'])}, squared "
                                          f"error {num(s['mean_difference'], '+.1f')} [{num(s['low'], '+.1f')}, "
                                          f"{num(s['high'], '+.1f')}]")
        lines.append(f"  shadow v{s['shadow_version']} vs champion v{s['champion_version']} on {s['rows']} shared "
                     f"records{shown}: {s['verdict']}")
    return "\n".join([*lines, f"report: {result['report_path']}"])


def register(add: Any) -> None:
    """The parsers of the monitoring commands."""
    add("drift", cmd_drift, "compare recent records with the champion's training snapshot", run=True, text=text_drift,
        json_help="the full per-feature result: {verdict, recent_rows, features: [{feature, psi, level, test, "
        "p_value, drifted, ...}], report_path, ...}")
    add("performance", cmd_performance, "judge the forecasts on the outcomes known now: per version live "
        "against holdout RMSE, MAE, bias, coverage; the champion's verdict (sends no retrain signal)", run=True,
        text=text_performance, json_help="the full result, every metric row included: {model, as_of, verdict, "
        "reason, warnings, versions, shadows, refused_outcomes: {outcomes, refused, reason_counts, over_limit, signal, "
        "...}, report_path, signal, ...}")
