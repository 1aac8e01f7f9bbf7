"""Drift: compare recent records with the champion's training snapshot, feature by feature.

A feature drifts only when the size of the shift and the evidence for it agree: its PSI is at least
`psi_moderate` (the level, moderate or major, says how large) AND its test (Kolmogorov-Smirnov for a
numeric feature, chi-squared for a categorical one) has a p-value under `p_value` divided by the number of
features compared (Bonferroni), so that a check of every feature on a window of clean rows raises a false
alarm in at most about `p_value` of windows. PSI alone decides nothing: on a small window it is large by
chance (30 rows cannot fill 10 bins evenly). Its bins are smoothed by the Jeffreys prior, half a row added
to every bin of both samples, so an empty bin counts as a small share instead of a floor of 1e-4.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.contract.ages import monitored_columns
from pipeline.contract.config import AGE_COLUMN, DatasetContract, DriftPolicy, QualityPolicy
from pipeline.data import quality

SMOOTHING = 0.5  # rows added to every bin of both samples (Jeffreys prior): an empty bin keeps PSI finite
MISSING = "(missing)"  # the category a missing categorical value counts under


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical
    psi: float
    test: str  # ks | chi2
    statistic: float
    p_value: float
    level: str  # none | moderate | major
    drifted: bool


def psi_from_proportions(reference: np.ndarray, recent: np.ndarray) -> float:
    """Population stability index of two aligned vectors of positive proportions."""
    return float(np.sum((recent - reference) * np.log(recent / reference)))


def smoothed_proportions(counts: np.ndarray) -> np.ndarray:
    """Bin shares with SMOOTHING rows added to every bin (the Jeffreys prior's posterior mean)."""
    padded: np.ndarray = np.asarray(counts, dtype="float64") + SMOOTHING
    shares: np.ndarray = padded / padded.sum()
    return shares


def psi_from_counts(reference: np.ndarray, recent: np.ndarray) -> float:
    """PSI of two aligned vectors of bin counts, each smoothed by SMOOTHING rows per bin."""
    return psi_from_proportions(smoothed_proportions(reference), smoothed_proportions(recent))


def _bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin, plus a last bin for missing values (missingness is part of a distribution)."""
    present = values[~np.isnan(values)]
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return np.append(counts, len(values) - len(present))


def numeric_psi(reference: np.ndarray, recent: np.ndarray, bins: int) -> float:
    """PSI over bins cut at the reference's quantiles (open-ended outer bins) and a missing-value bin."""
    present = reference[~np.isnan(reference)]
    quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]) if len(present) else np.array([])
    edges = np.unique(quantiles)
    ref_counts, cur_counts = _bin_counts(reference, edges), _bin_counts(recent, edges)
    return psi_from_counts(ref_counts, cur_counts)


def _level(psi: float, policy: DriftPolicy) -> str:
    if psi >= policy.psi_major:
        return "major"
    return "moderate" if psi >= policy.psi_moderate else "none"


def significance_level(policy: DriftPolicy, features: int) -> float:
    """The p-value a feature's test must be under: `p_value` shared among the features compared (Bonferroni)."""
    return policy.p_value / max(features, 1)


def _drifted(level: str, p_value: float, policy: DriftPolicy, features: int) -> bool:
    """Drift: a shift of at least moderate size that the test also finds significant."""
    return bool(level != "none" and p_value < significance_level(policy, features))


def numeric_drift(name: str, reference: pd.Series, recent: pd.Series, policy: DriftPolicy,
                  features: int = 1) -> FeatureDrift:
    """PSI and Kolmogorov-Smirnov of one numeric feature; `features`: how many are compared in all."""
    psi = numeric_psi(reference.to_numpy(float, na_value=np.nan), recent.to_numpy(float, na_value=np.nan), policy.bins)
    ref, cur = reference.dropna().to_numpy(float), recent.dropna().to_numpy(float)
    if len(ref) and len(cur):
        ks = stats.ks_2samp(ref, cur)
        statistic, p_value = float(ks.statistic), float(ks.pvalue)
    else:  # one side has no values at all: as different as distributions get
        statistic, p_value = 1.0, 0.0
    level = _level(psi, policy)
    drifted = _drifted(level, p_value, policy, features)
    return FeatureDrift(name, "numeric", psi, "ks", statistic, p_value, level, drifted)


def categorical_drift(name: str, reference: pd.Series, recent: pd.Series, policy: DriftPolicy,
                      features: int = 1) -> FeatureDrift:
    """PSI and chi-squared of one categorical feature; `features`: how many are compared in all."""
    ref, cur = reference.astype(object).fillna(MISSING), recent.astype(object).fillna(MISSING)
    categories = sorted(set(ref) | set(cur), key=str)
    ref_counts = ref.value_counts().reindex(categories, fill_value=0).to_numpy()
    cur_counts = cur.value_counts().reindex(categories, fill_value=0).to_numpy()
    psi = psi_from_counts(ref_counts, cur_counts)
    table = np.vstack([ref_counts, cur_counts])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        statistic, p_value = 0.0, 1.0
    else:
        result = stats.chi2_contingency(table)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    level = _level(psi, policy)
    drifted = _drifted(level, p_value, policy, features)
    return FeatureDrift(name, "categorical", psi, "chi2", statistic, p_value, level, drifted)


def compare(reference: pd.DataFrame, recent: pd.DataFrame, contract: DatasetContract, policy: DriftPolicy) -> list[FeatureDrift]:
    """Drift of every monitored feature between the reference and the recent rows."""
    ref, cur = monitored_columns(reference, contract), monitored_columns(recent, contract)
    categorical = set(contract.names_with_role("categorical"))
    return [
        (categorical_drift if name in categorical else numeric_drift)(name, ref[name], cur[name], policy, len(ref.columns))
        for name in ref.columns
    ]


def classified_window(raw: pd.DataFrame, contract: DatasetContract, suite: dict[str, Any],
                      policy: QualityPolicy) -> tuple[pd.DataFrame, quality.QualityResult, quality.QualityResult]:
    """The window's rows as training takes them: normalised, cast and checked by the contract (the rows
    awaiting their outcome as validation checks them), the valid ones only; and both quality results, whose
    quarantined rows are a data-quality signal, never drift."""
    target = contract.target_column
    waiting = raw[target].isna()
    labelled_result, awaiting_result = quality.classify_with_awaiting(raw.loc[~waiting], raw.loc[waiting], contract,
                                                                      suite, policy, fast=True)
    typed = awaiting_result.typed
    valid_awaiting = (typed.loc[~typed[quality.ROW_COLUMN].isin(list(awaiting_result.reasons)), contract.columns()]
                      if typed is not None else labelled_result.valid.iloc[:0])
    valid = pd.concat([labelled_result.valid, valid_awaiting], ignore_index=True)
    return valid, labelled_result, awaiting_result


def quarantine_summary(*results: quality.QualityResult) -> dict[str, Any]:
    """How many rows of the window were quarantined, and how many carry each reason code."""
    reasons: dict[str, int] = {}
    for result in results:
        for code, count in result.reason_counts().items():
            reasons[code] = reasons.get(code, 0) + count
    return {"quarantined_rows": sum(len(r.quarantined) for r in results), "quarantine_reasons": dict(sorted(reasons.items()))}


def as_records(results: list[FeatureDrift]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


PLOT_DPI = 110
AGE_LABEL = "age at the visit (years)"


def distribution_figure(name: str, reference: pd.Series, recent: pd.Series, categorical: bool) -> Any:
    """A reference-against-recent distribution plot of one feature, with both axes labelled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    if categorical:
        table = pd.DataFrame({"reference": reference.astype(object).fillna(MISSING).value_counts(normalize=True),
                              "recent": recent.astype(object).fillna(MISSING).value_counts(normalize=True)}).fillna(0)
        table.plot.bar(ax=ax, rot=0)
        ax.set(xlabel=f"{name} (category)", ylabel="share of rows")
    else:
        ref, cur = reference.dropna().to_numpy(float), recent.dropna().to_numpy(float)
        edges = list(np.histogram_bin_edges(np.concatenate([ref, cur]), bins=20))
        ax.hist(ref, bins=edges, density=True, alpha=0.5, label="reference")
        ax.hist(cur, bins=edges, density=True, alpha=0.5, label="recent")
        ax.legend(loc="upper right")
        ax.set(xlabel=AGE_LABEL if name == AGE_COLUMN else name, ylabel="density (share of rows per unit)")
    ax.set_title(f"{name}: reference vs recent")
    return figure


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI)
    return base64.b64encode(buffer.getvalue()).decode()


def verdict_sentence(results: list[FeatureDrift], policy: DriftPolicy) -> str:
    """The report's verdict in one sentence: which features drifted, and the size and evidence of each."""
    drifted = [r for r in results if r.drifted]
    if not drifted:
        highest = max(results, key=lambda r: r.psi, default=None)
        worst = "" if highest is None else f" (highest PSI {highest.psi:.3f}, {highest.feature})"
        return f"Stable: none of the {len(results)} features drifted{worst}."
    alpha = significance_level(policy, len(results))
    why = "; ".join(f"{r.feature}: PSI {r.psi:.3f}, {r.level}, {r.test} p-value {r.p_value:.2g} under {alpha:.2g}"
                    for r in drifted)
    return f"Drift: {len(drifted)} of {len(results)} features drifted ({why})."


def _when(value: Any) -> str:
    return "—" if value is None else str(value)


def context_rows(report: dict[str, Any], reference_rows: int, recent_rows: int) -> list[tuple[str, str]]:
    """What was compared: the champion, its training snapshot, and the window of recent records."""
    quarantined, reasons = report.get("quarantined_rows") or 0, report.get("quarantine_reasons") or {}
    why = ", ".join(f"{code} {count}" for code, count in reasons.items())
    return [
        ("champion version", _when(report.get("champion_version"))),
        ("reference", f"its training snapshot {_when(report.get('reference_snapshot'))}: {reference_rows} rows"),
        ("window", f"records recorded after {_when(report.get('window_start'))} (the champion's training "
                   f"watermark) up to {_when(report.get('window_end'))}"),
        ("recent rows", f"{recent_rows} valid by the contract" + (
            f" ({quarantined} more quarantined by it and left out: a data-quality signal, not drift"
            + (f"; {why})" if why else ")") if quarantined else "")),
    ]


def threshold_rows(policy: DriftPolicy, features: int) -> list[tuple[str, str]]:
    """The thresholds of monitoring.drift, each with what it does."""
    return [
        ("psi_moderate", f"{policy.psi_moderate:g}: PSI at least this is a moderate shift, the least that can drift"),
        ("psi_major", f"{policy.psi_major:g}: PSI at least this is a major shift"),
        ("p_value", f"{policy.p_value:g}: shared among the {features} features (Bonferroni), a shift is drift only "
                    f"when its test's p-value is under {significance_level(policy, features):.2g}"),
        ("bins", f"{policy.bins}: quantile bins of the reference for a numeric feature's PSI (each bin of both "
                 f"samples smoothed by {SMOOTHING:g} row)"),
        ("min_rows", f"{policy.min_rows}: with fewer recent rows, no verdict"),
    ]


def _rows_html(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>"


def render_report(results: list[FeatureDrift], reference: pd.DataFrame, recent: pd.DataFrame,
                  contract: DatasetContract, title: str, policy: DriftPolicy, report: dict[str, Any]) -> str:
    """An HTML page: the verdict, what was compared (champion, window), the thresholds, the drift table and
    one labelled distribution plot per feature. `report` is the drift report row (champion_version,
    reference_snapshot, window_start, window_end, quarantined_rows, quarantine_reasons)."""
    ref, cur = monitored_columns(reference, contract), monitored_columns(recent, contract)
    rows = "".join(
        f"<tr class='{r.level}'><td>{html.escape(r.feature)}</td><td>{r.psi:.3f}</td><td>{r.test}</td>"
        f"<td>{r.statistic:.3f}</td><td>{r.p_value:.2g}</td><td>{r.level}</td><td>{'yes' if r.drifted else 'no'}</td></tr>"
        for r in results
    )
    plots = "".join(
        f"<figure><img alt='{html.escape(r.feature)} distribution, reference vs recent' src='data:image/png;base64,"
        f"{_png(distribution_figure(r.feature, ref[r.feature], cur[r.feature], r.kind == 'categorical'))}'>"
        f"<figcaption>{html.escape(r.feature)}</figcaption></figure>"
        for r in results
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:80em;margin:auto}td,th{padding:2px 8px;text-align:left}"
        ".major{background:#f8c0c0}.moderate{background:#fbe7b5}figure{display:inline-block;margin:4px;"
        "max-width:100%}figure img{max-width:100%}.verdict{font-size:larger}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='verdict'>{html.escape(verdict_sentence(results, policy))}</p>"
        f"<h2>Compared</h2>{_rows_html(context_rows(report, len(reference), len(recent)))}"
        "<h2>Thresholds (monitoring.drift)</h2><p>A feature drifts when its PSI is at least psi_moderate AND its "
        "test's p-value (Kolmogorov-Smirnov for numeric features, chi-squared for categorical ones) is under "
        "p_value divided by the number of features: the size of a shift and the evidence for it must agree.</p>"
        f"{_rows_html(threshold_rows(policy, len(results)))}"
        "<h2>Features</h2><table><tr><th>feature</th><th>PSI</th><th>test</th><th>statistic</th><th>p-value</th>"
        f"<th>level</th><th>drifted</th></tr>{rows}</table><h2>Distributions</h2>{plots}</body></html>"
    )
