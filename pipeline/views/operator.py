"""The operator's pages of the Models view: the action forms, the forecasts, and the compare page.

An action is never taken by a link: each link opens a form, prefilled, that shows the DAG and the params it
will trigger with; only its button triggers the run, through Airflow's own REST API as the logged-in user,
so Airflow validates the params and audits the run as for its own trigger form. (Airflow 3.3's trigger
dialog takes no prefilled values from a URL: it prefills only from an earlier run's conf.)
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.registry import records
from pipeline.store import accesslog, crypto
from pipeline.views.models_view import Links, line_chart, link, page, section, stamp, table

FORECAST_PAGE_ROWS = 50
SCORING_RUNS_SHOWN = 30


# --- actions ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One param of a trigger form: its conf key, label, input kind, prefilled value and help."""

    name: str
    label: str
    kind: str  # text | number | select | checkbox
    value: Any = None
    choices: tuple[str, ...] = ()
    help: str = ""


@dataclass(frozen=True)
class Action:
    """What an action link opens: the DAG (its base id) it triggers and the form's fields."""

    key: str
    title: str
    dag: str
    what: str
    fields: tuple[Field, ...] = field(default_factory=tuple)
    needs_version: bool = False


def _reason(default: str = "") -> Field:
    return Field("reason", "Reason", "text", default, help="Why: recorded with the event (at least 3 characters).")


def _force() -> Field:
    return Field("force", "Force", "checkbox", False,
                 help="Even a version that failed its policy checks when evaluated, or never was.")


def action(key: str, version: int | None) -> Action:
    """The action `key` for `version` (when it takes one); LookupError names the actions there are."""
    builders = {
        "make_champion": lambda: Action(
            key, f"Make v{version} champion", "set_champion",
            "promotes the version (checked against its policy results and live evidence), then scoring runs",
            (Field("mode", "Mode", "select", "promote", ("promote", "rollback")),
             Field("to_version", "Version", "number", version), _reason(), _force()), True),
        "roll_back": lambda: Action(
            key, f"Roll back to v{version}", "set_champion",
            "makes an earlier champion champion again, then scoring runs",
            (Field("mode", "Mode", "select", "rollback", ("rollback", "promote")),
             Field("to_version", "Version", "number", version), _reason(), _force()), True),
        "add_shadow": lambda: Action(
            key, f"Add v{version} as shadow", "set_shadow",
            "puts the version in shadow: the nightly scoring scores it beside the champion, never shown to the CRM",
            (Field("action", "Action", "select", "add", ("add", "remove")),
             Field("version", "Version", "number", version), _reason()), True),
        "retrain": lambda: Action(key, "Retrain now", "retrain",
                                  "ingests the new rows, validates, trains, evaluates and promotes if the policy "
                                  "says so; empty params take the model config's values"),
        "score": lambda: Action(key, "Score now", "score_patients",
                                "scores every record awaiting a forecast with the champion (and the shadows)"),
    }
    if key not in builders:
        raise LookupError(f"no action {key!r}; the actions are {', '.join(builders)}")
    if key != "retrain" and key != "score" and version is None:
        raise LookupError(f"the action {key!r} needs a version: ?version=N")
    return builders[key]()


# Submits the form to Airflow's REST API as the logged-in user (the UI's session cookie), then opens the new
# run's page through Airflow's router (`toAirflow`, in FRAME_LINKS); a refusal is shown as Airflow words it.
TRIGGER_SCRIPT = """<script>document.addEventListener('submit', function (e) {
  var form = e.target; if (!form.matches('form.trigger')) { return; }
  e.preventDefault();
  var conf = {}, out = form.querySelector('.outcome');
  form.querySelectorAll('[data-param]').forEach(function (input) {
    var kind = input.getAttribute('data-param');
    if (kind === 'checkbox') { conf[input.name] = input.checked; }
    else if (kind === 'number') { conf[input.name] = input.value === '' ? null : Number(input.value); }
    else { conf[input.name] = input.value; }
  });
  var note = form.querySelector('[name=note]').value;
  out.textContent = 'Triggering...';
  fetch(form.getAttribute('data-api'), {method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json', 'Accept': 'application/json'},
        body: JSON.stringify({logical_date: null, conf: conf, note: note || null})})
    .then(function (r) { return r.json().catch(function () { return {}; }).then(function (j) { return [r, j]; }); })
    .then(function (rj) {
      var r = rj[0], j = rj[1];
      if (!r.ok) {
        var detail = typeof j.detail === 'string' ? j.detail : JSON.stringify(j.detail || j);
        out.textContent = 'Airflow refused the run (HTTP ' + r.status + '): ' + detail;
        out.className = 'outcome fail'; return;
      }
      out.textContent = 'Triggered run ' + j.dag_run_id + '.';
      window.toAirflow(form.getAttribute('data-runs') + encodeURIComponent(j.dag_run_id));
    })
    .catch(function (err) { out.textContent = 'Could not reach Airflow: ' + err; out.className = 'outcome fail'; });
});</script>"""


def _input(f: Field) -> str:
    name = html.escape(f.name, quote=True)
    if f.kind == "select":
        options = "".join(f"<option value='{html.escape(c, quote=True)}'{' selected' if c == f.value else ''}>"
                          f"{html.escape(c)}</option>" for c in f.choices)
        return f"<select name='{name}' data-param='select'>{options}</select>"
    if f.kind == "checkbox":
        return f"<input type='checkbox' name='{name}' data-param='checkbox'{' checked' if f.value else ''}>"
    value = "" if f.value is None else html.escape(str(f.value), quote=True)
    kind = "number' min='1" if f.kind == "number" else "text"
    return f"<input type='{kind}' name='{name}' value='{value}' data-param='{f.kind}'>"


def action_html(links: Links, model: str, dag_id: str, act: Action, champion: int | None) -> str:
    """The prefilled trigger form of one action: what it does, the DAG and its params; nothing runs until its
    Trigger button is pressed."""
    rows = "".join(f"<tr><th><label>{html.escape(f.label)} <code>{html.escape(f.name)}</code></label></th>"
                   f"<td>{_input(f)}</td><td class='note'>{html.escape(f.help)}</td></tr>" for f in act.fields)
    conf = {f.name: f.value for f in act.fields}
    form = (f"<form class='trigger' data-api='{html.escape(links.trigger_api(dag_id), quote=True)}' "
            f"data-runs='{html.escape(links.dag(dag_id) + '/runs/', quote=True)}'>"
            f"<table>{rows}<tr><th><label>Run note</label></th><td><input type='text' name='note' value=''></td>"
            "<td class='note'>Optional: shown on the run's page.</td></tr></table>"
            f"<p><button type='submit'>Trigger {html.escape(dag_id)}</button> "
            f"<span class='outcome' role='status'></span></p></form>")
    body = (f"<p>This triggers the DAG {link(links.dag(dag_id), dag_id, top=True)}, which {html.escape(act.what)}. "
            f"The champion now: <b>{'v' + str(champion) if champion else 'none yet'}</b>. Check the params, then "
            "press Trigger: the run is Airflow's own (validated against the DAG's params, audited under your "
            "user), and its page opens.</p>" + form +
            f"<p class='note'>The conf it sends: <code data-conf>{html.escape(json.dumps(conf), quote=False)}</code></p>")
    return page(act.title, body, [(links.base + "/", "Models"), (links.model(model), model)], TRIGGER_SCRIPT)


# --- forecasts -------------------------------------------------------------------------------------

def latest_forecasts(conn: Connection, model: str, ids: Sequence[str] | None, offset: int,
                     limit: int) -> tuple[list[dict[str, Any]], int]:
    """One page of the current forecasts (of the champion, one per record), by record id; only `ids` when given."""
    where = "model = :model" + (" AND source_id = ANY(:ids)" if ids is not None else "")
    params = {"model": model, "ids": list(ids or []), "n": limit, "o": offset}
    total = int(conn.scalar(sa.text(f"SELECT count(*) FROM pipeline.latest_forecasts WHERE {where}"), params) or 0)
    rows = conn.execute(sa.text(f"""
        SELECT source_id, version, prediction, lower, upper, coverage, made_at, source, run_id
          FROM pipeline.latest_forecasts WHERE {where} ORDER BY source_id LIMIT :n OFFSET :o"""), params).mappings()
    return [dict(r) for r in rows], total


def scoring_runs(conn: Connection, model: str, limit: int = SCORING_RUNS_SHOWN) -> list[dict[str, Any]]:
    """The model's batch scoring runs, newest first: counts, and the refused records by reason."""
    rows = conn.execute(sa.text("""
        SELECT run_id, version, status, reason, rows_selected, rows_scored, rows_refused, reason_counts,
               shadows, started_at, finished_at
          FROM pipeline.scoring_runs WHERE model = :model ORDER BY started_at DESC LIMIT :n
    """), {"model": model, "n": limit}).mappings()
    return [dict(r) for r in rows]


def refused_records(conn: Connection, model: str, run_id: str, limit: int, keys: crypto.Keyring | None = None
                    ) -> list[dict[str, Any]]:
    """The records one scoring run refused, with their reasons (the values that broke the contract opened with
    `keys` where encryption at rest sealed them)."""
    rows = conn.execute(sa.text("""
        SELECT f.run_id, f.source_id, f.reasons, f.key_ref, f.sealed
          FROM pipeline.scoring_refusals f JOIN pipeline.scoring_runs s USING (run_id)
         WHERE s.model = :model AND f.run_id = :run ORDER BY f.source_id LIMIT :n
    """), {"model": model, "run": run_id, "n": limit}).mappings()
    opened = [records.opened(dict(r), keys) for r in rows]
    return [{"source_id": r["source_id"], "reasons": r["reasons"]} for r in opened]


@dataclass(frozen=True)
class ForecastQuery:
    """What the forecasts page shows: a page of the forecasts, or the records searched by id (sent in a POST
    body, so that no patient id is in a URL or an access log line), and one run's refused records."""

    page: int = 1
    ids: tuple[str, ...] | None = None
    refused_run: str = ""

    def describe(self) -> str:
        """The read as the access log states it: never the ids searched, only how many."""
        what = f"forecasts page {self.page}" if self.ids is None else f"forecasts searched by {len(self.ids)} id(s)"
        return what + (f" refused run_id={self.refused_run}" if self.refused_run else "")


def read_forecasts(engine: Engine, model: str, query: ForecastQuery, principal: str,
                   request: str, keys: crypto.Keyring | None = None) -> dict[str, Any]:
    """The forecasts page's data for a person, the read recorded in pipeline.access_log in the same transaction."""
    with engine.begin() as conn:
        forecasts, total = latest_forecasts(conn, model, query.ids, (query.page - 1) * FORECAST_PAGE_ROWS,
                                            FORECAST_PAGE_ROWS)
        refused = refused_records(conn, model, query.refused_run, FORECAST_PAGE_ROWS, keys) if query.refused_run else []
        runs = scoring_runs(conn, model)
        accesslog.record(conn, [accesslog.Access(principal, "view", query.describe(), len(forecasts) + len(refused),
                                                 request, model)])
    return {"forecasts": forecasts, "total": total, "refused": refused, "runs": runs}


def _reasons_text(counts: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted((counts or {}).items())) or "—"


def forecasts_html(links: Links, model: str, score_dag: str, query: ForecastQuery, data: Mapping[str, Any]) -> str:
    """The forecasts page: search by id, the current forecasts with their interval (paged), each scoring run with
    its counts and refused records by reason, and one run's refused records."""
    pages = max(1, -(-int(data["total"]) // FORECAST_PAGE_ROWS))
    forecasts = [(f["source_id"], f"v{f['version']}", f["prediction"], f["lower"], f["upper"], f["coverage"],
                  stamp(f["made_at"]), f["source"], f["run_id"]) for f in data["forecasts"]]
    shown = (f"{len(forecasts)} record(s) found for the {len(query.ids)} id(s) searched" if query.ids is not None else
             f"Page {query.page} of {pages} ({data['total']} records with a current forecast)")
    pager = "" if query.ids is not None else " ".join(
        link(links.forecasts(model, page=n), label) for n, label in
        ((query.page - 1, "previous page"), (query.page + 1, "next page")) if 1 <= n <= pages)
    search = (f"<form method='post' action='{html.escape(links.forecasts(model), quote=True)}' class='search'>"
              "<label>Record id(s) <input type='search' name='ids' placeholder='ids, separated by spaces or commas'>"
              "</label> <button type='submit'>Search</button></form>")
    runs = [(link(links.dag_run(score_dag, r["run_id"]), r["run_id"], top=True), r["status"],
             f"v{r['version']}" if r["version"] else None, stamp(r["started_at"]), stamp(r["finished_at"]),
             r["rows_selected"], r["rows_scored"], r["rows_refused"], _reasons_text(r["reason_counts"]),
             link(links.forecasts(model, refused=r["run_id"]), "refused records") if r["rows_refused"] else None,
             r["reason"]) for r in data["runs"]]
    refused = [(r["source_id"], "; ".join(f"{x.get('code')} ({x.get('column')}: {x.get('rule')})"
                                          for x in r["reasons"])) for r in data["refused"]]
    body = "".join([
        "<p class='note'>Times are UTC, to the second. Each read of this page is recorded in the access log "
        "(who, what, how many rows; never the ids searched).</p>",
        section("forecasts", "Current forecasts", search + f"<p>{shown}. {pager}</p>" + table(
            ["record id", "version", "forecast", "interval low", "interval high", "coverage", "made at (UTC)",
             "source", "run"], forecasts)),
        section("scoring-runs", "Scoring runs", table(
            ["run", "status", "version", "started (UTC)", "finished (UTC)", "selected", "scored", "refused",
             "refused by reason", "records", "reason"], runs)),
        section("refused", f"Records refused by run {query.refused_run}", table(["record id", "reasons"], refused))
        if query.refused_run else "",
    ])
    return page(f"Forecasts of {model}", body, [(links.base + "/", "Models"), (links.model(model), model),
                                                (links.forecasts(model), "forecasts")])


def parse_ids(raw: str, at_most: int = FORECAST_PAGE_ROWS) -> tuple[str, ...]:
    """Record ids typed in the search box: separated by spaces or commas, at most `at_most`."""
    ids = tuple(dict.fromkeys(p for p in raw.replace(",", " ").split() if p))
    if len(ids) > at_most:
        raise ValueError(f"{len(ids)} ids searched; at most {at_most} at a time")
    return ids


# --- compare ---------------------------------------------------------------------------------------

def version_numbers(conn: Connection, model: str) -> list[int]:
    """The model's registered versions, newest first."""
    return [int(v) for v in conn.scalars(sa.text(
        "SELECT version FROM pipeline.model_versions WHERE model = :m ORDER BY version DESC"), {"m": model})]


def _picker(links: Links, model: str, versions: Sequence[int], a: int | None, b: int | None) -> str:
    def select(name: str, chosen: int | None) -> str:
        options = "".join(f"<option value='{v}'{' selected' if v == chosen else ''}>v{v}</option>" for v in versions)
        return f"<select name='{name}'>{options}</select>"
    return (f"<form method='get' action='{html.escape(links.compare(model), quote=True)}' class='search'>"
            f"<label>A (baseline, the champion's role) {select('a', a)}</label> "
            f"<label>B (candidate) {select('b', b)}</label> <button type='submit'>Compare</button></form>")


def _params_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    keys = sorted(set(a) | set(b))
    return [(k, json.dumps(a.get(k)), json.dumps(b.get(k)), "differs" if a.get(k) != b.get(k) else "")
            for k in keys]


def _cv_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    def stat(cv: Mapping[str, Any], family: str, key: str) -> Any:
        found = cv.get(family)
        return found.get(key) if isinstance(found, Mapping) else found if key == "mean" else None
    families = sorted(set(a) | set(b))
    return [(f, stat(a, f, "mean"), stat(a, f, "std"), stat(b, f, "mean"), stat(b, f, "std")) for f in families]


def change_words(change: Mapping[str, Any]) -> str:
    """The paired interval, in the view's one convention: RMSE change B − A (candidate − champion)."""
    return (f"{change['confidence']:.0%} interval of the RMSE change B − A (candidate − champion; negative: B is "
            f"better): [{change['low']:+.3f}, {change['high']:+.3f}], mean {change['mean']:+.3f}, over "
            f"{int(change['samples'])} paired resamples of the same rows.")


def compare_html(links: Links, model: str, versions: Sequence[int], a: int | None, b: int | None,
                 data: Mapping[str, Any] | None, error: str | None = None) -> str:
    """The compare page: the picker, then (for two versions) parameters diff, CV tables side by side, and both
    scored on the same rows with the paired interval stated once."""
    crumbs = [(links.base + "/", "Models"), (links.model(model), model), (links.compare(model), "compare")]
    body = _picker(links, model, versions, a, b)
    if error:
        body += f"<p class='fail'>{html.escape(error)}</p>"
    if data is None:
        return page(f"Compare two versions of {model}", body, crumbs)
    va, vb, rows = data["a"], data["b"], data["rows"]
    name_a, name_b = f"A: v{va['version']}", f"B: v{vb['version']}"
    metrics = [(label, data["metrics_a"].get(key), data["metrics_b"].get(key),
                None if key == "n" else f"{data['metrics_b'][key] - data['metrics_a'][key]:+.3f}")
               for label, key in (("RMSE", "rmse"), ("MAE", "mae"), ("R²", "r2"), ("rows", "n"))
               if key in data["metrics_a"]]
    recorded = [(f"v{v['version']}", v["model_family"], stamp(v["created_at"]), v["train_rows"], v["holdout_rows"],
                 (e or {}).get("candidate_metrics", {}).get("rmse") if e else None,
                 f"{e['decision']} (vs v{e['champion_version']})" if e and e.get("champion_version") else
                 (e or {}).get("decision"), link(links.card(model, v["version"]), "card"))
                for v, e in ((va, data["evaluation_a"]), (vb, data["evaluation_b"]))]
    body += "".join([
        section("same-rows", "Both scored on the same rows", (
            f"<p>The rows: the holdout of v{rows['of_version']}'s snapshot <code>{html.escape(rows['snapshot_hash'][:12])}"
            f"</code> (the newest rows any version was judged on), {rows['holdout']} rows, less {rows['excluded_a']} "
            f"that A trained on and {rows['excluded_b']} that B trained on: <b>{rows['compared']} rows</b> neither "
            "trained on.</p>") + table(["metric", name_a, name_b, "change (B − A)"], metrics)
            + f"<p class='interval'>{html.escape(change_words(data['change']))}</p>"),
        section("recorded", "As recorded when each was trained (each on its own run's holdout)", table(
            ["version", "family", "trained (UTC)", "train rows", "holdout rows", "holdout RMSE", "decision", "page"],
            recorded)),
        section("params", "Parameters", table(["parameter", name_a, name_b, ""],
                                              _params_diff(va.get("params") or {}, vb.get("params") or {}))),
        section("cv", "Cross-validation (RMSE per family searched)", table(
            ["family", f"{name_a} mean", f"{name_a} std", f"{name_b} mean", f"{name_b} std"],
            _cv_rows(va.get("cv_metrics") or {}, vb.get("cv_metrics") or {}))),
    ])
    return page(f"Compare v{va['version']} and v{vb['version']} of {model}", body, crumbs)


# --- metrics over time -----------------------------------------------------------------------------

def monthly_live_rmse(conn: Connection, model: str) -> list[dict[str, Any]]:
    """Live RMSE per month of the outcome and per version (served forecasts, and shadow ones), each from the
    newest performance report that judged that month."""
    rows = conn.execute(sa.text("""
        SELECT DISTINCT ON (pm.version, pm.source, pm.grp) pm.version, pm.source, pm.grp AS month, pm.rmse, pm.rows
          FROM pipeline.performance_metrics pm JOIN pipeline.performance_reports pr USING (run_id)
         WHERE pr.model = :model AND pm.dimension = 'month'
         ORDER BY pm.version, pm.source, pm.grp, pr.created_at DESC
    """), {"model": model}).mappings()
    return [dict(r) for r in rows]


def decisions(conn: Connection, model: str) -> list[dict[str, Any]]:
    """Every promotion decision, oldest first: candidate and champion RMSE on that decision's own rows."""
    rows = conn.execute(sa.text("""
        SELECT e.run_id, e.created_at, e.candidate_version, e.champion_version, e.decision, e.holdout_rows,
               e.candidate_metrics->>'rmse' AS candidate_rmse, e.champion_metrics->>'rmse' AS champion_rmse
          FROM pipeline.evaluations e JOIN pipeline.model_versions m ON m.version = e.candidate_version
         WHERE m.model = :model ORDER BY e.created_at
    """), {"model": model}).mappings()
    return [{**r, "candidate_rmse": _float(r["candidate_rmse"]), "champion_rmse": _float(r["champion_rmse"])}
            for r in rows]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def metrics_html(links: Links, model: str, monthly: Sequence[Mapping[str, Any]],
                 decided: Sequence[Mapping[str, Any]]) -> str:
    """Metrics over time: live RMSE per month per version, and each decision's RMSEs on its own rows."""
    months = sorted({m["month"] for m in monthly})
    series: dict[str, list[tuple[int, float]]] = {}
    for m in sorted(monthly, key=lambda r: (r["version"], r["source"], r["month"])):
        name = f"v{m['version']}" + (" (shadow)" if m["source"] == "shadow" else "")
        series.setdefault(name, []).append((months.index(m["month"]), float(m["rmse"])))
    labels = [f"{stamp(d['created_at'])[:10] if stamp(d['created_at']) else '?'} v{d['candidate_version']}"
              for d in decided]
    by_decision = {
        "candidate": [(i, d["candidate_rmse"]) for i, d in enumerate(decided)
                                               if d["candidate_rmse"] is not None],
        "champion (same rows)": [(i, d["champion_rmse"]) for i, d in enumerate(decided)
                                        if d["champion_rmse"] is not None]}
    live_rows = [(m["month"], f"v{m['version']}", m["source"], m["rows"], m["rmse"])
                 for m in sorted(monthly, key=lambda r: (r["month"], r["version"], r["source"]))]
    decision_rows = [(stamp(d["created_at"]), d["run_id"], f"v{d['candidate_version']}",
                      f"v{d['champion_version']}" if d["champion_version"] else None, d["decision"], d["holdout_rows"],
                      d["candidate_rmse"], d["champion_rmse"],
                      None if d["candidate_rmse"] is None or d["champion_rmse"] is None else
                      f"{d['candidate_rmse'] - d['champion_rmse']:+.3f}",
                      link(links.report(model, d["run_id"], "comparison"), "comparison")) for d in decided]
    body = "".join([
        "<p class='note'>Times are UTC. RMSE is in the outcome's units; lower is better.</p>",
        section("live", "Live RMSE per month, per version", line_chart(
            series, months, "month of the outcome (UTC)", "live RMSE on real outcomes", "live RMSE per month per version")
            + table(["month", "version", "forecasts of", "outcomes judged", "live RMSE"], live_rows)),
        section("decisions", "Holdout RMSE at each promotion decision, on that decision's own rows", line_chart(
            by_decision, labels, "promotion decision (date, candidate)", "holdout RMSE on the decision's rows",
            "holdout RMSE per decision")
            + "<p class='note'>At each decision, candidate and champion are scored on the same rows (that run's "
              "holdout less the rows the champion trained on); two decisions are on different rows.</p>"
            + table(["at (UTC)", "run", "candidate", "champion", "decision", "rows", "candidate RMSE",
                     "champion RMSE", "change (candidate − champion)", "page"], decision_rows)),
    ])
    return page(f"Metrics of {model} over time", body, [(links.base + "/", "Models"), (links.model(model), model),
                                                        (links.metrics(model), "metrics over time")])
