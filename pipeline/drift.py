"""Drift: compare recent records with the champion's training snapshot, feature by feature."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.config import AGE_COLUMN, DatasetContract, DriftPolicy
from pipeline.features import DAYS_PER_YEAR

EPSILON = 1e-4  # floor for empty bins, so PSI stays finite
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
    """Population stability index of two aligned proportion vectors."""
    ref = np.clip(reference, EPSILON, None)
    cur = np.clip(recent, EPSILON, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


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
    return psi_from_proportions(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())


def _level(psi: float, policy: DriftPolicy) -> str:
    if psi >= policy.psi_major:
        return "major"
    return "moderate" if psi >= policy.psi_moderate else "none"


def numeric_drift(name: str, reference: pd.Series, recent: pd.Series, policy: DriftPolicy) -> FeatureDrift:
    psi = numeric_psi(reference.to_numpy(float, na_value=np.nan), recent.to_numpy(float, na_value=np.nan), policy.bins)
    ref, cur = reference.dropna().to_numpy(float), recent.dropna().to_numpy(float)
    if len(ref) and len(cur):
        ks = stats.ks_2samp(ref, cur)
        statistic, p_value = float(ks.statistic), float(ks.pvalue)
    else:  # one side has no values at all: as different as distributions get
        statistic, p_value = 1.0, 0.0
    level = _level(psi, policy)
    drifted = bool(level == "major" or (level == "moderate" and p_value < policy.p_value))
    return FeatureDrift(name, "numeric", psi, "ks", statistic, p_value, level, drifted)


def categorical_drift(name: str, reference: pd.Series, recent: pd.Series, policy: DriftPolicy) -> FeatureDrift:
    ref, cur = reference.astype(object).fillna(MISSING), recent.astype(object).fillna(MISSING)
    categories = sorted(set(ref) | set(cur), key=str)
    ref_counts = ref.value_counts().reindex(categories, fill_value=0).to_numpy()
    cur_counts = cur.value_counts().reindex(categories, fill_value=0).to_numpy()
    psi = psi_from_proportions(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
    table = np.vstack([ref_counts, cur_counts])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        statistic, p_value = 0.0, 1.0
    else:
        result = stats.chi2_contingency(table)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    level = _level(psi, policy)
    drifted = bool(level == "major" or (level == "moderate" and p_value < policy.p_value))
    return FeatureDrift(name, "categorical", psi, "chi2", statistic, p_value, level, drifted)


def monitored_columns(frame: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """The features as the model sees them: numerics, categoricals, and age instead of two dates."""
    out = frame[contract.names_with_role("numeric") + contract.names_with_role("categorical")].copy()
    if contract.derived_columns():
        birth, event = contract.names_with_role("birth_date")[0], contract.names_with_role("event_date")[0]
        days = (pd.to_datetime(frame[event]) - pd.to_datetime(frame[birth])).dt.days
        out[AGE_COLUMN] = days / DAYS_PER_YEAR
    return out


def compare(reference: pd.DataFrame, recent: pd.DataFrame, contract: DatasetContract, policy: DriftPolicy) -> list[FeatureDrift]:
    """Drift of every monitored feature between the reference and the recent rows."""
    ref, cur = monitored_columns(reference, contract), monitored_columns(recent, contract)
    categorical = set(contract.names_with_role("categorical"))
    return [
        (categorical_drift if name in categorical else numeric_drift)(name, ref[name], cur[name], policy)
        for name in ref.columns
    ]


def as_records(results: list[FeatureDrift]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


def _plot(name: str, reference: pd.Series, recent: pd.Series, categorical: bool) -> str:
    """A reference-against-recent distribution plot, as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    if categorical:
        table = pd.DataFrame({"reference": reference.value_counts(normalize=True),
                              "recent": recent.value_counts(normalize=True)}).fillna(0)
        table.plot.bar(ax=ax, rot=0)
    else:
        ref, cur = reference.dropna().to_numpy(float), recent.dropna().to_numpy(float)
        edges = list(np.histogram_bin_edges(np.concatenate([ref, cur]), bins=20))
        ax.hist(ref, bins=edges, density=True, alpha=0.5, label="reference")
        ax.hist(cur, bins=edges, density=True, alpha=0.5, label="recent")
        ax.legend(loc="upper right")
    ax.set_title(name)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def render_report(results: list[FeatureDrift], reference: pd.DataFrame, recent: pd.DataFrame,
                  contract: DatasetContract, title: str) -> str:
    """An HTML page: the drift table and one distribution plot per feature."""
    ref, cur = monitored_columns(reference, contract), monitored_columns(recent, contract)
    rows = "".join(
        f"<tr class='{r.level}'><td>{html.escape(r.feature)}</td><td>{r.psi:.3f}</td><td>{r.test}</td>"
        f"<td>{r.statistic:.3f}</td><td>{r.p_value:.2g}</td><td>{r.level}</td><td>{'yes' if r.drifted else 'no'}</td></tr>"
        for r in results
    )
    plots = "".join(
        f"<figure><img alt='{html.escape(r.feature)} distribution' src='data:image/png;base64,"
        f"{_plot(r.feature, ref[r.feature], cur[r.feature], r.kind == 'categorical')}'></figure>"
        for r in results
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px}.major{background:#f8c0c0}"
        ".moderate{background:#fbe7b5}figure{display:inline-block;margin:4px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>reference rows: {len(reference)}, recent rows: {len(recent)}</p>"
        "<table><tr><th>feature</th><th>PSI</th><th>test</th><th>statistic</th><th>p-value</th>"
        f"<th>level</th><th>drifted</th></tr>{rows}</table>{plots}</body></html>"
    )
