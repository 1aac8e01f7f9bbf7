"""Live performance: forecasts judged on the outcomes that arrived after them, and a degraded champion.

An outcome counts once it is known (target set, its label time, the contract's `label_timestamp_column`,
at or before the run's as-of time). It is judged against the forecasts made for its record BEFORE it
became known, each by the version that made it: per version, the latest such forecast. Forecasts from
the batch and the REST API are "served"; shadow forecasts are judged apart, per shadow version. Months
are those of the outcome's label time (when the evidence arrived). Bias is the mean of outcome minus
forecast: positive means the forecasts were too low.

An outcome is judged only when the data contract accepts it and the record it completes: the outcome rows go
through the quality classification training rows go through (`quality.classify_rows`, the suite and the
plausibility checks). A refused outcome (say -999 for "unknown", NaN, 1e308) is counted by reason in the report
and moves no metric, verdict or signal; more refused than `quality.max_quarantine_share` is said as a
data-quality signal, never as degradation.

The current champion is degraded when its live RMSE is over `max_ratio` times its holdout RMSE (from its
evaluation) on at least `min_outcomes` judged forecasts, and a seeded bootstrap interval of live / holdout
RMSE at `confidence` lies wholly above `max_ratio`. Both RMSEs are estimates (the holdout of the demo has 88
rows), so the interval resamples the live outcomes and, independently, the holdout rows (their squared
errors, stored at evaluation); a version evaluated before those were stored has its holdout RMSE taken as
exact, and its verdict says so. A threshold left out disables the verdict (a warning,
in the log and the report), never the report. A degraded champion sends one signal per version, and
another only when `min_outcomes` more outcomes were judged since, or no retrain answered it in time.
"""

from __future__ import annotations

import html
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.contract.config import DatasetContract, PerformancePolicy, QualityPolicy, SliceSpec
from pipeline.data import ingest, quality, validate
from pipeline.model import cards, evaluate
from pipeline.registry import records
from pipeline.serving.scoring import PREDICTIONS
from pipeline.store import artifacts

if TYPE_CHECKING:
    from pipeline.registry.runs import Run
    from pipeline.workspace import Workspace

log = logging.getLogger(__name__)

_SIGNAL_LOCK_ID = 72_410_013  # pg_advisory_xact_lock(key, hashtext(model)): one performance signal decision at a time
HOLDOUT_ERRORS = "residuals"  # the artifact kind a version's holdout squared errors are stored under (.npy)
BOOTSTRAP_CELLS = 4_000_000  # resampled rows drawn at once: bounds the bootstrap's memory (32 MB of indices)
DEFAULT_CONFIDENCE = 0.95  # the shadow comparison's interval when monitoring.performance.confidence is not set
RESIGNAL_AFTER = timedelta(minutes=30)  # a signal no retrain run answered within this is sent again
JUDGED_COLUMNS = ["source_id", "version", "source", "prediction", "lower", "upper", "coverage", "made_at",
                  "labelled_at"]


# --- which forecasts are judged, on which outcomes ---------------------------------------------

def judged_forecasts_query(contract: DatasetContract, model: str, as_of: datetime) -> sa.Select[Any]:
    """Per version, source kind and record: the latest forecast made before the record's outcome became known,
    for outcomes known at `as_of`."""
    table = ingest.source_table(contract)
    p = PREDICTIONS.c
    labelled_at = ingest.labelled_at(contract, table)
    kind = sa.case((p.source == "shadow", "shadow"), else_="served")
    return (sa.select(p.source_id, p.version, kind.label("source"), p.prediction, p.lower, p.upper, p.coverage,
                      p.made_at, labelled_at.label("labelled_at"))
            .select_from(PREDICTIONS.join(table, sa.cast(table.c[contract.id_column], sa.Text) == p.source_id))
            .where(p.model == model, table.c[contract.target_column].is_not(None),
                   labelled_at <= sa.bindparam("as_of", as_of), p.made_at < labelled_at)
            .distinct(p.version, kind, p.source_id)
            .order_by(p.version, kind, p.source_id, p.made_at.desc(), p.prediction_id.desc()))


def outcome_rows_query(contract: DatasetContract, model: str, as_of: datetime) -> sa.Select[Any]:
    """The source rows whose outcome is known at `as_of` and that the model forecast at least once."""
    table = ingest.source_table(contract)
    forecast_ids = sa.select(PREDICTIONS.c.source_id).where(PREDICTIONS.c.model == model).distinct()
    return (sa.select(*table.c)
            .where(table.c[contract.target_column].is_not(None),
                   ingest.labelled_at(contract, table) <= sa.bindparam("as_of", as_of),
                   sa.cast(table.c[contract.id_column], sa.Text).in_(forecast_ids))
            .order_by(table.c[contract.id_column]))


def id_texts(ids: pd.Series) -> list[str]:
    """Source ids as pipeline.predictions holds them (text): 17, not 17.0."""
    return [str(quality.source_id(v)) for v in ids]


def judged_frame(forecasts: pd.DataFrame, rows: pd.DataFrame, contract: DatasetContract,
                 slices: Sequence[SliceSpec]) -> pd.DataFrame:
    """The judged forecasts with their outcome (typed by the contract), the month of its label time, and each
    slice's group, computed from the source row's features as the evaluation computes them."""
    outcomes = pd.DataFrame({"source_id": pd.Series(id_texts(rows[contract.id_column]), dtype=object),
                             "outcome": rows[contract.target_column].astype("float64").to_numpy()})
    for spec in slices:
        outcomes[f"slice:{spec.name}"] = evaluate.slice_labels(rows, contract, spec).astype(str).to_numpy()
    judged = forecasts.merge(outcomes, on="source_id", how="inner", validate="many_to_one")
    labelled = pd.to_datetime(judged["labelled_at"], utc=True)
    judged["month"] = labelled.dt.strftime("%Y-%m")
    return judged.sort_values(["version", "source", "source_id"], kind="stable").reset_index(drop=True)


def read_judged(ws: Workspace, model: str, as_of: datetime, slices: Sequence[SliceSpec]
                ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The judged forecasts (`judged_frame`) on the outcomes the contract accepts, and the refused ones
    (`refused_outcomes`)."""
    contract = ws.config.dataset
    with ws.engine.connect() as conn:
        forecasts = pd.DataFrame(conn.execute(judged_forecasts_query(contract, model, as_of)).mappings().all(),
                                 columns=JUDGED_COLUMNS)
    raw = ingest.read_raw_rows(ws.engine, contract, outcome_rows_query(contract, model, as_of))
    verdicts = quality.classify_rows(raw, contract, validate.load_suite(contract.expectation_suite),
                                     ws.config.quality, fast=True)
    return judged_frame(forecasts, verdicts.valid, contract, slices), refused_outcomes(verdicts, contract,
                                                                                      ws.config.quality)


def refused_outcomes(verdicts: quality.QualityResult, contract: DatasetContract,
                     policy: QualityPolicy) -> dict[str, Any]:
    """The outcomes the contract refused: how many, by reason, example ids (`sample_ids`: for the report page,
    which is sealed at rest; never in the registry row, the signal, a warning or a log), and against
    `quality.max_quarantine_share` the data-quality signal (a sentence, None within the limit)."""
    n, refused = verdicts.rows_read, len(verdicts.quarantined)
    share = refused / n if n else 0.0
    counts = verdicts.reason_counts()
    ids = [quality.source_id(i) for i in verdicts.quarantined[contract.id_column].head(validate.SAMPLE_IDS)]
    over = share > policy.max_quarantine_share
    by_reason = ", ".join(f"{code} {count}" for code, count in counts.items())
    signal = (f"data quality: {refused} of {n} outcomes refused by the contract ({share:.1%}: {by_reason}; "
              "examples in the performance report), over quality.max_quarantine_share "
              f"{policy.max_quarantine_share:.1%}: fix them at the source. They are not judged, so this is not a "
              "sign of degradation") if over else None
    return {"outcomes": n, "refused": refused, "share": share, "reason_counts": counts, "sample_ids": ids,
            "limit": policy.max_quarantine_share, "over_limit": over, "signal": signal}


# --- metrics -----------------------------------------------------------------------------------

def error_metrics(part: pd.DataFrame) -> dict[str, Any]:
    """Rows, RMSE, MAE, bias (mean of outcome - forecast), interval coverage and the intervals' nominal one."""
    outcome, forecast = part["outcome"].to_numpy(float), part["prediction"].to_numpy(float)
    error = outcome - forecast
    inside = (outcome >= part["lower"].to_numpy(float)) & (outcome <= part["upper"].to_numpy(float))
    return {"rows": len(part), "rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error))),
            "bias": float(np.mean(error)), "coverage": float(np.mean(inside)),
            "nominal_coverage": float(part["coverage"].astype(float).mean())}


def metric_rows(judged: pd.DataFrame, slice_names: Sequence[str]) -> list[dict[str, Any]]:
    """Every metric row: per version and source, overall, per slice group and per month."""
    rows = []
    for (version, source), group in judged.groupby(["version", "source"], sort=True):
        key = {"version": int(version), "source": str(source)}
        rows.append({**key, "dimension": "all", "slice": "", "grp": "all", **error_metrics(group)})
        for name in slice_names:
            for label, part in group.groupby(f"slice:{name}", sort=True):
                rows.append({**key, "dimension": "slice", "slice": name, "grp": str(label), **error_metrics(part)})
        for month, part in group.groupby("month", sort=True):
            rows.append({**key, "dimension": "month", "slice": "", "grp": str(month), **error_metrics(part)})
    return rows


def bootstrap_means(values: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """The means of `samples` seeded resamples (with replacement) of `values`, drawn in blocks of at most
    BOOTSTRAP_CELLS indices, each block in one vectorised gather."""
    rng = np.random.default_rng(seed)
    n = len(values)
    means = np.empty(samples)
    block = max(1, BOOTSTRAP_CELLS // max(n, 1))
    for start in range(0, samples, block):
        stop = min(samples, start + block)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap values."""
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


def ratio_interval(squared_errors: np.ndarray, holdout_errors: np.ndarray, samples: int, confidence: float,
                   seed: int) -> tuple[float, float]:
    """The percentile bootstrap interval of live RMSE / holdout RMSE, each sample resampled on its own."""
    live = np.sqrt(bootstrap_means(squared_errors, samples, seed))
    held = np.sqrt(bootstrap_means(holdout_errors, samples, seed + 1))
    return interval(live / held, confidence)


def _interval_of_ratio(squared_errors: np.ndarray, holdout_rmse: float, holdout_errors: np.ndarray | None,
                       policy: PerformancePolicy, seed: int) -> tuple[float, float, str]:
    """The ratio's interval and what it resampled: both samples when the holdout's errors are known."""
    assert policy.confidence is not None
    if holdout_errors is not None and len(holdout_errors) >= 2:
        low, high = ratio_interval(squared_errors, holdout_errors, policy.bootstrap_samples, policy.confidence, seed)
        return low, high, f"resampling the live outcomes and the {len(holdout_errors)} holdout rows"
    low, high = interval(np.sqrt(bootstrap_means(squared_errors, policy.bootstrap_samples, seed)) / holdout_rmse,
                         policy.confidence)
    return low, high, ("resampling the live outcomes only: the holdout's per-row errors were not recorded for "
                       "this version, so its holdout RMSE is taken as exact and the interval is too narrow")


def judge_champion(squared_errors: np.ndarray, holdout_rmse: float | None, policy: PerformancePolicy,
                   seed: int, version: int | None, holdout_errors: np.ndarray | None = None) -> dict[str, Any]:
    """The champion's verdict: degraded, not_degraded, insufficient_outcomes, no_champion, no_holdout or disabled;
    with the sentence that says why and the numbers it rests on. `holdout_errors`: the squared errors of the
    holdout its RMSE came from, resampled too when given."""
    n = len(squared_errors)
    live = float(np.sqrt(squared_errors.mean())) if n else None
    ratio = live / holdout_rmse if live is not None and holdout_rmse else None
    out: dict[str, Any] = {"version": version, "outcomes": n, "live_rmse": live, "holdout_rmse": holdout_rmse,
                           "ratio": ratio, "ratio_low": None, "ratio_high": None, "degraded": False, "warnings": []}
    missing = policy.missing_thresholds()
    if version is None:
        return {**out, "verdict": "no_champion", "reason": "no champion: nothing to judge"}
    if missing:
        warning = (f"monitoring.performance {', '.join(missing)} not configured: the performance trigger is "
                   "disabled (the report is still made)")
        return {**out, "verdict": "disabled", "reason": warning, "warnings": [warning]}
    assert policy.max_ratio is not None and policy.min_outcomes is not None and policy.confidence is not None
    if not holdout_rmse:
        return {**out, "verdict": "no_holdout",
                "reason": f"version {version} has no recorded holdout RMSE (no evaluation of its run): no verdict"}
    rule = (f"degraded means live RMSE over {policy.max_ratio:g} x holdout RMSE on at least {policy.min_outcomes} "
            f"outcomes, with the {policy.confidence:.0%} bootstrap interval of the ratio wholly above "
            f"{policy.max_ratio:g}")
    if n < policy.min_outcomes:
        shown = f"live RMSE {live:.2f} is {ratio:.2f} x holdout {holdout_rmse:.2f}" if live is not None else \
            "no live RMSE yet"
        return {**out, "verdict": "insufficient_outcomes",
                "reason": f"version {version}: {n} judged outcomes, fewer than {policy.min_outcomes}; {shown} ({rule})"}
    assert live is not None and ratio is not None
    low, high, resampled = _interval_of_ratio(squared_errors, holdout_rmse, holdout_errors, policy, seed)
    degraded = bool(ratio > policy.max_ratio and low > policy.max_ratio)
    sentence = (f"version {version}: live RMSE {live:.2f} on {n} outcomes is {ratio:.2f} x its holdout RMSE "
                f"{holdout_rmse:.2f} ({policy.confidence:.0%} interval [{low:.2f}, {high:.2f}], {resampled}): "
                f"{'DEGRADED' if degraded else 'not degraded'} ({rule})")
    return {**out, "ratio_low": low, "ratio_high": high, "degraded": degraded, "interval_resamples": resampled,
            "verdict": "degraded" if degraded else "not_degraded", "reason": sentence}


def paired_shadows(judged: pd.DataFrame, champion: int | None, samples: int, confidence: float,
                   seed: int) -> list[dict[str, Any]]:
    """Each shadow version against the champion's served forecasts on the same records (both forecast, outcome
    known): rows, both RMSEs, and the mean of shadow minus champion squared error with its bootstrap interval
    (below zero: the shadow is better)."""
    if champion is None:
        return []
    served = judged.loc[(judged["source"] == "served") & (judged["version"] == champion),
                        ["source_id", "outcome", "prediction"]]
    out = []
    for version, shadow in judged.loc[judged["source"] == "shadow"].groupby("version", sort=True):
        pairs = served.merge(shadow[["source_id", "prediction"]], on="source_id", suffixes=("_champion", "_shadow"))
        row: dict[str, Any] = {"shadow_version": int(version), "champion_version": champion, "rows": len(pairs),
                               "champion_rmse": None, "shadow_rmse": None, "mean_difference": None, "low": None,
                               "high": None, "confidence": confidence, "verdict": "no shared outcomes"}
        if len(pairs):
            outcome = pairs["outcome"].to_numpy(float)
            champion_sq = (outcome - pairs["prediction_champion"].to_numpy(float)) ** 2
            shadow_sq = (outcome - pairs["prediction_shadow"].to_numpy(float)) ** 2
            difference = shadow_sq - champion_sq
            low, high = interval(bootstrap_means(difference, samples, seed), confidence)
            row.update(champion_rmse=float(np.sqrt(champion_sq.mean())), shadow_rmse=float(np.sqrt(shadow_sq.mean())),
                       mean_difference=float(difference.mean()), low=low, high=high,
                       verdict="shadow better" if high < 0 else "shadow worse" if low > 0 else "no clear difference")
        out.append(row)
    return out


def version_summaries(metrics: Sequence[Mapping[str, Any]], holdout: Mapping[int, float | None],
                      verdict: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per version and source: outcomes, live and holdout RMSE, their ratio, MAE, bias, coverage, and whether
    it is the champion and degraded."""
    out = []
    for m in metrics:
        if m["dimension"] != "all":
            continue
        held = holdout.get(m["version"])
        champion = m["version"] == verdict["version"] and m["source"] == "served"
        out.append({"version": m["version"], "source": m["source"], "outcomes": m["rows"], "live_rmse": m["rmse"],
                    "holdout_rmse": held, "ratio": m["rmse"] / held if held else None, "mae": m["mae"],
                    "bias": m["bias"], "coverage": m["coverage"], "nominal_coverage": m["nominal_coverage"],
                    "champion": champion, "degraded": bool(champion and verdict["degraded"])})
    return out


# --- the report page ---------------------------------------------------------------------------

def _plot_trend(metrics: Sequence[Mapping[str, Any]], holdout: Mapping[int, float | None],
                max_ratio: float | None, champion: int | None) -> str:
    """Live RMSE per month for each version and source, its holdout RMSE dashed, and the champion's limit."""
    figure, ax = cards.new_figure(width=7.0, height=4.5)
    monthly = [m for m in metrics if m["dimension"] == "month"]
    months = sorted({m["grp"] for m in monthly})
    for (version, source) in sorted({(m["version"], m["source"]) for m in monthly}):
        points = {m["grp"]: m["rmse"] for m in monthly if (m["version"], m["source"]) == (version, source)}
        line = ax.plot([months.index(k) for k in sorted(points)], [points[k] for k in sorted(points)], marker="o",
                       label=f"v{version} {source}")[0]
        if holdout.get(version):
            ax.axhline(holdout[version], color=line.get_color(), linestyle="--", linewidth=1,
                       label=f"v{version} holdout")
    limit = holdout.get(champion) if champion is not None else None
    if limit and max_ratio is not None:
        ax.axhline(limit * max_ratio, color="red", linestyle=":", linewidth=1,
                   label=f"limit: {max_ratio:g} x v{champion} holdout")
    ax.set_xticks(range(len(months)), months, rotation=45, ha="right")
    ax.set(ylabel="RMSE", xlabel="month of the outcome", title="Live RMSE against holdout RMSE")
    if monthly:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return cards.png(figure)


def _plot_coverage(metrics: Sequence[Mapping[str, Any]]) -> str:
    """Interval coverage per month for each version and source, against the coverage the intervals promise."""
    figure, ax = cards.new_figure(width=7.0, height=4.0)
    monthly = [m for m in metrics if m["dimension"] == "month"]
    months = sorted({m["grp"] for m in monthly})
    for (version, source) in sorted({(m["version"], m["source"]) for m in monthly}):
        mine = sorted((m for m in monthly if (m["version"], m["source"]) == (version, source)), key=lambda m: m["grp"])
        line = ax.plot([months.index(m["grp"]) for m in mine], [m["coverage"] for m in mine], marker="o",
                       label=f"v{version} {source}")[0]
        ax.axhline(float(np.mean([m["nominal_coverage"] for m in mine])), color=line.get_color(), linestyle="--",
                   linewidth=1, label=f"v{version} nominal")
    ax.set_xticks(range(len(months)), months, rotation=45, ha="right")
    ax.set(ylabel="share inside the interval", ylim=(0, 1.05), xlabel="month of the outcome",
           title="Interval coverage")
    if monthly:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return cards.png(figure)


def _plot_bias(metrics: Sequence[Mapping[str, Any]], version: int | None) -> str:
    """Bias (mean of outcome - forecast) per slice group of one version's served forecasts."""
    figure, ax = cards.new_figure(width=7.0, height=4.0)
    rows = [m for m in metrics if m["dimension"] == "slice" and m["version"] == version and m["source"] == "served"]
    ax.bar(range(len(rows)), [m["bias"] for m in rows])
    ax.axhline(0.0, color="black", linewidth=1)
    ax.set_xticks(range(len(rows)), [f"{m['slice']}={m['grp']}" for m in rows], rotation=45, ha="right")
    ax.set(ylabel="outcome - forecast", title=f"Bias by slice (v{version} served)" if rows else "No served outcomes")
    return cards.png(figure)


def coverage_check(metric: Mapping[str, Any]) -> str:
    """A metric row's interval coverage as its exact binomial interval, and whether that lies below the nominal
    coverage, above it, or holds it ('ok')."""
    from pipeline.model import intervals

    rows = int(metric["rows"])
    if not rows:
        return ""
    inside = np.arange(rows) < round(float(metric["coverage"]) * rows)
    [found] = intervals.slice_coverage(inside, pd.Series(["all"] * rows), float(metric["nominal_coverage"]))
    return f"[{found['low']:.1%}, {found['high']:.1%}] {found['verdict']}"


def report_html(report: Mapping[str, Any], metrics: Sequence[Mapping[str, Any]],
                holdout: Mapping[int, float | None]) -> str:
    """The report page: verdict with its thresholds, per-version table, trend, coverage and bias plots, the
    paired shadow table and every metric row."""
    policy, verdict = report["policy"], report["verdict"]
    champion = verdict["version"]
    notes = "".join(f"<p class='fail'>warning: {html.escape(w)}</p>" for w in verdict["warnings"])
    signal = report.get("signal")
    signal_text = (f"signal {signal['signal_id']} sent for version {signal['version']}" if signal
                   else "no signal sent by this run")
    versions = [(v["version"], v["source"], v["outcomes"], v["live_rmse"], v["holdout_rmse"], v["ratio"], v["mae"],
                 v["bias"], v["coverage"], v["nominal_coverage"], v["champion"], v["degraded"])
                for v in report["versions"]]
    shadows = [(s["shadow_version"], s["champion_version"], s["rows"], s["champion_rmse"], s["shadow_rmse"],
                s["mean_difference"], None if s["low"] is None else f"[{s['low']:.2f}, {s['high']:.2f}]", s["verdict"])
               for s in report["shadows"]]
    every = [(m["version"], m["source"], m["dimension"], m["slice"], m["grp"], m["rows"], m["rmse"], m["mae"],
              m["bias"], m["coverage"], coverage_check(m)) for m in metrics]
    return cards.page(f"Live performance {report['run_id']}", [
        cards.section("verdict", "Verdict", f"<p>{html.escape(verdict['reason'])}</p>{notes}" + cards.table([], [
            ("outcomes known up to", report["as_of"]), ("verdict", verdict["verdict"]),
            ("max_ratio", policy.get("max_ratio")), ("min_outcomes", policy.get("min_outcomes")),
            ("confidence", policy.get("confidence")), ("bootstrap_samples", policy.get("bootstrap_samples")),
            ("signal", signal_text)])),
        cards.section("refused", "Outcomes the contract refused (not judged)", _refused_html(report["refused_outcomes"])),
        cards.section("versions", "Per version", "<p>served = batch and API forecasts; bias = mean of outcome - "
                      "forecast (positive: forecasts too low).</p>" + cards.table(
                          ["version", "source", "outcomes", "live RMSE", "holdout RMSE", "ratio", "MAE", "bias",
                           "coverage", "nominal", "champion", "degraded"], versions)),
        cards.section("trend", "Trend", cards.image(_plot_trend(metrics, holdout, policy.get("max_ratio"), champion),
                                                    "Live RMSE per month of the outcome, holdout RMSE dashed")
                      + cards.image(_plot_coverage(metrics), "Interval coverage per month, nominal dashed")),
        cards.section("bias", "Bias by slice", cards.image(_plot_bias(metrics, champion),
                                                           "Mean of outcome - forecast per slice group")),
        cards.section("shadows", "Shadow against champion, same records", "<p>difference = mean of shadow minus "
                      "champion squared error; below zero the shadow is better.</p>" + (cards.table(
                          ["shadow", "champion", "records", "champion RMSE", "shadow RMSE", "mean difference",
                           f"{report['shadow_confidence']:.0%} interval", "verdict"], shadows)
                          if shadows else "<p>No shadow forecasts judged.</p>")),
        cards.section("metrics", "Every metric", cards.table(
            ["version", "source", "dimension", "slice", "group", "rows", "RMSE", "MAE", "bias", "coverage",
             "coverage: 95% exact interval, against nominal"], every)),
    ])


def _refused_html(refused: Mapping[str, Any]) -> str:
    """The refused outcomes by reason, and the data-quality signal when over the limit."""
    signal = refused.get("signal")
    head = (f"<p class='fail'>{html.escape(signal)}</p>" if signal else
            f"<p>{refused.get('refused', 0)} of {refused.get('outcomes', 0)} outcomes refused by the data contract "
            f"(limit quality.max_quarantine_share {refused.get('limit', 0):.1%}); refused outcomes move no metric, "
            "verdict or signal.</p>")
    rows = [(code, count) for code, count in (refused.get("reason_counts") or {}).items()]
    examples = [(i,) for i in refused.get("sample_ids") or []]  # the page is sealed at rest; erasure removes a row
    return (head + (cards.table(["reason", "outcomes"], rows) if rows else "")
            + (f"<p>Examples (up to {validate.SAMPLE_IDS}):</p>" + cards.table(["source id"], examples) if examples
               else ""))


# --- the registry side -------------------------------------------------------------------------

def holdout_rmses(conn: Connection, model: str) -> dict[int, float | None]:
    """Each version's holdout RMSE, from the evaluation of the run that trained it (None when not recorded)."""
    rows = conn.execute(sa.text("""
        SELECT m.version, CAST(e.candidate_metrics ->> 'rmse' AS double precision) AS rmse
          FROM pipeline.model_versions m
          LEFT JOIN pipeline.evaluations e ON e.run_id = m.run_id AND e.candidate_version = m.version
         WHERE m.model = :model
    """), {"model": model}).all()
    return {int(version): (None if rmse is None else float(rmse)) for version, rmse in rows}


def holdout_errors(ws: Workspace, version: int) -> np.ndarray | None:
    """The squared errors of the version's holdout, stored at its evaluation; None when not recorded."""
    with ws.engine.connect() as conn:
        digest = conn.scalar(sa.text("""
            SELECT e.evidence -> 'holdout_errors' ->> 'sha256'
              FROM pipeline.model_versions m
              JOIN pipeline.evaluations e ON e.run_id = m.run_id AND e.candidate_version = m.version
             WHERE m.model = :model AND m.version = :version
        """), {"model": ws.model, "version": version})
    if digest is None:
        return None
    data = artifacts.read_verified(artifacts.local_copy(ws.store, HOLDOUT_ERRORS, digest), digest, ws.store.keyring)
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False), dtype="float64")


def _answered(conn: Connection, model: str, at: datetime) -> bool:
    """A retrain run of the model started at or after `at` that did not fail on infrastructure or die."""
    return bool(conn.scalar(sa.text("""
        SELECT EXISTS (SELECT 1 FROM pipeline.training_runs
                        WHERE model = :model AND started_at >= :at
                          AND NOT (status = 'failed' AND failure_kind IN ('infrastructure', 'abandoned')))
    """), {"model": model, "at": at}))


def last_signal(conn: Connection, model: str) -> dict[str, Any] | None:
    """The model's newest performance signal, with the retrain run that answered it, if any."""
    row = conn.execute(sa.text("""
        SELECT s.*, (SELECT r.run_id FROM pipeline.training_runs r
                      WHERE r.model = s.model AND r.started_at >= s.at ORDER BY r.started_at LIMIT 1) AS answered_by
          FROM pipeline.performance_signals s WHERE s.model = :model ORDER BY s.signal_id DESC LIMIT 1
    """), {"model": model}).mappings().first()
    return dict(row) if row is not None else None


def claim_signal(engine: Engine, model: str, run_id: str, verdict: Mapping[str, Any], min_outcomes: int,
                 resignal_after: timedelta = RESIGNAL_AFTER) -> dict[str, Any] | None:
    """Record and return a signal for a degraded champion, unless one was sent for this version and fewer than
    `min_outcomes` more outcomes were judged since (and it was answered, or is recent). A retried run gets
    its own signal back."""
    version, outcomes = verdict["version"], verdict["outcomes"]
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:model))"), {"k": _SIGNAL_LOCK_ID, "model": model})
        mine = conn.execute(sa.text("SELECT * FROM pipeline.performance_signals WHERE run_id = :r"),
                            {"r": run_id}).mappings().first()
        if mine is not None:
            return dict(mine)
        last = conn.execute(sa.text("""
            SELECT * FROM pipeline.performance_signals WHERE model = :model AND version = :v
             ORDER BY signal_id DESC LIMIT 1
        """), {"model": model, "v": version}).mappings().first()
        if last is not None and outcomes - last["outcomes"] < min_outcomes:
            stale = conn.scalar(sa.text("SELECT CAST(:at AS timestamptz) < now() - :after"),
                                {"at": last["at"], "after": resignal_after})
            if not stale or _answered(conn, model, last["at"]):
                return None
        row = conn.execute(sa.text("""
            INSERT INTO pipeline.performance_signals (model, version, run_id, outcomes, live_rmse, holdout_rmse)
            VALUES (:model, :v, :run_id, :n, :live, :holdout) RETURNING *
        """), {"model": model, "v": version, "run_id": run_id, "n": outcomes, "live": verdict["live_rmse"],
               "holdout": verdict["holdout_rmse"]}).mappings().one()
    return dict(row)


def stored_report(conn: Connection, run_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.text("SELECT * FROM pipeline.performance_reports WHERE run_id = :r"),
                       {"r": run_id}).mappings().first()
    return dict(row) if row is not None else None


def record_report(conn: Connection, report: Mapping[str, Any], metrics: Sequence[Mapping[str, Any]]) -> None:
    """Store one monitor run's report and its metric rows (append-only: a run id is written once)."""
    verdict = report["verdict"]
    conn.execute(sa.text("""
        INSERT INTO pipeline.performance_reports (run_id, model, champion_version, as_of, outcomes, live_rmse,
               holdout_rmse, ratio_low, ratio_high, verdict, degraded, reason, warnings, policy, versions, shadows,
               signal_id, report_path, report_sha256, refused_outcomes)
        VALUES (:run_id, :model, :champion, :as_of, :outcomes, :live, :holdout, :low, :high, :verdict, :degraded,
                :reason, CAST(:warnings AS jsonb), CAST(:policy AS jsonb), CAST(:versions AS jsonb),
                CAST(:shadows AS jsonb), :signal_id, :path, :sha256, CAST(:refused AS jsonb))
    """), {"run_id": report["run_id"], "model": report["model"], "champion": verdict["version"],
           "as_of": report["as_of"], "outcomes": verdict["outcomes"], "live": verdict["live_rmse"],
           "holdout": verdict["holdout_rmse"], "low": verdict["ratio_low"], "high": verdict["ratio_high"],
           "verdict": verdict["verdict"], "degraded": verdict["degraded"], "reason": verdict["reason"],
           "warnings": records._json(verdict["warnings"]), "policy": records._json(report["policy"]),
           "versions": records._json(report["versions"]), "shadows": records._json(report["shadows"]),
           "signal_id": (report.get("signal") or {}).get("signal_id"), "path": report["report_path"],
           "sha256": report["report_sha256"],
           "refused": records._json({k: v for k, v in report["refused_outcomes"].items() if k != "sample_ids"})})
    if metrics:
        conn.execute(sa.text("""
            INSERT INTO pipeline.performance_metrics (run_id, version, source, dimension, slice, grp, rows, rmse, mae,
                   bias, coverage, nominal_coverage)
            VALUES (:run_id, :version, :source, :dimension, :slice, :grp, :rows, :rmse, :mae, :bias, :coverage,
                    :nominal_coverage)
        """), [{**m, "run_id": report["run_id"]} for m in metrics])


def summary_of(stored: Mapping[str, Any]) -> dict[str, Any]:
    """What a monitor run returns, from its stored report."""
    keys = ("run_id", "model", "champion_version", "as_of", "outcomes", "live_rmse", "holdout_rmse", "ratio_low",
            "ratio_high", "verdict", "degraded", "reason", "warnings", "versions", "shadows", "signal_id", "report_path",
            "refused_outcomes")
    return {k: stored[k] for k in keys}


# --- the stage ---------------------------------------------------------------------------------

def monitor_performance(ws: Workspace, run: Run, send_signal: bool = True) -> dict[str, Any]:
    """Judge the forecasts on the outcomes known at the run's watermark; store the metrics and the HTML report;
    when the champion is degraded (and `send_signal`), claim a signal for its retrain (`signal` in the result,
    None when none is due). A retried run returns what it recorded."""
    policy = ws.config.monitoring.performance
    as_of = datetime.fromisoformat(run.watermark.isoformat())  # a plain datetime (Airflow passes pendulum)
    with ws.engine.connect() as conn:
        recorded = stored_report(conn, run.run_id)
        champion = records.current_champion(conn, ws.model)
        holdout = holdout_rmses(conn, ws.model)
    if recorded is not None:
        signal = _recorded_signal(ws, recorded)
        return {**summary_of(recorded), "signal": signal}
    slices = ws.config.promotion.slices
    judged, refused = read_judged(ws, ws.model, as_of, slices)
    metrics = metric_rows(judged, [s.name for s in slices])
    version = champion["version"] if champion else None
    served = judged.loc[(judged["source"] == "served") & (judged["version"] == version)]
    errors = (served["outcome"].to_numpy(float) - served["prediction"].to_numpy(float)) ** 2
    seed = ws.config.training.seed
    held = holdout_errors(ws, version) if version and holdout.get(version) else None
    verdict = judge_champion(errors, holdout.get(version) if version else None, policy, seed, version, held)
    if refused["signal"]:
        verdict["warnings"].append(refused["signal"])  # a data-quality signal, beside the verdict, not in it
    for warning in verdict["warnings"]:
        log.warning("%s", warning)
    shadow_confidence = policy.confidence or DEFAULT_CONFIDENCE
    report: dict[str, Any] = {
        "run_id": run.run_id, "model": ws.model, "as_of": as_of, "verdict": verdict, "policy": asdict(policy),
        "versions": version_summaries(metrics, holdout, verdict), "refused_outcomes": refused,
        "shadows": paired_shadows(judged, version, policy.bootstrap_samples, shadow_confidence, seed),
        "shadow_confidence": shadow_confidence, "signal": None}
    if verdict["degraded"] and send_signal:
        assert policy.min_outcomes is not None  # a degraded verdict needs every threshold
        report["signal"] = claim_signal(ws.engine, ws.model, run.run_id, verdict, policy.min_outcomes)
    page = report_html(report, metrics, holdout).encode()
    report["report_sha256"], path = artifacts.store_bytes(ws.store, "reports", page, ".html")
    report["report_path"] = str(path)
    with ws.engine.begin() as conn:
        record_report(conn, report, metrics)
        stored = stored_report(conn, run.run_id)
    assert stored is not None
    log.info("performance of %s as of %s: %s%s", ws.model, as_of, verdict["reason"],
             f"; signal {report['signal']['signal_id']} sent" if report["signal"] else "")
    return {**summary_of(stored), "signal": _jsonable_signal(report["signal"]),
            "metrics": metrics}


def _jsonable_signal(signal: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if signal is None else dict(json.loads(json.dumps(dict(signal), default=str)))


def _recorded_signal(ws: Workspace, recorded: Mapping[str, Any]) -> dict[str, Any] | None:
    if recorded["signal_id"] is None:
        return None
    with ws.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM pipeline.performance_signals WHERE signal_id = :s"),
                           {"s": recorded["signal_id"]}).mappings().first()
    return _jsonable_signal(None if row is None else dict(row))


def latest_reports(conn: Connection, model: str, limit: int = 5) -> list[dict[str, Any]]:
    """The model's latest performance reports, newest first."""
    rows = conn.execute(sa.text("""
        SELECT run_id, as_of, champion_version, outcomes, live_rmse, holdout_rmse, verdict, degraded, signal_id,
               report_path, created_at, refused_outcomes
          FROM pipeline.performance_reports WHERE model = :model ORDER BY created_at DESC LIMIT :n
    """), {"model": model, "n": limit}).mappings()
    return [dict(r) for r in rows]
