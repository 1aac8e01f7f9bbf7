"""The stack's readiness on the API server at /pipeline-health: 200 when its databases, its broker and at least one
Celery worker answer, else 503 naming what is down (pipeline.store.health). No login: it is what the compose
healthcheck and a load balancer ask, and it says only which part is down and where."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI
from fastapi.responses import JSONResponse

URL_PREFIX = "/pipeline-health"

app = FastAPI(title="Stack health", docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/")
def readiness() -> Any:
    import os

    from pipeline.contract.settings import Settings
    from pipeline.store import db, health

    checks = health.readiness(os.environ, db.database_url(Settings.from_env()))
    document = health.report(checks)
    return JSONResponse(document, status_code=200 if document["healthy"] else 503)


class StackHealthPlugin(AirflowPlugin):
    name = "stack_health"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Stack health"}]
