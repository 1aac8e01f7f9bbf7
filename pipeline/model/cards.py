"""Model cards and champion/challenger pages: one self-contained HTML file each, plots inline.

The page builders (`model_card_html`, `comparison_html`) take plain values and return HTML;
`render_model_card` and `render_comparison` gather those values from the registry and the
artifact store, write the page into the store under "cards" and record it in
pipeline.model_cards.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sklearn.inspection import permutation_importance
from sklearn.linear_model import Ridge
from sqlalchemy.engine import Connection

from pipeline.contract.config import DatasetContract
from pipeline.model import evaluate, intervals, train
from pipeline.model.features import model_inputs
from pipeline.registry import records
from pipeline.store import artifacts
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)
PERMUTATION_ROWS = 20_000  # a 10^6-row holdout took a minute at full size; a seeded sample is plenty
PERMUTATION_REPEATS = 5
SCATTER_POINTS = 10_000  # points drawn in a scatter plot: more are a blob, and 2M took seconds to draw
FIGURE_DPI = 110  # with the sizes below, a plot is 700-1000 px wide: readable without zooming
STYLE = ("body{font-family:sans-serif;max-width:70em;margin:auto}td,th{padding:2px 8px;text-align:left}"
         "table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}"
         ".worse{background:#f8c0c0}.worse-unjudged{background:#fbe7b5}.fail{color:#b00}"
         ".convention{border-left:4px solid #888;padding-left:8px}"
         "figure{display:inline-block;margin:4px;max-width:100%}figure img{max-width:100%}"
         "figcaption{font-size:small}")


@dataclass(frozen=True)
class Importance:
    """Feature importance as shown: what the numbers mean, and one number per feature."""

    kind: str
    values: dict[str, float]
    axis: str = "importance"  # the short label of the plot's value axis


@dataclass(frozen=True)
class CardContent:
    """Everything a model card shows, as plain values."""

    title: str
    lineage: list[tuple[str, str]]
    metrics: dict[str, float]
    baseline: dict[str, float]
    observed: np.ndarray
    predicted: np.ndarray
    slices: list[dict[str, Any]]
    importance: Importance
    behaviour: dict[str, Any]
    evaluation: dict[str, Any] | None
    interval: Any = None  # intervals.Interval of the version at the configured coverage
    slice_tolerance: float | None = None  # promotion.slice_tolerance the decision used (or the configured one)
    min_slice_rows: int | None = None  # promotion.min_slice_rows, likewise
    slice_source: str = ""  # where the slice numbers come from, in a sentence
    interval_inside: np.ndarray | None = None  # per holdout row: the outcome inside its interval
    interval_slices: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)  # coverage per slice group


# --- plots: each returns a matplotlib Figure; `png` turns one into base64 -----------------------

def new_figure(columns: int = 1, width: float = 7.0, height: float = 4.5) -> tuple[Any, Any]:
    """An Agg figure and its axes, kept out of pyplot's global state (no figure to leak or close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, columns)


def png(figure: Any) -> str:
    """A figure as a base64 PNG."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return base64.b64encode(buffer.getvalue()).decode()




def scatter_rows(rows: int, limit: int = SCATTER_POINTS) -> np.ndarray:
    """The rows a scatter plot draws: every row, or `limit` of them chosen by a fixed seed."""
    if rows <= limit:
        return np.arange(rows)
    return np.sort(np.random.default_rng(0).choice(rows, size=limit, replace=False))


def scatter_note(rows: int) -> str:
    return "" if rows <= SCATTER_POINTS else f" ({SCATTER_POINTS:,} of {rows:,} rows)"


def plot_predicted_vs_observed(observed: np.ndarray, predicted: np.ndarray) -> Any:
    """Holdout predictions against the observed values, with the y = x line."""
    figure, ax = new_figure()
    drawn = scatter_rows(len(observed))
    ax.scatter(observed[drawn], predicted[drawn], s=10, alpha=0.6)
    low = float(min(np.min(observed), np.min(predicted)))
    high = float(max(np.max(observed), np.max(predicted)))
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="y = x")
    ax.set(xlabel="observed", ylabel="predicted", title=f"Predicted vs observed (holdout){scatter_note(len(observed))}")
    ax.legend()
    return figure


def plot_residuals(observed: np.ndarray, predicted: np.ndarray) -> Any:
    """Residuals as a histogram and against the prediction."""
    residuals = observed - predicted
    figure, (hist, scatter) = new_figure(columns=2, width=10.0)
    hist.hist(residuals, bins=20)
    hist.set(xlabel="observed - predicted", ylabel="rows", title="Residuals")
    drawn = scatter_rows(len(residuals))
    scatter.scatter(predicted[drawn], residuals[drawn], s=10, alpha=0.6)
    scatter.axhline(0.0, color="black", linewidth=1)
    scatter.set(xlabel="predicted", ylabel="observed - predicted",
                title=f"Residual vs predicted{scatter_note(len(residuals))}")
    return figure


def plot_slice_rmse(slices: Sequence[Mapping[str, Any]]) -> Any:
    """RMSE per slice group: the candidate's bars, and the champion's beside them when there is one."""
    figure, ax = new_figure(width=max(7.0, 0.6 * len(slices) + 2.0), height=4.5)
    labels = [f"{row['slice']}={row['group']}" for row in slices]
    x = np.arange(len(labels))
    with_champion = any(row.get("champion_rmse") is not None for row in slices)
    width = 0.4 if with_champion else 0.8
    ax.bar(x - (width / 2 if with_champion else 0), [row["candidate_rmse"] for row in slices], width, label="candidate")
    if with_champion:
        champion = [np.nan if row.get("champion_rmse") is None else row["champion_rmse"] for row in slices]
        ax.bar(x + width / 2, champion, width, label="champion")
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set(xlabel="slice group", ylabel="holdout RMSE", title="Holdout RMSE by slice" if slices else "No slices configured")
    if slices:
        ax.legend()
    return figure


def plot_importance(importance: Importance) -> Any:
    """One horizontal bar per feature, largest magnitude on top."""
    ordered = sorted(importance.values.items(), key=lambda item: abs(item[1]))
    figure, ax = new_figure(width=7.0, height=max(3.5, 0.35 * len(ordered) + 1.5))
    ax.barh([name for name, _ in ordered], [value for _, value in ordered])
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set(title="Feature importance", xlabel=importance.axis, ylabel="feature")
    return figure


def rmse_change_interval(bootstrap: Mapping[str, float]) -> dict[str, float]:
    """The bootstrap of RMSE(champion) - RMSE(candidate), as the page's change: candidate - champion."""
    return {"low": 0.0 - bootstrap["high"], "high": 0.0 - bootstrap["low"], "mean": 0.0 - bootstrap["mean"]}


def plot_bootstrap(bootstrap: Mapping[str, float]) -> Any:
    """The bootstrap interval of the RMSE change (candidate - champion) as a line, its mean as a dot, and zero."""
    change = rmse_change_interval(bootstrap)
    figure, ax = new_figure(height=2.6)
    ax.hlines(0.0, change["low"], change["high"], linewidth=6, label=f"{bootstrap['confidence']:.0%} interval")
    ax.plot([change["mean"]], [0.0], "o", color="black", label="mean")
    ax.axvline(0.0, color="red", linestyle="--", linewidth=1, label="no change")
    ax.set(yticks=[], ylabel="bootstrap", xlabel="RMSE change, candidate − champion (negative: candidate better)",
           title="Bootstrap of the RMSE change")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


# --- HTML pieces ---------------------------------------------------------------------------

def text(value: Any) -> str:
    """A value as escaped HTML text: floats to 3 decimals, booleans as yes/no, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{value:.3f}"
    if isinstance(value, dict | list):
        return html.escape(json.dumps(value, sort_keys=True, default=str))
    return html.escape(str(value))


def image(data: Any, alt: str) -> str:
    """A base64 PNG (or a matplotlib figure) as an inline <img>, captioned with its alt text."""
    if not isinstance(data, str):
        data = png(data)
    return (f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    """An HTML table of escaped cells (no header row without `headers`); `classes` gives each row a CSS class."""
    head = f"<tr>{''.join(f'<th>{html.escape(h)}</th>' for h in headers)}</tr>" if headers else ""
    body = []
    for i, row in enumerate(rows):
        css = classes[i] if classes else ""
        attribute = f" class='{html.escape(css)}'" if css else ""
        body.append(f"<tr{attribute}>" + "".join(f"<td>{text(cell)}</td>" for cell in row) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def section(anchor: str, heading: str, body: str) -> str:
    return f"<section id='{html.escape(anchor)}'><h2>{html.escape(heading)}</h2>{body}</section>"


def page(title: str, sections: Iterable[str]) -> str:
    """A whole self-contained HTML document."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>")


def behaviour_html(behaviour: Mapping[str, Any] | None, max_drop: float | None = None) -> str:
    """The behaviour checks as tables: the overall checks, then each direction with its increase, its
    worst change, the limit and the verdict; `max_drop` is the limit when the record does not carry it."""
    if not behaviour:
        return "<p>The behaviour checks did not run.</p>"
    allowed = behaviour.get("prediction_range")
    rows: list[tuple[Any, ...]] = [
        ("all checks passed", behaviour.get("passed")),
        ("predictions finite", behaviour.get("finite")),
        ("predictions within the allowed range" + (f" [{allowed[0]:g}, {allowed[1]:g}]" if allowed else ""),
         behaviour.get("in_range")),
        ("lowest / highest prediction", f"{_number(behaviour.get('prediction_min'))} / "
                                        f"{_number(behaviour.get('prediction_max'))}"),
        ("predictions ignore the patient id", behaviour.get("id_invariant")),
    ]
    failures = behaviour.get("failures") or []
    listed = "".join(f"<li class='fail'>{html.escape(str(f))}</li>" for f in failures) or "<li>none</li>"
    return (table(["check", "result"], rows) + directions_html(behaviour.get("directions") or {},
                                                              behaviour.get("max_drop", max_drop))
            + f"<p>Failures:</p><ul>{listed}</ul>")


def _number(value: Any) -> str:
    return "—" if value is None else f"{value:.1f}"


def directions_html(directions: Mapping[str, Mapping[str, float]], max_drop: float | None) -> str:
    """Each direction medicine is sure of: raise the feature on every holdout row, compare the predictions."""
    if not directions:
        return "<p>No directions configured (promotion.behaviour.directions).</p>"
    limit = "not configured: promotion fails closed" if max_drop is None else f"change ≥ {-max_drop:g}"
    words = ("Directions: each feature is raised by the increase on every holdout row, and the change of each "
             "prediction is new − old. A positive change means the prediction rose, a negative one that it fell. "
             "The worst change is the most negative one; the check passes when it is not below −max_drop "
             f"(promotion.behaviour.max_drop = {'not set' if max_drop is None else f'{max_drop:g}'}).")
    rows = []
    for feature, check in directions.items():
        worst = check["worst_change"]
        passed = None if max_drop is None else bool(worst >= -max_drop)
        rows.append((feature, "up: must not lower the prediction", f"+{check['step']:g}", worst, limit,
                     "—" if passed is None else ("pass" if passed else "FAIL")))
    return f"<p class='convention'>{html.escape(words)}</p>" + table(
        ["feature", "direction", "increase applied", "worst change (new − old)", "limit", "result"], rows)


def decision_html(evaluation: Mapping[str, Any] | None, run_id: str) -> str:
    """The promotion decision recorded for a run, or a note that there is none."""
    if evaluation is None:
        return f"<p>No evaluation is recorded for run {html.escape(run_id)}.</p>"
    rows = [("run", evaluation.get("run_id")), ("decision", evaluation.get("decision")),
            ("reason", evaluation.get("reason")), ("candidate version", evaluation.get("candidate_version")),
            ("champion version at the time", evaluation.get("champion_version") or "none (first model)")]
    return table([], rows)


def ordered_slices(slices: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Slice rows in the configured slice order, each slice's groups in their natural order (bands by value)."""
    first_seen: dict[str, int] = {}
    for row in slices:
        first_seen.setdefault(str(row["slice"]), len(first_seen))
    return sorted(slices, key=lambda row: (first_seen[str(row["slice"])], evaluate.group_order(str(row["group"]))))


def slice_rows_html(slices: Sequence[Mapping[str, Any]], tolerance: float | None,
                    min_rows: int | None = None) -> str:
    """The slice table; a group worse than the champion by more than `tolerance` is highlighted."""
    with_champion = any(row.get("champion_rmse") is not None for row in slices)
    judged = ("" if min_rows is None else
              f" Groups with fewer than {min_rows} rows (promotion.min_slice_rows) are shown, not judged.")
    if not with_champion:
        sentence = "No champion to compare with: each group's RMSE is the model's own." + judged
    elif tolerance is None:
        sentence = ("No slice tolerance is configured (promotion.slice_tolerance), so no group is judged "
                    "and promotion fails closed.")
    else:
        sentence = (f"Change = candidate RMSE ÷ champion RMSE − 1: negative is better. Highlighted: groups where "
                    f"candidate RMSE is more than {tolerance:.0%} above champion RMSE (promotion.slice_tolerance = "
                    f"{tolerance:g}).{judged}")
    rows, classes = [], []
    for row in ordered_slices(slices):
        change = row.get("change")
        over = change is not None and tolerance is not None and change > tolerance
        classes.append(("worse" if row.get("judged") else "worse-unjudged") if over else "")
        cells = [row["slice"], row["group"], row["n"], "yes" if row.get("judged") else "no (too few rows)",
                 row["candidate_rmse"]]
        if with_champion:
            cells += [row.get("champion_rmse"), None if change is None else f"{change:+.1%}"]
        rows.append(cells)
    headers = ["slice", "group", "rows", "judged", "candidate RMSE"]
    if with_champion:
        headers += ["champion RMSE", "change"]
    return f"<p>{html.escape(sentence)}</p>" + table(headers, rows, classes)


# --- the model card ------------------------------------------------------------------------

def metrics_rows(metrics: Mapping[str, float], baseline: Mapping[str, float]) -> list[tuple[Any, ...]]:
    return [("RMSE", metrics["rmse"], baseline["rmse"]), ("MAE", metrics["mae"], baseline["mae"]),
            ("R²", metrics["r2"], baseline["r2"]), ("rows", int(metrics["n"]), int(baseline["n"]))]


def model_card_html(card: CardContent) -> str:
    """The model card page: lineage, holdout metrics, four plots, behaviour checks, the decision."""
    run_id = dict(card.lineage).get("run", "")
    importance_rows = sorted(card.importance.values.items(), key=lambda item: -abs(item[1]))
    slices = ordered_slices(card.slices)
    source = f"<p>{html.escape(card.slice_source)}</p>" if card.slice_source else ""
    return page(card.title, [
        section("lineage", "Lineage", table([], card.lineage)),
        section("metrics", "Holdout metrics", table(
            ["metric", "model", f"baseline: the training mean ({card.baseline['train_mean']:.3f})"],
            metrics_rows(card.metrics, card.baseline))),
        section("fit", "Fit on the holdout",
                image(plot_predicted_vs_observed(card.observed, card.predicted), "Predicted vs observed, with y = x")
                + image(plot_residuals(card.observed, card.predicted), "Residuals: histogram and against prediction")),
        section("slices", "Error by slice", image(plot_slice_rmse(slices), "Holdout RMSE per slice group")
                + source + slice_rows_html(slices, card.slice_tolerance, card.min_slice_rows)),
        section("importance", "Feature importance",
                f"<p>{html.escape(card.importance.kind)}</p>"
                + image(plot_importance(card.importance), "Feature importance by feature")
                + table(["feature", "importance"], importance_rows)),
        section("interval", "Prediction interval", interval_html(card)),
        section("behaviour", "Behaviour checks", behaviour_html(card.behaviour)),
        section("decision", "Promotion decision", decision_html(card.evaluation, run_id)),
    ])


def interval_html(card: CardContent) -> str:
    """The interval every forecast carries, the guarantee its method has, and the share of holdout outcomes it
    held, overall and per slice group with its exact binomial interval."""
    if card.interval is None:
        return "<p>No interval recorded.</p>"
    interval = card.interval
    inside = (float(np.mean(card.interval_inside)) if card.interval_inside is not None else
              intervals.holdout_coverage(card.observed, card.predicted, interval.half_width))
    widths = ("± " + ", ".join(f"{g}: {w:.2f}" for g, w in interval.group_half_widths.items())
              if interval.group_half_widths else f"± {interval.half_width:.2f}")
    note = (" (the holdout is the calibration set, so this is at least the stated coverage by construction; the "
            "check that counts is on outcomes that arrive: the performance report)" if interval.method ==
            intervals.METHOD else " (no residual behind the interval comes from the holdout)")
    summary = table([], [("stated coverage", f"{interval.coverage:.0%}"),
                         ("forecast ± half-width", widths),
                         ("empirical coverage on the holdout", f"{inside:.1%} of "
                                                               f"{len(card.observed)} outcomes{note}"),
                         ("method", interval.method), ("guarantee", interval.guarantee)])
    rows = [[name, r["group"], r["rows"], f"{r['coverage']:.1%}", f"[{r['low']:.1%}, {r['high']:.1%}]", r["verdict"]]
            for name, groups in card.interval_slices for r in groups]
    per_slice = table(["slice", "group", "outcomes", "inside", "95% exact interval", "against the stated coverage"],
                      rows) if rows else ""
    return summary + ("<p>Coverage per slice group on the holdout: 'below' when the group's exact binomial "
                      "interval lies under the stated coverage.</p>" + per_slice if per_slice else "")


def lineage_rows(model: Mapping[str, Any], snapshot: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Where a model version came from: run, data, parameters, code and libraries."""
    parent = snapshot.get("parent_hash")
    libraries = ", ".join(f"{name} {version}" for name, version in sorted(model["library_versions"].items()))
    cv = "; ".join(f"{family}: {m['cv_rmse_mean']:.3f} ± {m['cv_rmse_std']:.3f}" if "cv_rmse_mean" in m
                   else f"{family}: {m.get('skipped', 'not run')}"
                   for family, m in sorted(model["cv_metrics"].items()))
    return [
        ("version", str(model["version"])), ("run", str(model["run_id"])),
        ("model family", str(model["model_family"])),
        ("parameters", json.dumps(model["params"], sort_keys=True, default=str)),
        ("cross-validated RMSE by family", cv),
        ("training snapshot", f"{snapshot['snapshot_hash']} ({snapshot.get('kind', 'raw')})"),
        ("snapshot watermark", str(snapshot["watermark"])),
        ("raw parent snapshot", str(parent) if parent else "none: trained on the raw snapshot"),
        ("training rows", str(model["train_rows"])), ("holdout rows", str(model["holdout_rows"])),
        ("holdout starts at", json.dumps(model["holdout_start"], sort_keys=True, default=str)),
        ("library versions", libraries), ("code version", str(model["code_version"])),
        ("created at", str(model["created_at"])),
    ]


def feature_importance(model: Any, holdout: pd.DataFrame, contract: DatasetContract, seed: int) -> Importance:
    """Ridge coefficients by prepared feature; for any other model, permutation importance on the holdout."""
    final = model[-1]
    if isinstance(final, Ridge):
        names = model[:-1].get_feature_names_out()
        return Importance("Ridge coefficient per prepared feature (numerics standardised, categories 0/1)",
                          {str(n): float(c) for n, c in zip(names, np.ravel(final.coef_), strict=True)},
                          "coefficient")
    inputs = model_inputs(holdout, contract)
    result = permutation_importance(model, inputs, holdout[contract.target_column].to_numpy(float),
                                    scoring="neg_root_mean_squared_error", n_repeats=PERMUTATION_REPEATS,
                                    random_state=seed, max_samples=min(len(inputs), PERMUTATION_ROWS))
    return Importance(f"Permutation importance: mean rise in holdout RMSE when the column is shuffled "
                      f"({PERMUTATION_REPEATS} repeats, at most {PERMUTATION_ROWS:,} seeded holdout rows)",
                      {str(n): float(v) for n, v in zip(inputs.columns, result.importances_mean, strict=True)},
                      "rise in RMSE")


@dataclass(frozen=True)
class Scored:
    """A version scored on its own whole holdout, as its evaluation scored it: the card is drawn from it
    instead of reading and scoring the holdout again."""

    version: int
    holdout_fraction: float
    train_mean: float
    holdout: pd.DataFrame
    predicted: np.ndarray
    behaviour: dict[str, Any]
    model: Any


def _holdout_fraction(ws: Workspace, model: Mapping[str, Any]) -> float:
    """The fraction the version was trained with, so train and holdout rows are the ones it saw."""
    return float(model["params"].get("holdout_fraction", ws.config.training.holdout_fraction))


def _scored(ws: Workspace, model: Mapping[str, Any], snapshot: Mapping[str, Any], scored: Scored | None) -> Scored:
    contract, fraction = ws.config.dataset, _holdout_fraction(ws, model)
    if scored is not None and scored.version == model["version"] and scored.holdout_fraction == fraction:
        return scored
    train_mean, holdout = train.holdout_rows(ws, snapshot["snapshot_hash"], fraction)
    fitted = ws.load_model(model["artifact_hash"])
    return Scored(int(model["version"]), fraction, train_mean, holdout, fitted.predict(model_inputs(holdout, contract)),
                  evaluate.behaviour_checks(fitted, holdout, contract, ws.config.promotion), fitted)


def card_content(ws: Workspace, model: Mapping[str, Any], snapshot: Mapping[str, Any],
                 evaluation: dict[str, Any] | None, scored: Scored | None = None) -> CardContent:
    """Collect what a version's card shows, from its scores on its own holdout: `scored` when its evaluation
    hands them over, else read and scored here."""
    contract, params = ws.config.dataset, model["params"]
    scored = _scored(ws, model, snapshot, scored)
    holdout, predicted, train_mean = scored.holdout, scored.predicted, scored.train_mean
    observed = holdout[contract.target_column].to_numpy(float)
    baseline = evaluate.regression_metrics(observed, np.full(len(observed), train_mean))
    policy = ws.config.promotion
    slices, source = card_slices(evaluate.slice_table(holdout, contract, policy, predicted, None), evaluation)
    interval = _interval(ws, int(model["version"]))
    inside = None if interval is None else np.abs(observed - predicted) <= interval.half_widths(holdout, contract)
    by_slice = [] if inside is None or interval is None else [
        (spec.name, intervals.slice_coverage(inside, evaluate.slice_labels(holdout, contract, spec), interval.coverage))
        for spec in policy.slices]
    return CardContent(
        title=f"Model card: version {model['version']} ({model['model_family']})",
        lineage=lineage_rows(model, snapshot), metrics=evaluate.regression_metrics(observed, predicted),
        baseline={**baseline, "train_mean": train_mean}, observed=observed, predicted=predicted,
        slices=slices, slice_source=source,
        slice_tolerance=policy_value(evaluation, "slice_tolerance", policy.slice_tolerance),
        min_slice_rows=policy_value(evaluation, "min_slice_rows", policy.min_slice_rows),
        importance=feature_importance(scored.model, holdout, contract,
                                      int(params.get("seed", ws.config.training.seed))),
        behaviour=scored.behaviour, evaluation=evaluation, interval=interval, interval_inside=inside,
        interval_slices=by_slice)


def policy_value(evaluation: Mapping[str, Any] | None, key: str, configured: Any) -> Any:
    """A promotion threshold as the evaluation recorded it (the one its decision used), else as configured."""
    recorded = (evaluation or {}).get("policy") or {}
    return recorded[key] if key in recorded else configured


def card_slices(own: list[dict[str, Any]], evaluation: Mapping[str, Any] | None) -> tuple[list[dict[str, Any]], str]:
    """The slice rows a card shows, and where they come from: the decision's (this version beside the champion,
    on the rows both were scored on) when there was a champion, else this version's own holdout."""
    if evaluation is None:
        return own, "No evaluation is recorded for this version's run: the RMSE of each group on its own holdout."
    evidence, champion = evaluation.get("evidence") or {}, evaluation.get("champion_version")
    compared = evidence.get("slices") or []
    if champion is not None and any(row.get("champion_rmse") is not None for row in compared):
        return compared, (f"As the decision of run {evaluation['run_id']} judged them: this version and champion "
                          f"version {champion} scored on the same {evidence.get('holdout_rows')} holdout rows.")
    if champion is not None:
        return own, (f"Champion version {champion} could not be scored when this version was evaluated (see the "
                     "decision): the RMSE of each group on this version's own holdout.")
    return own, "There was no champion when this version was evaluated (first model)."


def _interval(ws: Workspace, version: int) -> intervals.Interval | None:
    try:
        return intervals.for_version(ws, version)
    except Exception:  # noqa: BLE001 - the card says so instead
        log.warning("no interval for version %s", version, exc_info=True)
        return None


# --- the champion/challenger page ----------------------------------------------------------

SIGN_CONVENTION = ("Every change on this page is candidate − champion. RMSE and MAE: a negative change is "
                   "better (the candidate errs less); R²: a positive change is better. A slice's change is "
                   "relative: candidate RMSE ÷ champion RMSE − 1, so negative is better there too.")


GAIN_INTERVAL = re.compile(r"interval of the gain \[([-+]?[\d.]+), ([-+]?[\d.]+)\]")


def reason_as_change(reason: str | None) -> str | None:
    """A recorded reason in the page's convention: evaluate words the bootstrap as a gain (champion −
    candidate), so its interval is flipped into the RMSE change (candidate − champion)."""
    if reason is None:
        return None
    return GAIN_INTERVAL.sub(lambda m: f"interval of the RMSE change (candidate − champion) "
                                       f"[{0.0 - float(m[2]):+.3f}, {0.0 - float(m[1]):+.3f}]", reason)


def comparison_metrics_html(evaluation: Mapping[str, Any], evidence: Mapping[str, Any]) -> str:
    """Candidate and champion metrics side by side, their change (candidate − champion), and the baseline."""
    candidate, champion = evaluation.get("candidate_metrics") or {}, evaluation.get("champion_metrics") or {}
    rows = []
    for label, key in (("RMSE", "rmse"), ("MAE", "mae"), ("R²", "r2"), ("rows", "n")):
        ours, theirs = candidate.get(key), champion.get(key)
        change = ours - theirs if ours is not None and theirs is not None and key != "n" else None
        rows.append((label, ours, theirs, None if change is None else f"{change:+.3f}"))
    baseline = evidence.get("baseline")
    note = "" if not baseline else (f"<p>Baseline, predicting the training mean ({baseline['train_mean']:.3f}): "
                                    f"RMSE {baseline['rmse']:.3f}</p>")
    excluded = evidence.get("holdout_rows_excluded_champion_trained")
    if excluded:
        note += (f"<p>{int(excluded)} holdout rows the champion trained on were left out: candidate and champion "
                 f"are compared on the other {evidence.get('holdout_rows')}.</p>")
    for key in ("champion_error", "error"):
        if evidence.get(key):
            note += f"<p class='fail'>{html.escape(str(evidence[key]))}</p>"
    return table(["metric", "candidate", "champion", "change (candidate − champion)"], rows) + note


def monte_carlo_words(bootstrap: Mapping[str, Any]) -> str:
    """A sequential method's Monte-Carlo band of each endpoint of the change, in words; nothing for the exact one."""
    if "low_band" not in bootstrap:
        return ""
    low, high = bootstrap["high_band"], bootstrap["low_band"]  # the change's low end is the gain's high end, negated
    return (f" (the resamples place the change's low end in [{-low[1]:+.3f}, {-low[0]:+.3f}] and its high end in "
            f"[{-high[1]:+.3f}, {-high[0]:+.3f}]; the share of resamples where the candidate is not better: "
            f"{bootstrap['share_not_better']:.1%})")


def bootstrap_html(bootstrap: Mapping[str, Any] | None) -> str:
    """The paired bootstrap interval of the RMSE change (candidate − champion), in words and as a plot."""
    if not bootstrap:
        return "<p>No bootstrap: there was no scored champion to compare with.</p>"
    change = rmse_change_interval(bootstrap)
    words = (f"{bootstrap['confidence']:.0%} interval of the RMSE change (candidate − champion): "
             f"[{change['low']:+.3f}, {change['high']:+.3f}], mean {change['mean']:+.3f}"
             f" over {int(bootstrap.get('samples', 0))} resamples of the holdout rows. The candidate is "
             "significantly better only when the whole interval lies below zero. Resampled by: "
             f"{evaluate.resampling_words(dict(bootstrap))}{monte_carlo_words(bootstrap)}.")
    return f"<p class='interval'>{html.escape(words)}</p>" + image(
        plot_bootstrap(bootstrap), "Bootstrap interval of the RMSE change, with the zero mark")


def comparison_html(evaluation: Mapping[str, Any], slice_tolerance: float | None,
                    min_slice_rows: int | None = None) -> str:
    """The champion/challenger page of one evaluation row (with its `evidence`)."""
    evidence = evaluation.get("evidence") or {}
    slices = ordered_slices(evidence.get("slices") or [])
    champion = evaluation.get("champion_version")
    max_drop = ((evaluation.get("policy") or {}).get("max_drop"))
    title = (f"Run {evaluation['run_id']}: candidate version {evaluation['candidate_version']} vs "
             + (f"champion version {champion}" if champion is not None else "no champion (first model)"))
    return page(title, [
        f"<p class='convention' id='convention'>{html.escape(SIGN_CONVENTION)}</p>",
        section("decision", "Decision", table([], [
            ("decision", evaluation.get("decision")), ("reason", reason_as_change(evaluation.get("reason"))),
            ("evaluated at", evaluation.get("created_at"))])),
        section("metrics", "Holdout metrics", comparison_metrics_html(evaluation, evidence)),
        section("bootstrap", "Bootstrap", bootstrap_html(evidence.get("bootstrap"))),
        section("slices", "Slices", (image(plot_slice_rmse(slices), "Candidate vs champion RMSE per slice group")
                                     + slice_rows_html(slices, slice_tolerance, min_slice_rows)) if slices
                else "<p>No slice results recorded.</p>"),
        section("behaviour", "Candidate behaviour checks", behaviour_html(evidence.get("behaviour"), max_drop)),
    ])


# --- writing and recording -----------------------------------------------------------------

def record_page(conn: Connection, version: int, kind: str, run_id: str, path: Path) -> None:
    """Record a card or comparison page; rendering it again points the row at the new file."""
    conn.execute(sa.text("""
        INSERT INTO pipeline.model_cards (version, kind, run_id, path) VALUES (:version, :kind, :run_id, :path)
        ON CONFLICT (version, kind, run_id) DO UPDATE SET path = EXCLUDED.path, created_at = now()
    """), {"version": version, "kind": kind, "run_id": run_id, "path": str(path)})


def _store_page(ws: Workspace, document: str) -> Path:
    return artifacts.store_bytes(ws.store, "cards", document.encode(), ".html")[1]


def _evaluation_of(conn: Connection, run_id: str) -> dict[str, Any] | None:
    try:
        return records.get_evaluation(conn, run_id)
    except LookupError:
        return None


def render_model_card(ws: Workspace, version: int, scored: Scored | None = None) -> Path:
    """Write the model card of a registered version, record it, and return the file's path; `scored`: its
    holdout scores, when the caller has them (`card_content`)."""
    with ws.engine.connect() as conn:
        model = records.get_model(conn, version, ws.config.model)
        snapshot = records.get_snapshot(conn, model["snapshot_hash"])
        evaluation = _evaluation_of(conn, model["run_id"])
    path = _store_page(ws, model_card_html(card_content(ws, model, snapshot, evaluation, scored)))
    with ws.engine.begin() as conn:
        record_page(conn, version, "card", model["run_id"], path)
    return path


def render_comparison(ws: Workspace, run_id: str) -> Path:
    """Write the champion/challenger page of a run's evaluation, record it, and return the file's path."""
    with ws.engine.connect() as conn:
        evaluation = records.get_evaluation(conn, run_id)
    policy = ws.config.promotion  # the thresholds the decision used, when it recorded them
    path = _store_page(ws, comparison_html(evaluation, policy_value(evaluation, "slice_tolerance", policy.slice_tolerance),
                                           policy_value(evaluation, "min_slice_rows", policy.min_slice_rows)))
    with ws.engine.begin() as conn:
        record_page(conn, evaluation["candidate_version"], "comparison", run_id, path)
    return path
