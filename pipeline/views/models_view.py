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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.contract.config import ModelEntry
from pipeline.model.cards import STYLE, reason_as_change, text
from pipeline.monitoring import performance
from pipeline.registry import records
from pipeline.store import accesslog, artifacts, crypto

REPORT_KINDS = ("card", "comparison", "quality", "drift", "performance")
QUARANTINE_PAGE_ROWS = 200
RUNS_LISTED = 2000  # the newest runs the runs table searches, sorts and pages through
NAV_STYLE = ("nav.models-view{font-family:sans-serif;font-size:small;padding:4px 0;border-bottom:1px solid #ccc;"
             "margin-bottom:8px}nav.models-view a{margin-right:12px}")
# Airflow's look, light and dark (prefers-color-scheme): its system font stack, its greys, its blue links.
THEME_STYLE = ("body{font-family:Inter,system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#18181b;"
               "background:#fff}a{color:#0369a1}th{border-bottom:1px solid #d4d4d8}svg.trend{color:#333}"
               "input,select,button{font:inherit}button{padding:2px 10px}.fail{color:#b00}"
               "@media (prefers-color-scheme: dark){body{color:#e4e4e7;background:#18181b}a{color:#7dd3fc}"
               "tr:nth-child(even){background:#27272a}th{border-bottom-color:#3f3f46}.note{color:#a1a1aa}"
               "nav.models-view{border-bottom-color:#3f3f46}svg.trend{color:#d4d4d8}.worse{background:#5b2121}"
               ".worse-unjudged{background:#5a4a1a}.fail{color:#f87171}input,select,button{color:#e4e4e7;"
               "background:#27272a;border:1px solid #52525b}}")
VIEW_STYLE = (STYLE + NAV_STYLE + "body{max-width:110em}td{vertical-align:top}.champion{font-weight:bold}"
              ".note{color:#555;font-size:small}code{font-size:small}th a{color:inherit}svg.trend text{fill:currentColor}"
              + THEME_STYLE)


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

    def trigger_api(self, dag_id: str) -> str:
        return f"{self.airflow}/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"

    def action(self, model: str, key: str, version: int | None = None) -> str:
        return f"{self.model(model)}/actions/{quote(key, safe='')}" + (f"?version={int(version)}" if version else "")

    def forecasts(self, model: str, page: int = 1, refused: str = "") -> str:
        query = urlencode({k: v for k, v in (("page", page if page > 1 else ""), ("refused", refused)) if v})
        return f"{self.model(model)}/forecasts{'?' + query if query else ''}"

    def metrics(self, model: str) -> str:
        return f"{self.model(model)}/metrics"

    def compare(self, model: str, a: int | None = None, b: int | None = None) -> str:
        query = urlencode({k: v for k, v in (("a", a), ("b", b)) if v})
        return f"{self.model(model)}/compare{'?' + query if query else ''}"


# --- queries ---------------------------------------------------------------------------------------

def versions(conn: Connection, model: str) -> list[dict[str, Any]]:
    """Every version of the model, newest first: holdout metrics and decision of the run that trained it,
    its latest live metrics on real outcomes (served forecasts, all rows), and which pages it has."""
    rows = conn.execute(sa.text("""
        SELECT m.version, m.run_id, m.model_family, m.created_at, m.train_rows, m.holdout_rows,
               e.candidate_metrics AS holdout, e.champion_metrics AS champion_holdout,
               e.champion_version AS compared_with, e.decision, e.reason,
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
FRAME_LINKS = """<script>window.toAirflow = function (href) {
  var url = new URL(href, window.location.href).href;
  if (window.top === window) { window.location.assign(url); return true; }
  try {
    var top = window.top, state = top.history.state || {};
    top.history.pushState({usr: null, key: Math.random().toString(36).slice(2, 10), idx: (state.idx || 0) + 1},
                          '', url);
    top.dispatchEvent(new top.PopStateEvent('popstate', {state: top.history.state}));
    return true;
  } catch (err) { return false; /* a parent of another origin: the link's own target stands */ }
};
document.addEventListener('click', function (e) {
  var a = e.target.closest ? e.target.closest('a[data-airflow]') : null;
  if (!a || window.top === window || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey) { return; }
  if (window.toAirflow(a.href)) { e.preventDefault(); }
});</script>"""


def cell(value: Any) -> str:
    return value if isinstance(value, Html) else text(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    """An HTML table; Html cells go in as they are, every other value is escaped."""
    head = "<tr>" + "".join(f"<th>{cell(h)}</th>" for h in headers) + "</tr>"
    body = []
    for i, row in enumerate(rows):
        css = f" class='{html.escape(classes[i])}'" if classes and classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>" if body else "<p class='note'>none yet</p>"


def section(anchor: str, heading: str, body: str) -> str:
    return f"<section id='{html.escape(anchor)}'><h2>{html.escape(heading)}</h2>{body}</section>"


def nav(items: Iterable[tuple[str, str]]) -> str:
    return "<nav class='models-view'>" + "".join(link(href, label) for href, label in items) + "</nav>"


def page(title: str, body: str, crumbs: Iterable[tuple[str, str]] = (), script: str = "") -> str:
    """A whole HTML document of the view (`script`: more of its own, trusted, in the head)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta name='color-scheme' content='light dark'>"
            f"<title>{html.escape(title)}</title><style>{VIEW_STYLE}</style>{FRAME_LINKS}{script}</head><body>{nav(crumbs)}<h1>{html.escape(title)}</h1>{body}"
            "</body></html>")


def metric(metrics: Mapping[str, Any] | None, name: str) -> Any:
    return None if not metrics else metrics.get(name)


def stamp(value: Any) -> Any:
    """A timestamp in UTC to the second (`2026-12-07 19:05:03`); anything else as it is."""
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).strftime("%Y-%m-%d %H:%M:%S")
    return value


@dataclass(frozen=True)
class Listing:
    """A table's server-side view: a search text, a sort column (`-` before it: descending) and a page."""

    prefix: str  # the query params' prefix: v for versions, r for runs
    q: str = ""
    sort: str = ""
    page: int = 1
    per_page: int = 25

    @classmethod
    def from_query(cls, prefix: str, query: Mapping[str, str], per_page: int = 25) -> Listing:
        try:
            number = max(int(query.get(f"{prefix}page", "1") or 1), 1)
        except ValueError:
            number = 1
        return cls(prefix, query.get(f"{prefix}q", "").strip(), query.get(f"{prefix}sort", ""), number, per_page)

    def apply(self, rows: Sequence[Any], searched: Any, keys: Mapping[str, Any]) -> tuple[list[Any], int]:
        """The rows of this page (searched, then sorted), and how many matched the search."""
        found = [r for r in rows if self.q.lower() in searched(r).lower()] if self.q else list(rows)
        column = self.sort.lstrip("-")
        if column in keys:
            key = keys[column]
            present = sorted((r for r in found if key(r) is not None), key=key, reverse=self.sort.startswith("-"))
            found = present + [r for r in found if key(r) is None]
        start = (self.page - 1) * self.per_page
        return found[start:start + self.per_page], len(found)

    def params(self, **changes: Any) -> dict[str, str]:
        values = {"q": self.q, "sort": self.sort, "page": self.page, **changes}
        return {f"{self.prefix}{k}": str(v) for k, v in values.items() if v not in ("", None, 1)}


def listing_controls(href: str, listing: Listing, total: int, other: Mapping[str, str], anchor: str) -> str:
    """The search box and the pager of a listed table (`other`: the other tables' params, kept)."""
    pages = max(1, -(-total // listing.per_page))
    hidden = "".join(f"<input type='hidden' name='{html.escape(k, quote=True)}' value='{html.escape(v, quote=True)}'>"
                     for k, v in {**other, **listing.params(q="", page=1)}.items())
    search = (f"<form method='get' action='{html.escape(href, quote=True)}#{anchor}' class='search'>{hidden}"
              f"<input type='search' name='{listing.prefix}q' value='{html.escape(listing.q, quote=True)}' "
              "placeholder='search'> <button type='submit'>Search</button></form>")
    moves = " ".join(link(f"{href}?{urlencode({**other, **listing.params(page=n)})}#{anchor}", label)
                     for n, label in ((listing.page - 1, "previous page"), (listing.page + 1, "next page"))
                     if 1 <= n <= pages)
    return search + f"<p class='note'>{total} found; page {min(listing.page, pages)} of {pages}. {moves}</p>"


def sort_header(href: str, label: str, column: str, listing: Listing, other: Mapping[str, str], anchor: str) -> Html:
    """A column header that sorts the table by it (ascending, then descending on a second click)."""
    order = f"-{column}" if listing.sort == column else column
    arrow = " ▲" if listing.sort == column else (" ▼" if listing.sort == f"-{column}" else "")
    return link(f"{href}?{urlencode({**other, **listing.params(sort=order, page=1)})}#{anchor}", label + arrow)


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


VERSION_SORTS = {"version": lambda v: v["version"], "trained": lambda v: v["created_at"],
                 "holdout_rmse": lambda v: metric(v["holdout"], "rmse"), "live_rmse": lambda v: v["live_rmse"],
                 "family": lambda v: v["model_family"]}
RUN_SORTS = {"started": lambda r: r["started_at"], "status": lambda r: r["status"],
             "candidate_rmse": lambda r: metric(r["candidate_metrics"], "rmse")}


def _searched_version(v: Mapping[str, Any]) -> str:
    return " ".join(str(x) for x in (f"v{v['version']}", v["model_family"], v["decision"], v["run_status"],
                                     v["reason"], v["run_reason"], v["run_id"]) if x)


def _searched_run(r: Mapping[str, Any]) -> str:
    return " ".join(str(x) for x in (r["run_id"], r["triggered_by"], r["status"], r["reason"],
                                     f"v{r['candidate_version']}" if r["candidate_version"] else "") if x)


def action_links(links: Links, model: str, version: int, role: str, was_champion: bool,
                 champion: int | None) -> Html:
    """A version's actions: make champion or roll back to it, add as shadow, compare with the champion. Each
    opens a prefilled trigger form or a page; none acts by itself."""
    out = []
    if role != "champion":
        key, label = ("roll_back", "roll back to") if was_champion else ("make_champion", "make champion")
        out.append(link(links.action(model, key, version), label))
    if role not in ("champion", "shadow"):
        out.append(link(links.action(model, "add_shadow", version), "add as shadow"))
    if champion and champion != version:
        out.append(link(links.compare(model, champion, version), f"compare with v{champion}"))
    return Html(" · ".join(out))


def _version_rows(links: Links, model: str, rows: Sequence[Mapping[str, Any]], champion: int | None,
                  shadows: set[int], were_champion: set[int]) -> tuple[list[tuple[Any, ...]], list[str]]:
    out, classes = [], []
    for v in rows:
        role = "champion" if v["version"] == champion else ("shadow" if v["version"] in shadows else "")
        live = (link(links.report(model, v["live_report"], "performance"), f"{v['live_rmse']:.3f}")
                if v["live_rmse"] is not None else None)
        out.append((link(links.card(model, v["version"]), f"v{v['version']}") if v["has_card"] else f"v{v['version']}",
                    role, v["model_family"], stamp(v["created_at"]), metric(v["holdout"], "rmse"),
                    metric(v["holdout"], "mae"), metric(v["holdout"], "r2"), live, v["live_outcomes"],
                    v["live_coverage"],
                    f"{v['decision']} (vs v{v['compared_with']})" if v["decision"] and v["compared_with"] else v["decision"],
                    v["run_status"], reason_as_change(v["reason"] or v["run_reason"]),
                    link(links.report(model, v["run_id"], "comparison"), "comparison") if v["decision"] else None,
                    action_links(links, model, v["version"], role, v["version"] in were_champion, champion)))
        classes.append("champion" if role == "champion" else "")
    return out, classes


def _run_rows(links: Links, model: str, dag_id: str, runs: Sequence[Mapping[str, Any]],
              reports: Mapping[str, set[str]]) -> list[tuple[Any, ...]]:
    out = []
    for r in runs:
        has = reports.get(r["run_id"], set())
        pages = Html(" ".join(link(links.report(model, r["run_id"], kind), kind) for kind in ("quality", "comparison")
                              if kind in has))
        run = r["run_id"] if r["triggered_by"] == "cli" else link(links.dag_run(dag_id, r["run_id"]), r["run_id"], top=True)
        out.append((run, r["triggered_by"], stamp(r["started_at"]), r["status"], reason_as_change(r["reason"]),
                    f"v{r['candidate_version']}" if r["candidate_version"] else None,
                    metric(r["candidate_metrics"], "rmse"), metric(r["champion_metrics"], "rmse"), pages))
    return out


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def line_chart(series: Mapping[str, Sequence[tuple[int, float]]], x_labels: Sequence[str], x_title: str,
               y_title: str, label: str, width: int = 720, height: int = 280) -> str:
    """An inline SVG line chart: each series a list of (position on the x axis, value); both axes titled."""
    values = [y for points in series.values() for _, y in points]
    if not values:
        return "<p class='note'>Nothing to plot yet.</p>"
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or abs(high) * 0.05 or 1.0
    low, high = low - pad, high + pad
    left, right, top, bottom = 64, 150, 16, 56

    def x(i: int) -> float:
        return left + (width - left - right) * (i / max(len(x_labels) - 1, 1) if len(x_labels) > 1 else 0.5)

    def y(v: float) -> float:
        return top + (height - top - bottom) * (high - v) / (high - low)

    mid = (top + height - bottom) / 2
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"aria-label='{html.escape(label, quote=True)}' class='trend'>",
             f"<line x1='{left}' y1='{height - bottom}' x2='{width - right}' y2='{height - bottom}' stroke='currentColor'/>",
             f"<line x1='{left}' y1='{top}' x2='{left}' y2='{height - bottom}' stroke='currentColor'/>",
             f"<text class='x-title' x='{(width - right + left) / 2}' y='{height - 6}' text-anchor='middle' "
             f"font-size='12'>{html.escape(x_title)}</text>",
             f"<text class='y-title' x='14' y='{mid}' font-size='12' transform='rotate(-90 14 {mid})' "
             f"text-anchor='middle'>{html.escape(y_title)}</text>"]
    for tick in (low + pad, (low + high) / 2, high - pad):
        parts.append(f"<text x='{left - 4}' y='{y(tick) + 4:.1f}' text-anchor='end' font-size='10'>{tick:.1f}</text>")
    step = max(1, len(x_labels) // 12)
    parts += [f"<text x='{x(i):.1f}' y='{height - bottom + 14}' text-anchor='middle' font-size='10'>"
              f"{html.escape(name)}</text>" for i, name in enumerate(x_labels) if i % step == 0]
    for row, ((name, points), colour) in enumerate(zip(series.items(), COLOURS * 8, strict=False)):
        if not points:
            continue
        line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points)
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{line}'/>")
        parts += [f"<circle cx='{x(i):.1f}' cy='{y(v):.1f}' r='3.5' fill='{colour}'><title>{html.escape(name)}, "
                  f"{html.escape(x_labels[i])}: {v:.3f}</title></circle>" for i, v in points]
        parts.append(f"<text x='{width - right + 8}' y='{top + 12 + 14 * row}' font-size='11' style='fill:{colour}'>"
                     f"{html.escape(name)}</text>")
    return "".join(parts) + "</svg>"


def actions_html(links: Links, entry: ModelEntry, champion: int | None) -> str:
    """The model's actions: each link opens the matching DAG's trigger form, prefilled; nothing acts by itself."""
    model = entry.name
    return (f"<p>{link(links.action(model, 'retrain'), 'retrain now')} · {link(links.action(model, 'score'), 'score now')}"
            f" · {link(links.compare(model), 'compare two versions')} · {link(links.forecasts(model), 'forecasts')}"
            f" · {link(links.metrics(model), 'metrics over time')}</p>"
            "<p class='note'>Per version (the Versions table): make champion, roll back to (a former champion), "
            "add as shadow. Each opens a form with the DAG's params filled in; the run starts only from its "
            f"Trigger button, as an Airflow run audited under your user. The version in production is "
            f"<b>{'v' + str(champion) if champion else 'none yet'}</b>; the DAGs: "
            + ", ".join(link(links.dag(entry.dag_id(d)), entry.dag_id(d), top=True)
                        for d in ("retrain", "score_patients", "set_champion", "set_shadow")) + ".</p>")


def _listed(links: Links, model: str, listing: Listing, other: Listing, total: int, anchor: str,
            headers: Sequence[tuple[str, str | None]], rows: Sequence[Sequence[Any]],
            classes: Sequence[str] | None = None) -> str:
    href, kept = links.model(model), other.params()
    heads = [sort_header(href, label, column, listing, kept, anchor) if column else label for label, column in headers]
    return listing_controls(href, listing, total, kept, anchor) + table(heads, rows, classes)


def model_html(links: Links, entry: ModelEntry, overview: Mapping[str, Any],
               query: Mapping[str, str] | None = None) -> str:
    """The model's page: champion, actions, versions and runs (searched, sorted, paged by `query`), promotions,
    trend, monitoring reports. Times are UTC, to the second."""
    model, champion = entry.name, overview["champion"]
    champion_version = champion["version"] if champion else None
    shadows = {int(s["version"]) for s in overview["shadows"]}
    were_champion = {int(e["to_version"]) for e in overview["promotions"] if e["to_version"]}
    vlist, rlist = Listing.from_query("v", query or {}), Listing.from_query("r", query or {})
    shown_versions, versions_found = vlist.apply(overview["versions"], _searched_version, VERSION_SORTS)
    version_rows, classes = _version_rows(links, model, shown_versions, champion_version, shadows, were_champion)
    shown_runs, runs_found = rlist.apply(overview["runs"], _searched_run, RUN_SORTS)
    summary = (f"<p class='champion'>Champion: {link(links.card(model, champion['version']), f'v{champion_version}')} "
               f"({text(champion['model_family'])}), promoted {text(stamp(champion['promoted_at']))} UTC by run "
               f"{text(champion['promoted_by_run'])}.</p>" if champion else "<p>No champion yet.</p>")
    decided = [v for v in reversed(overview["versions"]) if v["decision"]]
    labels = [f"v{v['version']} ({v['decision']})" for v in decided]
    trend = {"candidate": [(i, metric(v["holdout"], "rmse")) for i, v in enumerate(decided)
                           if metric(v["holdout"], "rmse") is not None],
             "champion (same rows)": [(i, metric(v.get("champion_holdout"), "rmse")) for i, v in enumerate(decided)
                                      if metric(v.get("champion_holdout"), "rmse") is not None]}
    promotions = [(stamp(e["at"]), f"v{e['from_version']}" if e["from_version"] else None, f"v{e['to_version']}",
                   e["actor"], e["reason"], e["run_id"]) for e in overview["promotions"]]
    drift = [(link(links.report(model, d["run_id"], "drift"), d["run_id"]) if d["report_path"] else d["run_id"],
              stamp(d["created_at"]), d["verdict"], f"v{d['champion_version']}" if d["champion_version"] else None,
              stamp(d["window_start"]), stamp(d["window_end"]), d["recent_rows"]) for d in overview["drift"]]
    perf = [(link(links.report(model, p["run_id"], "performance"), p["run_id"]) if p["report_path"] else p["run_id"],
             stamp(p["created_at"]), p["verdict"], f"v{p['champion_version']}" if p["champion_version"] else None,
             p["outcomes"], p["live_rmse"], p["holdout_rmse"], refused_text(p["refused_outcomes"]))
            for p in overview["performance"]]
    body = "".join([
        summary,
        "<p class='note'>Every time on this page is UTC, to the second.</p>",
        section("actions", "Actions", actions_html(links, entry, champion_version)),
        section("trend", "Metric trend", line_chart(
            trend, labels, "promotion decision (candidate version, decision)", "holdout RMSE on the decision's rows",
            "holdout RMSE per decision") + "<p class='note'>At each decision, candidate and champion are scored on "
            "the same rows (that run's holdout less the rows the champion trained on); two decisions are on different "
            f"rows. {link(links.metrics(model), 'Metrics over time')} adds live RMSE per month; "
            f"{link(links.compare(model), 'compare')} scores any two versions on the same rows.</p>"),
        section("versions", "Versions", _listed(
            links, model, vlist, rlist, versions_found, "versions",
            [("version", "version"), ("role", None), ("family", "family"), ("trained (UTC)", "trained"),
             ("holdout RMSE", "holdout_rmse"), ("holdout MAE", None), ("holdout R²", None), ("live RMSE", "live_rmse"),
             ("live outcomes", None), ("live coverage", None), ("decision", None), ("run status", None),
             ("reason", None), ("page", None), ("actions", None)], version_rows, classes)),
        section("runs", "Retrain runs", _listed(
            links, model, rlist, vlist, runs_found, "runs",
            [("run (its Airflow run)", None), ("started by", None), ("started (UTC)", "started"), ("status", "status"),
             ("reason", None), ("candidate", None), ("candidate RMSE", "candidate_rmse"), ("champion RMSE", None),
             ("reports", None)], _run_rows(links, model, entry.dag_id("retrain"), shown_runs, overview["reports"]))),
        section("promotions", "Promotion history", table(["at (UTC)", "from", "to", "by", "reason", "run"], promotions)),
        section("drift", "Drift checks", table(["run", "at (UTC)", "verdict", "champion", "window start",
                                                "window end", "recent rows"], drift)),
        section("performance", "Performance on real outcomes", table(
            ["run", "at (UTC)", "verdict", "champion", "outcomes", "live RMSE", "holdout RMSE",
             "outcomes refused by the contract"], perf)),
        section("quarantine", "Data quality", f"<p>{link(links.quarantine(model), 'Quarantined rows')} (with reasons "
                f"and original values; {link(links.quarantine(model, csv_export=True), 'CSV export')}).</p>"),
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
