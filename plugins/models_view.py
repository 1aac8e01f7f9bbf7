"""The Models view in the Airflow UI: a FastAPI app on the API server at /models-view, and a nav entry.

Routes only: every query and every page comes from `pipeline.views.models_view`. Access is Airflow's own:
each request must carry the UI's session cookie or an API Bearer token that Airflow's auth manager
accepts and that may read DAGs; anything else is refused (401 without a token, 403 for a bad one); a
browser asking for a page without one is sent to Airflow's login, and back.
The pipeline package (pandas, scikit-learn) is imported on the first request, not when Airflow
loads plugins in every process.
"""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING, Any

from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from pipeline.contract.config import ModelEntry
    from pipeline.contract.settings import Settings
    from pipeline.store.crypto import Keyring
    from pipeline.views.models_view import Links

URL_PREFIX = "/models-view"

app = FastAPI(title="Models view", docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[Depends(requires_access_dag("GET"))])


@cache
def _settings() -> Settings:
    from pipeline.contract.settings import Settings
    return Settings.from_env()


@cache
def _engine() -> Engine:
    from pipeline.store import db
    return db.create_engine(db.database_url(_settings()))


@cache
def _keyring() -> Keyring:
    """The data keys sealed pages and quarantine rows open with: the key manager the main config names."""
    from pipeline.store import crypto, keys
    return crypto.Keyring(_engine(), lambda: keys.open_key_manager(_settings()))


def _entries() -> dict[str, ModelEntry]:
    from pipeline.contract.config import model_entries
    settings = _settings()
    return {e.name: e for e in model_entries(settings.config_path, settings.models_dir)}


def _entry(model: str) -> ModelEntry:
    entry = _entries().get(model)
    if entry is None:
        raise HTTPException(404, f"no model {model!r}; the models are {', '.join(_entries())}")
    return entry


def _links(request: Request) -> Links:
    from pipeline.views.models_view import Links
    base = str(request.scope.get("root_path", "")).rstrip("/")  # where this app is mounted, behind any base_url
    return Links(base=base, airflow=base.removesuffix(URL_PREFIX))


@app.exception_handler(StarletteHTTPException)
async def _login_first(request: Request, exc: StarletteHTTPException) -> Response:
    """A browser that is not logged in (401 on a request for a page) goes to Airflow's login, which sends it
    back here; any other client, and any other refusal, gets the error as before."""
    if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
        from airflow.api_fastapi.app import get_auth_manager

        login = get_auth_manager().get_url_login(next_url=str(request.url))
        airflow = str(request.scope.get("root_path", "")).rstrip("/").removesuffix(URL_PREFIX)
        return RedirectResponse(airflow + login if login.startswith("/") else login, status_code=303)
    return await http_exception_handler(request, exc)


@app.get("/", response_class=HTMLResponse)
def index(request: Request) -> str:
    from pipeline.views import models_view
    with _engine().connect() as conn:
        summaries = models_view.model_summaries(conn, list(_entries()))
    return models_view.index_html(_links(request), summaries)


@app.get("/{model}", response_class=HTMLResponse)
def model_page(request: Request, model: str) -> str:
    from pipeline.views import models_view
    entry = _entry(model)
    with _engine().connect() as conn:
        overview = models_view.model_overview(conn, entry.name, runs_limit=models_view.RUNS_LISTED)
    return models_view.model_html(_links(request), entry, overview, dict(request.query_params))


def _report(request: Request, model: str, kind: str, key: str | int) -> str:
    from pipeline.store import artifacts
    from pipeline.views import models_view
    entry = _entry(model)
    try:
        with _engine().connect() as conn:
            found = models_view.find_report(conn, entry.name, kind, key)
        document = models_view.read_report(artifacts.artifact_store(_settings(), _engine(), _keyring()),
                                           found["path"])
    except LookupError as error:
        raise HTTPException(404, str(error)) from error
    except artifacts.ArtifactIntegrityError as error:
        raise HTTPException(409, str(error)) from error
    return models_view.with_crumbs(document, models_view.report_crumbs(_links(request), entry.name, kind, found))


@app.get("/{model}/versions/{version}/card", response_class=HTMLResponse)
def card(request: Request, model: str, version: int) -> str:
    return _report(request, model, "card", version)


@app.get("/{model}/runs/{run_id}/{kind}", response_class=HTMLResponse)
def run_report(request: Request, model: str, run_id: str, kind: str) -> str:
    if kind == "card":
        raise HTTPException(404, "a card belongs to a version: /{model}/versions/{version}/card")
    return _report(request, model, kind, run_id)


def _quarantine(request: Request, user: Any, model: str, run_id: str, code: str, limit: int | None,
                what: str) -> list[dict[str, Any]]:
    """The quarantined rows a person asked for; the read goes to pipeline.access_log under their Airflow user."""
    from pipeline.views import models_view
    principal = f"airflow:{user.get_name()}"
    line = f"GET {request.url.path}{'?' + request.url.query if request.url.query else ''}"
    return models_view.read_quarantine(_engine(), _entry(model).name, principal, line, what, run_id or None,
                                       code or None, limit, keys=_keyring())


@app.get("/{model}/quarantine", response_class=HTMLResponse)
def quarantine(request: Request, user: GetUserDep, model: str, run_id: str = "", code: str = "") -> str:
    from pipeline.views import models_view
    rows = _quarantine(request, user, model, run_id, code, models_view.QUARANTINE_PAGE_ROWS, "quarantine page")
    with _engine().connect() as conn:
        codes = models_view.quarantine_codes(conn, model)
    return models_view.quarantine_html(_links(request), model, rows, codes, run_id, code,
                                       models_view.QUARANTINE_PAGE_ROWS)


@app.get("/{model}/quarantine.csv")
def quarantine_csv(request: Request, user: GetUserDep, model: str, run_id: str = "", code: str = "") -> Response:
    from pipeline.views import models_view
    body = models_view.quarantine_csv(_quarantine(request, user, model, run_id, code, None, "quarantine.csv"))
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(p for p in (model, "quarantine", run_id, code) if p))
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


@app.get("/{model}/actions/{key}", response_class=HTMLResponse)
def action_form(request: Request, model: str, key: str, version: int | None = None) -> str:
    """An action's trigger form, prefilled; nothing is triggered until its button is pressed."""
    from pipeline.registry import records
    from pipeline.views import operator
    entry = _entry(model)
    try:
        act = operator.action(key, version)
        with _engine().connect() as conn:
            if version is not None:
                records.get_model(conn, version, entry.name)
            champion = records.current_champion(conn, entry.name)
    except LookupError as error:
        raise HTTPException(404, str(error)) from error
    return operator.action_html(_links(request), entry.name, entry.dag_id(act.dag), act,
                                champion["version"] if champion else None)


def _forecasts(request: Request, user: Any, model: str, query: Any) -> str:
    from pipeline.views import operator
    entry = _entry(model)
    line = f"{request.method} {request.url.path}{'?' + request.url.query if request.url.query else ''}"
    data = operator.read_forecasts(_engine(), entry.name, query, f"airflow:{user.get_name()}", line, _keyring())
    return operator.forecasts_html(_links(request), entry.name, entry.dag_id("score_patients"), query, data)


@app.get("/{model}/forecasts", response_class=HTMLResponse)
def forecasts(request: Request, user: GetUserDep, model: str, page: int = 1, refused: str = "") -> str:
    from pipeline.views import operator
    return _forecasts(request, user, model, operator.ForecastQuery(page=max(page, 1), refused_run=refused))


@app.post("/{model}/forecasts", response_class=HTMLResponse)
def search_forecasts(request: Request, user: GetUserDep, model: str, ids: str = Form("")) -> str:
    """A search by record id: the ids come in the body, so none is in a URL, a server log or the access log."""
    from pipeline.views import operator
    try:
        query = operator.ForecastQuery(ids=operator.parse_ids(ids))
    except ValueError as error:
        raise HTTPException(400, str(error)) from error
    return _forecasts(request, user, model, query)


@app.get("/{model}/metrics", response_class=HTMLResponse)
def metrics(request: Request, model: str) -> str:
    from pipeline.views import operator
    entry = _entry(model)
    with _engine().connect() as conn:
        monthly, decided = operator.monthly_live_rmse(conn, entry.name), operator.decisions(conn, entry.name)
    return operator.metrics_html(_links(request), entry.name, monthly, decided)


@cache
def _workspace(model: str) -> Any:
    """The model's workspace (its config, the store), opened once per process: the compare page scores with it."""
    from dataclasses import replace

    from pipeline.workspace import Workspace
    return Workspace.open(replace(_settings(), config_path=_entry(model).config_path))


_COMPARED: dict[tuple[str, int, int, int], dict[str, Any]] = {}  # (model, a, b, newest version): the scored pair


@app.get("/{model}/compare", response_class=HTMLResponse)
def compare(request: Request, model: str, a: int | None = None, b: int | None = None) -> str:
    """Two versions side by side, both scored on the same rows; A defaults to the champion, B to the newest."""
    from pipeline import compare as comparing
    from pipeline.registry import records
    from pipeline.views import operator
    entry = _entry(model)
    with _engine().connect() as conn:
        versions = operator.version_numbers(conn, entry.name)
        champion = records.current_champion(conn, entry.name)
    a = a or (int(champion["version"]) if champion else None)
    b = b or (max((v for v in versions if v != a), default=None))
    data, error = None, None
    if a and b and a != b:
        ws = _workspace(entry.name)
        try:
            key = (entry.name, a, b, int(comparing.newest_version(ws)["version"]))
            if key not in _COMPARED:
                _COMPARED.clear() if len(_COMPARED) > 32 else None
                _COMPARED[key] = comparing.compare_versions(ws, a, b)
            data = _COMPARED[key]
        except (LookupError, ValueError) as exc:
            error = f"v{a} and v{b} cannot be compared on the same rows: {exc}"
    elif a and a == b:
        error = "pick two different versions"
    return operator.compare_html(_links(request), entry.name, sorted(versions, reverse=True), a, b, data, error)


class ModelsViewPlugin(AirflowPlugin):
    name = "models_view"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Models view"}]
    external_views = [{"name": "Models", "href": f"{URL_PREFIX}/", "url_route": "models", "destination": "nav",
                       "nav_top_level": True}]
