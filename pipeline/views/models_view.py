"""The Models view: the registry, its decisions and its reports as server-rendered HTML pages.

Queries take a Connection and return plain rows; renderers take those rows and return HTML (every
value escaped). `plugins/models_view.py` mounts them in the Airflow API server behind Airflow's own
login; nothing here imports Airflow, so all of it runs and is tested without it.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.contract.config import ModelEntry
from pipeline.model.cards import STYLE, text
from pipeline.monitoring import performance
from pipeline.registry import records
from pipeline.store import accesslog, artifacts, crypto

REPORT_KINDS = ("card", "comparison", "quality", "drift", "performance")
QUARANTINE_PAGE_ROWS = 200
NAV_STYLE = ("nav.models-view{font-family:sans-serif;font-size:small;padding:4px 0;border-bottom:1px solid #ccc;"
             "margin-bottom:8px}nav.models-view a{margin-right:12px}")
VIEW_STYLE = STYLE + NAV_STYLE + "body{max-width:110em}td{vertical-align:top}.champion{font-weight:bold}.note{color:#555;font-size:small}code{font-size:small}"


class Html(str):
    """Markup that is already safe: inserted into a table as is, never escaped again."""


@dataclass(frozen=True)
class Links:
    """Where the view is mounted (`base`, e.g. /models-view) and where the Airflow UI is (`airflow`)."""

    base: str
    airflow: str = ""

    def model(self, model: str) -> str:
        return f"{self.base}/{quote(model, safe='')}"

    def card(self, model: str, version: int) -> str:
        return f"{self.model(model)}/versions/{int(version)}/card"

    def report(self, model: str, run_id: str, kind: str) -> str:
        return f"{self.model(model)}/runs/{quote(run_id, safe='')}/{kind}"

    def quarantine(self, model: str, csv_export: bool = False, **filters: str) -> str:
        query = urlencode({k: v for k, v in filters.items() if v})
        return f"{self.model(model)}/quarantine{'.csv' if csv_export else ''}{'?' + query if query else ''}"

    def dag(self, dag_id: str) -> str:
        return f"{self.airflow}/dags/{quote(dag_id, safe='')}"

    def dag_run(self, dag_id: str, run_id: str) -> str:
        return f"{self.dag(dag_id)}/runs/{quote(run_id, safe='')}"


# --- queries ---------------------------------------------------------------------------------------

def versions(conn: Connection, model: str) -> list[dict[str, Any]]:
    """Every version of the model, newest first: holdout metrics and decision of the run that trained it,
    its latest live metrics on real outcomes (served forecasts, all rows), and which pages it has."""
    rows = conn.execute(sa.text("""
        SELECT m.version, m.run_id, m.model_family, m.created_at, m.train_rows, m.holdout_rows,
               e.candidate_metrics AS holdout, e.champion_version AS compared_with, e.decision, e.reason,
               r.status AS run_status, r.reason AS run_reason,
               live.rmse AS live_rmse, live.rows AS live_outcomes, live.coverage AS live_coverage,
               live.run_id AS live_report,
               EXISTS (SELECT 1 FROM pipeline.model_cards c WHERE c.version = m.version AND c.kind = 'card') AS has_card
          FROM pipeline.model_versions m
          LEFT JOIN pipeline.evaluations e ON e.run_id = m.run_id
          LEFT JOIN pipeline.training_runs r ON r.run_id = m.run_id
          LEFT JOIN LATERAL (
               SELECT pm.rmse, pm.rows, pm.coverage, pm.run_id
                 FROM pipeline.performance_metrics pm JOIN pipeline.performance_reports pr USING (run_id)
                WHERE pm.version = m.version AND pm.source = 'served' AND pm.dimension = 'all'
                ORDER BY pr.created_at DESC LIMIT 1) live ON true
         WHERE m.model = :model ORDER BY m.version DESC
    """), {"model": model}).mappings()
    return [dict(r) for r in rows]


def run_reports(conn: Connection, model: str) -> dict[str, set[str]]:
    """For each of the model's training runs, the reports it has: quality and/or comparison."""
    rows = conn.execute(sa.text("""
        SELECT v.run_id, 'quality' AS kind FROM pipeline.validation_results v
          JOIN pipeline.training_runs r USING (run_id) WHERE r.model = :model AND v.report_path IS NOT NULL
        UNION
        SELECT c.run_id, 'comparison' FROM pipeline.model_cards c
          JOIN pipeline.model_versions m USING (version) WHERE m.model = :model AND c.kind = 'comparison'
    """), {"model": model})
    found: dict[str, set[str]] = {}
    for run_id, kind in rows:
        found.setdefault(run_id, set()).add(kind)
    return found


def drift_reports(conn: Connection, model: str, limit: int = 20) -> list[dict[str, Any]]:
    """The model's latest drift checks, newest first."""
    rows = conn.execute(sa.text("""
        SELECT run_id, created_at, champion_version, verdict, window_start, window_end, recent_rows, report_path
          FROM pipeline.drift_reports WHERE model = :model ORDER BY created_at DESC LIMIT :n
    """), {"model": model, "n": limit}).mappings()
    return [dict(r) for r in rows]


def model_overview(conn: Connection, model: str, runs_limit: int = 50) -> dict[str, Any]:
    """Everything the model's page shows, as plain data."""
    return {
        "model": model, "champion": records.current_champion(conn, model), "versions": versions(conn, model),
        "runs": records.recent_runs(conn, model, runs_limit), "reports": run_reports(conn, model),
        "promotions": records.promotion_history(conn, model), "shadows": records.shadow_set(conn, model),
        "drift": drift_reports(conn, model), "performance": performance.latest_reports(conn, model, 20),
    }


_REPORT_SQL = {
    "card": """SELECT c.path, m.run_id, c.version FROM pipeline.model_cards c JOIN pipeline.model_versions m USING (version)
                WHERE m.model = :model AND c.version = :key AND c.kind = 'card' ORDER BY c.created_at DESC LIMIT 1""",
    "comparison": """SELECT c.path, c.run_id, c.version FROM pipeline.model_cards c
                       JOIN pipeline.model_versions m USING (version)
                      WHERE m.model = :model AND c.run_id = :key AND c.kind = 'comparison'
                      ORDER BY c.created_at DESC LIMIT 1""",
    "quality": """SELECT v.report_path AS path, v.run_id, NULL::integer AS version FROM pipeline.validation_results v
                    JOIN pipeline.training_runs r USING (run_id)
                   WHERE r.model = :model AND v.run_id = :key AND v.report_path IS NOT NULL
                   ORDER BY v.created_at DESC LIMIT 1""",
    "drift": """SELECT report_path AS path, run_id, champion_version AS version FROM pipeline.drift_reports
                 WHERE model = :model AND run_id = :key AND report_path IS NOT NULL""",
    "performance": """SELECT report_path AS path, run_id, champion_version AS version FROM pipeline.performance_reports
                       WHERE model = :model AND run_id = :key AND report_path IS NOT NULL""",
}


def find_report(conn: Connection, model: str, kind: str, key: str | int) -> dict[str, Any]:
    """The recorded page of `kind` (a version's card, or a run's comparison/quality/drift/performance
    report) of `model`: its path, run and version. LookupError names what is missing."""
    if kind not in _REPORT_SQL:
        raise LookupError(f"no report kind {kind!r}; the kinds are {', '.join(REPORT_KINDS)}")
    row = conn.execute(sa.text(_REPORT_SQL[kind]), {"model": model, "key": key}).mappings().first()
    if row is None:
        what = f"version {key}" if kind == "card" else f"run {key}"
        raise LookupError(f"{model} has no {kind} page for {what}")
    return dict(row)


def read_report(store: Path | artifacts.ArtifactStore, recorded_path: str) -> bytes:
    """A stored page's bytes, checked against the SHA-256 its name carries. A store that moved is
    searched by name under its folder (cards/, reports/), then in the team store, before giving up."""
    recorded, artifact_dir = Path(recorded_path), artifacts.store_root(store)
    candidates = [recorded if recorded.is_absolute() else artifact_dir / recorded]
    candidates += [artifact_dir / folder / recorded.name for folder in ("cards", "reports")]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None and isinstance(store, artifacts.ArtifactStore) and store.engine is not None:
        kinds = [recorded.parent.name] if recorded.parent.name in ("cards", "reports") else ["cards", "reports"]
        path = next((p for p in (artifacts.local_copy(store, k, recorded.stem) for k in kinds) if p.is_file()), None)
    if path is None:
        raise LookupError(f"the page recorded at {recorded_path} is not in the artifact store {artifact_dir}; "
                          "is PIPELINE_ARTIFACT_DIR the store it was written to?")
    data = crypto.read_plain(path, artifacts.store_keys(store))  # a sealed page opens with the store's keys
    if artifacts.sha256_bytes(data) != path.stem:
        raise artifacts.ArtifactIntegrityError(f"{path} does not hash to its name: the page was changed on disk")
    return data


def quarantine_rows(conn: Connection, model: str, run_id: str | None = None, code: str | None = None,
                    limit: int | None = None, keys: crypto.Keyring | None = None) -> list[dict[str, Any]]:
    """The model's quarantined rows, newest run first, optionally of one run and/or one reason code; sealed rows
    are opened with `keys` (encryption at rest)."""
    rows = conn.execute(sa.text(f"""
        SELECT q.run_id, q.snapshot_hash, q.row_number, q.source_id, q.labelled, q.reasons, q.original, q.created_at,
               q.key_ref, q.sealed
          FROM pipeline.quarantine q JOIN pipeline.training_runs r USING (run_id)
         WHERE r.model = :model AND (CAST(:run_id AS text) IS NULL OR q.run_id = :run_id)
           AND (CAST(:code AS text) IS NULL OR q.reasons @> CAST(:code_json AS jsonb))
         ORDER BY q.created_at DESC, q.run_id, q.row_number {'LIMIT :n' if limit else ''}
    """), {"model": model, "run_id": run_id or None, "code": code or None,
           "code_json": json.dumps([{"code": code}]), "n": limit}).mappings()
    return [records.opened(dict(r), keys) for r in rows]


def read_quarantine(engine: Engine, model: str, principal: str, request: str, what: str,
                    run_id: str | None = None, code: str | None = None, limit: int | None = None,
                    channel: str = "view", keys: crypto.Keyring | None = None) -> list[dict[str, Any]]:
    """`quarantine_rows` for a person (the quarantine page, its CSV export, the `quarantine` command), the read
    recorded in pipeline.access_log in the same transaction: who, what (with its filters), how many rows."""
    filters = "".join(f" {k}={v}" for k, v in (("run_id", run_id), ("code", code)) if v)
    with engine.begin() as conn:
        rows = quarantine_rows(conn, model, run_id, code, limit, keys)
        accesslog.record(conn, [accesslog.Access(principal, channel, f"{what}{filters}", len(rows), request, model)])
    return rows


def quarantine_codes(conn: Connection, model: str) -> list[tuple[str, int]]:
    """Each reason code among the model's quarantined rows, with how many rows carry it."""
    rows = conn.execute(sa.text("""
        SELECT e.item->>'code' AS code, count(DISTINCT (q.run_id, q.snapshot_hash, q.row_number))
          FROM pipeline.quarantine q JOIN pipeline.training_runs r USING (run_id),
               jsonb_array_elements(q.reasons) AS e(item)
         WHERE r.model = :model GROUP BY 1 ORDER BY 2 DESC, 1
    """), {"model": model})
    return [(str(code), int(n)) for code, n in rows]


# --- HTML pieces -----------------------------------------------------------------------------------

def link(href: str, label: Any, top: bool = False) -> Html:
    """An escaped link; `top` opens it in the whole window (an Airflow page, out of the view's frame:
    `FRAME_LINKS` when the view is framed, `target='_top'` when it is not)."""
    target = " target='_top' data-airflow='1'" if top else ""
    return Html(f"<a href='{html.escape(href, quote=True)}'{target}>{text(label)}</a>")


# Airflow frames the view with sandbox="allow-scripts allow-same-origin allow-forms allow-downloads": no
# allow-top-navigation, so a target='_top' link does nothing there ("Unsafe attempt to initiate navigation").
# The frame is same-origin, so a link to an Airflow page is handed to the UI's own router instead: a new entry in
# the top window's history and the popstate event its router listens to, which is no navigation of the frame's.
FRAME_LINKS = """<script>document.addEventListener('click', function (e) {
  var a = e.target.closest ? e.target.closest('a[data-airflow]') : null;
  if (!a || window.top === window || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey) { return; }
  try {
    var top = window.top, state = top.history.state || {};
    top.history.pushState({usr: null, key: Math.random().toString(36).slice(2, 10), idx: (state.idx || 0) + 1},
                          '', a.href);
    top.dispatchEvent(new top.PopStateEvent('popstate', {state: top.history.state}));
    e.preventDefault();
  } catch (err) { /* a parent of another origin: the link's own target stands */ }
});</script>"""


def cell(value: Any) -> str:
    return value if isinstance(value, Html) else text(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    """An HTML table; Html cells go in as they are, every other value is escaped."""
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
    body = []
    for i, row in enumerate(rows):
        css = f" class='{html.escape(classes[i])}'" if classes and classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>" if body else "<p class='note'>none yet</p>"


def section(anchor: str, heading: str, body: str) -> str:
    return f"<section id='{html.escape(anchor)}'><h2>{html.escape(heading)}</h2>{body}</section>"


def nav(items: Iterable[tuple[str, str]]) -> str:
    return "<nav class='models-view'>" + "".join(link(href, label) for href, label in items) + "</nav>"


def page(title: str, body: str, crumbs: Iterable[tuple[str, str]] = ()) -> str:
    """A whole HTML document of the view."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{VIEW_STYLE}</style>{FRAME_LINKS}</head><body>{nav(crumbs)}<h1>{html.escape(title)}</h1>{body}"
            "</body></html>")


def metric(metrics: Mapping[str, Any] | None, name: str) -> Any:
    return None if not metrics else metrics.get(name)


# --- pages -----------------------------------------------------------------------------------------

def index_html(links: Links, models: Sequence[Mapping[str, Any]]) -> str:
    """The list of models, each with its champion. `models`: name, champion (row or None), versions, runs."""
    rows = []
    for m in models:
        champion = m["champion"]
        rows.append((link(links.model(m["name"]), m["name"]),
                     link(links.card(m["name"], champion["version"]), f"v{champion['version']}") if champion else None,
                     champion["model_family"] if champion else None, champion["promoted_at"] if champion else None,
                     m["versions"], m["runs"], link(links.quarantine(m["name"]), "quarantine")))
    body = table(["model", "champion", "family", "champion since", "versions", "runs", "data quality"], rows)
    return page("Models", body + "<p class='note'>Every page here is read-only. Actions (rollback, promote a "
                "version, shadow) go through the DAGs' triggers, so each is a run that Airflow audits.</p>",
                [(links.base + "/", "Models")])


def _version_rows(links: Links, model: str, rows: Sequence[Mapping[str, Any]], champion: int | None,
                  shadows: set[int]) -> tuple[list[tuple[Any, ...]], list[str]]:
    out, classes = [], []
    for v in rows:
        role = "champion" if v["version"] == champion else ("shadow" if v["version"] in shadows else "")
        live = (link(links.report(model, v["live_report"], "performance"), f"{v['live_rmse']:.3f}")
                if v["live_rmse"] is not None else None)
        out.append((link(links.card(model, v["version"]), f"v{v['version']}") if v["has_card"] else f"v{v['version']}",
                    role, v["model_family"], v["created_at"], metric(v["holdout"], "rmse"), metric(v["holdout"], "mae"),
                    metric(v["holdout"], "r2"), live, v["live_outcomes"], v["live_coverage"],
                    f"{v['decision']} (vs v{v['compared_with']})" if v["decision"] and v["compared_with"] else v["decision"],
                    v["run_status"], v["reason"] or v["run_reason"],
                    link(links.report(model, v["run_id"], "comparison"), "comparison") if v["decision"] else None))
        classes.append("champion" if role == "champion" else "")
    return out, classes


def _run_rows(links: Links, model: str, dag_id: str, runs: Sequence[Mapping[str, Any]],
              reports: Mapping[str, set[str]]) -> list[tuple[Any, ...]]:
    out = []
    for r in runs:
        has = reports.get(r["run_id"], set())
        pages = Html(" ".join(link(links.report(model, r["run_id"], kind), kind) for kind in ("quality", "comparison")
                              if kind in has))
        airflow = None if r["triggered_by"] == "cli" else link(links.dag_run(dag_id, r["run_id"]), "Airflow run", top=True)
        out.append((r["run_id"], r["triggered_by"], r["started_at"], r["status"], r["reason"],
                    f"v{r['candidate_version']}" if r["candidate_version"] else None,
                    metric(r["candidate_metrics"], "rmse"), metric(r["champion_metrics"], "rmse"), pages, airflow))
    return out


def trend_svg(points: Sequence[Mapping[str, Any]], width: int = 640, height: int = 240) -> str:
    """An inline SVG line chart of holdout RMSE (and live RMSE where known) across versions."""
    series = {"holdout RMSE": [(p["version"], p["holdout_rmse"]) for p in points if p["holdout_rmse"] is not None],
              "live RMSE": [(p["version"], p["live_rmse"]) for p in points if p["live_rmse"] is not None]}
    values = [y for s in series.values() for _, y in s]
    if not values:
        return "<p class='note'>No version has holdout metrics yet.</p>"
    versions_ = sorted({p["version"] for p in points})
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or abs(high) * 0.05 or 1.0
    low, high = low - pad, high + pad
    left, right, top, bottom = 60, 20, 20, 40

    def x(version: int) -> float:
        span = max(len(versions_) - 1, 1)
        return left + (width - left - right) * (versions_.index(version) / span if len(versions_) > 1 else 0.5)

    def y(value: float) -> float:
        return float(top + (height - top - bottom) * (high - value) / (high - low))

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             "aria-label='RMSE by version' class='trend'>",
             f"<line x1='{left}' y1='{height - bottom}' x2='{width - right}' y2='{height - bottom}' stroke='#333'/>",
             f"<line x1='{left}' y1='{top}' x2='{left}' y2='{height - bottom}' stroke='#333'/>",
             f"<text x='{(width + left) / 2}' y='{height - 5}' text-anchor='middle' font-size='12'>model version</text>",
             f"<text x='14' y='{(height - bottom) / 2}' font-size='12' transform='rotate(-90 14 {(height - bottom) / 2})'"
             " text-anchor='middle'>RMSE (lower is better)</text>",
             f"<text x='{left - 4}' y='{y(high - pad) + 4:.1f}' text-anchor='end' font-size='10'>{high - pad:.1f}</text>",
             f"<text x='{left - 4}' y='{y(low + pad) + 4:.1f}' text-anchor='end' font-size='10'>{low + pad:.1f}</text>"]
    parts += [f"<text x='{x(v):.1f}' y='{height - bottom + 14}' text-anchor='middle' font-size='10'>v{v}</text>"
              for v in versions_]
    for (name, pts), colour, row in zip(series.items(), ("#1f77b4", "#d62728"), (0, 1), strict=True):
        if not pts:
            continue
        line = " ".join(f"{x(v):.1f},{y(val):.1f}" for v, val in pts)
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{line}'/>")
        parts += [f"<circle cx='{x(v):.1f}' cy='{y(val):.1f}' r='4' fill='{colour}'><title>v{v} {name}: {val:.3f}"
                  "</title></circle>" for v, val in pts]
        parts.append(f"<text x='{width - right - 110}' y='{top + 12 + 14 * row}' font-size='11' fill='{colour}'>"
                     f"{html.escape(name)}</text>")
    return "".join(parts) + "</svg>"


def actions_html(links: Links, entry: ModelEntry, champion: int | None) -> str:
    """How to change the champion or the shadow set: through the DAGs' triggers, never from this page."""
    set_champion = entry.dag_id("set_champion")
    return (f"<p>To change the champion, trigger the {link(links.dag(set_champion), set_champion, top=True)} DAG "
            "(<b>Trigger</b> on its page) with its params: <code>mode</code> <code>rollback</code> (back to an "
            "earlier champion; the previous one when <code>to_version</code> is empty) or <code>promote</code> "
            "(make any registered version champion), <code>to_version</code>, a <code>reason</code> (recorded "
            "with the event) and <code>force</code>. Each change is a DAG run, audited by Airflow and appended to "
            "the promotion history below.</p>"
            f"<p>The version in production is <b>{'v' + str(champion) if champion else 'none yet'}</b>. Shadow "
            "versions are set with <code>python -m pipeline shadow --add VERSION --reason ...</code>; the nightly "
            f"{link(links.dag(entry.dag_id('score_patients')), entry.dag_id('score_patients'), top=True)} run scores "
            f"them beside the champion. A retrain is started from {link(links.dag(entry.dag_id('retrain')), entry.dag_id('retrain'), top=True)}.</p>")


def model_html(links: Links, entry: ModelEntry, overview: Mapping[str, Any]) -> str:
    """The model's page: champion, versions, runs, promotions, trend, monitoring reports, actions."""
    model, champion = entry.name, overview["champion"]
    champion_version = champion["version"] if champion else None
    shadows = {int(s["version"]) for s in overview["shadows"]}
    version_rows, classes = _version_rows(links, model, overview["versions"], champion_version, shadows)
    summary = (f"<p class='champion'>Champion: {link(links.card(model, champion['version']), f'v{champion_version}')} "
               f"({text(champion['model_family'])}), promoted {text(champion['promoted_at'])} by run "
               f"{text(champion['promoted_by_run'])}.</p>" if champion else "<p>No champion yet.</p>")
    trend = [{"version": v["version"], "holdout_rmse": metric(v["holdout"], "rmse"), "live_rmse": v["live_rmse"]}
             for v in reversed(overview["versions"])]
    promotions = [(e["at"], f"v{e['from_version']}" if e["from_version"] else None, f"v{e['to_version']}", e["actor"],
                   e["reason"], e["run_id"]) for e in overview["promotions"]]
    drift = [(link(links.report(model, d["run_id"], "drift"), d["run_id"]) if d["report_path"] else d["run_id"],
              d["created_at"], d["verdict"], f"v{d['champion_version']}" if d["champion_version"] else None,
              d["window_start"], d["window_end"], d["recent_rows"]) for d in overview["drift"]]
    perf = [(link(links.report(model, p["run_id"], "performance"), p["run_id"]) if p["report_path"] else p["run_id"],
             p["created_at"], p["verdict"], f"v{p['champion_version']}" if p["champion_version"] else None,
             p["outcomes"], p["live_rmse"], p["holdout_rmse"], refused_text(p["refused_outcomes"]))
            for p in overview["performance"]]
    body = "".join([
        summary,
        section("trend", "Metric trend", trend_svg(trend) + "<p class='note'>Each version's holdout RMSE is on its "
                "own run's holdout (the newest rows then), so two versions are not scored on the same rows here; "
                "each decision's comparison page scores candidate and champion on the same rows.</p>"),
        section("versions", "Versions", table(
            ["version", "role", "family", "trained", "holdout RMSE", "holdout MAE", "holdout R²", "live RMSE",
             "live outcomes", "live coverage", "decision", "run status", "reason", "page"], version_rows, classes)),
        section("runs", "Retrain runs", table(
            ["run", "started by", "started", "status", "reason", "candidate", "candidate RMSE", "champion RMSE",
             "reports", "Airflow"], _run_rows(links, model, entry.dag_id("retrain"), overview["runs"], overview["reports"]))),
        section("promotions", "Promotion history", table(["at", "from", "to", "by", "reason", "run"], promotions)),
        section("drift", "Drift checks", table(["run", "at", "verdict", "champion", "window start", "window end",
                                                "recent rows"], drift)),
        section("performance", "Performance on real outcomes", table(
            ["run", "at", "verdict", "champion", "outcomes", "live RMSE", "holdout RMSE",
             "outcomes refused by the contract"], perf)),
        section("quarantine", "Data quality", f"<p>{link(links.quarantine(model), 'Quarantined rows')} (with reasons "
                f"and original values; {link(links.quarantine(model, csv_export=True), 'CSV export')}).</p>"),
        section("actions", "Actions", actions_html(links, entry, champion_version)),
    ])
    return page(f"Model {model}", body, [(links.base + "/", "Models"), (links.model(model), model)])


def report_crumbs(links: Links, model: str, kind: str, found: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The links a served report gets above it: back to the model, and to the pages about the same run."""
    crumbs = [(links.base + "/", "Models"), (links.model(model), model)]
    run_id, version = found.get("run_id"), found.get("version")
    if kind in ("card", "comparison", "quality") and run_id:
        crumbs += [(links.report(model, run_id, other), label) for other, label in
                   (("quality", f"quality report of run {run_id}"), ("comparison", "champion/challenger comparison"))
                   if other != kind]
    if version and kind != "card":
        label = "card of the champion checked" if kind in ("drift", "performance") else f"card of v{version}"
        crumbs.append((links.card(model, version), label))
    crumbs.append((links.quarantine(model, run_id=run_id or "") if kind == "quality" else links.quarantine(model),
                   "quarantined rows"))
    return crumbs


def with_crumbs(document: bytes, crumbs: Iterable[tuple[str, str]]) -> str:
    """A stored page with the view's navigation put right after its <body> tag."""
    source = document.decode("utf-8")
    bar = f"<style>{NAV_STYLE}</style>" + nav(crumbs)
    at = source.find("<body>")
    return source[:at + 6] + bar + source[at + 6:] if at >= 0 else bar + source


def refused_text(refused: Mapping[str, Any] | None) -> str:
    """A report's refused outcomes as `41 (out_of_range 41)`, with OVER LIMIT when they are a data-quality signal."""
    if not refused or not refused.get("refused"):
        return "0"
    counts = ", ".join(f"{code} {n}" for code, n in sorted((refused.get("reason_counts") or {}).items()))
    return f"{refused['refused']} ({counts})" + (" OVER LIMIT: a data-quality signal" if refused.get("over_limit") else "")


def reasons_text(reasons: Sequence[Mapping[str, Any]]) -> str:
    """A row's reasons as one line: `code (column: rule; value)`, joined by ' | '."""
    return " | ".join(f"{r.get('code')} ({r.get('column')}: {r.get('rule')}; value {r.get('value')!s})"
                      for r in reasons)


def original_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every column of the rows' original values, in the order first seen."""
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r["original"] or {}))
    return list(seen)


def quarantine_html(links: Links, model: str, rows: Sequence[Mapping[str, Any]], codes: Sequence[tuple[str, int]],
                    run_id: str, code: str, limit: int) -> str:
    """The quarantine browser: filters by reason code and run, the rows with their reasons and original values."""
    columns = original_columns(rows)
    body_rows = [(link(links.report(model, r["run_id"], "quality"), r["run_id"]), r["row_number"], r["source_id"],
                  "yes" if r["labelled"] else "awaiting outcome", reasons_text(r["reasons"]),
                  *[(r["original"] or {}).get(c) for c in columns]) for r in rows]
    filters = " ".join([link(links.quarantine(model, run_id=run_id), "all reasons")] +
                       [link(links.quarantine(model, run_id=run_id, code=c), f"{c} ({n})") for c, n in codes])
    shown = (f"<p>Showing {len(rows)} row(s){' of run ' + html.escape(run_id) if run_id else ''}"
             f"{' with reason ' + html.escape(code) if code else ''}"
             f"{f' (the first {limit}; the CSV has them all)' if len(rows) >= limit else ''}. "
             f"{link(links.quarantine(model, csv_export=True, run_id=run_id, code=code), 'Download as CSV')}</p>")
    body = (f"<p>Reason: {filters}</p>" + shown +
            table(["run", "row", "source id", "labelled", "reasons", *columns], body_rows))
    return page(f"Quarantined rows of {model}", body, [(links.base + "/", "Models"), (links.model(model), model),
                                                       (links.quarantine(model), "quarantine")])


def quarantine_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The quarantined rows as CSV for a data steward: where each row is, why, and its values as read."""
    columns = original_columns(rows)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["run_id", "snapshot_hash", "row_number", "source_id", "labelled", "reason_codes", "reasons",
                     *columns])
    for r in rows:
        codes = ";".join(dict.fromkeys(str(x.get("code")) for x in r["reasons"]))
        writer.writerow([r["run_id"], r["snapshot_hash"], r["row_number"], r["source_id"], r["labelled"], codes,
                         reasons_text(r["reasons"]), *[(r["original"] or {}).get(c) for c in columns]])
    return out.getvalue()


def model_summaries(conn: Connection, names: Sequence[str]) -> list[dict[str, Any]]:
    """For the index: each model's champion and how many versions and runs it has."""
    counts = {row[0]: (row[1], row[2]) for row in conn.execute(sa.text("""
        SELECT r.model, (SELECT count(*) FROM pipeline.model_versions m WHERE m.model = r.model), count(*)
          FROM pipeline.training_runs r GROUP BY r.model"""))}
    return [{"name": n, "champion": records.current_champion(conn, n), "versions": counts.get(n, (0, 0))[0],
             "runs": counts.get(n, (0, 0))[1]} for n in names]
