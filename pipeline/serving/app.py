"""The REST API: the champion's forecasts, with their intervals, for the CRM one request at a time.

`python -m pipeline serve` runs `create_app` under uvicorn; the routes are `pipeline.serving.routes`, the
machinery they use `pipeline.serving.rest`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.contract.config import load_config
from pipeline.contract.settings import Settings
from pipeline.data import validate
from pipeline.registry.runs import error_line
from pipeline.serving import routes, schema
from pipeline.serving.records import compile_checks
from pipeline.serving.rest import Champion, PredictionLog, check_tokens
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)
access = logging.getLogger("pipeline.serving.access")

DESCRIPTION = """\
Forecasts of each patient's type-2 diabetes progression over the next 12 months, from the current
champion model, with a prediction interval of stated coverage (split conformal).

**Authentication**: every `/v1` call needs `Authorization: Bearer <token>`.

**Records** are JSON objects in the data contract's own column names: every feature, optionally the id
column (echoed back and recorded with the forecast) and the timestamp column (when the record was made;
default: now). **Dates are JSON strings `YYYY-MM-DD`** (e.g. `"1961-04-23"`); timestamps
`YYYY-MM-DDTHH:MM:SS` with a zone (`Z` or `+02:00`); numbers are JSON numbers, not text. A missing
numeric feature is imputed by the model, as in training; the contract says which fields are required.

**Body**: one record (an object) or a list of records. One record answers 200 with its forecast, or 422
with the fields it breaks. A list always answers 200 with one result per record, in order: a valid
record's forecast (`status` 200), or an invalid record's errors (`status` 422), so one bad record never
blocks the others. Each error names the `field`, the `code` (`missing_required`, `out_of_range`,
`unknown_category`, `wrong_type`, `impossible_dates`, `future_date`, `implausible_age`, `duplicate_id`,
`duplicate_record`, `unknown_field`, ...) and the `rule` of the contract it broke (the expectation and
its bounds). A body over `serving.max_request_bytes` bytes, or with more than
`serving.max_request_records` records, answers 413.
"""


def create_app(source: Workspace | Settings, tokens: Sequence[str] | None, insecure_local: bool = False) -> FastAPI:
    """The FastAPI app serving `source`'s model (a Workspace, or the settings to open one at startup).
    Without `tokens` it refuses to be built, unless `insecure_local`: then no call is authenticated."""
    tokens = tuple(tokens or ())
    check_tokens(tokens, insecure_local)
    state: dict[str, Any] = {}
    config = source.config if isinstance(source, Workspace) else load_config(source.config_path)
    suite = validate.load_suite(config.dataset.expectation_suite)  # once: the routes' checks and the document
    checks = compile_checks(config.dataset, suite, config.quality)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ws = source if isinstance(source, Workspace) else await run_in_threadpool(Workspace.open, source)
        champion, stop = Champion(ws), threading.Event()
        writer = PredictionLog(ws.engine, capacity=ws.config.serving.max_pending_forecasts)
        log.info("records are judged by %s", "the compiled checks" if checks else
                 "pandas (the suite holds a rule the compiled checks do not handle)")
        state.update(ws=ws, champion=champion, writer=writer, judging=threading.Lock(), suite=suite, checks=checks)
        try:
            await run_in_threadpool(champion.refresh)
        except Exception as exc:  # noqa: BLE001 - not ready yet; the poller tries again
            log.warning("could not load the champion at startup: %s", error_line(exc, ws.settings))
        poller = threading.Thread(target=champion.poll, args=(stop, ws.config.serving.reload_seconds),
                                  name="champion-poller", daemon=True)
        poller.start()
        writer.start()
        log.info("REST API for model %s ready to start: %s", ws.model,
                 "authenticated by bearer token" if tokens else "UNPROTECTED (--insecure-local)")
        try:
            yield
        finally:
            stop.set()
            poller.join(10)
            await run_in_threadpool(writer.close)
            if not isinstance(source, Workspace):
                ws.engine.dispose()

    app = FastAPI(title="Diabetes progression forecasts", description=DESCRIPTION, version="1", lifespan=lifespan)
    app.include_router(routes.router(tokens, state))
    document: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not document:
            document.update(schema.openapi_document(app, config.dataset, suite, config.model))
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(AccessLog)
    if config.serving.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.serving.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type",
                                                                         "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    return app


class AccessLog:
    """One line per request: method, path (never the query string, where a misplaced token would be),
    status, milliseconds. uvicorn's own access log is off."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            access.info("%s %s %s %.0f ms", scope["method"], scope["path"][:200], status["code"],
                        1000 * (time.perf_counter() - started))


def serve(ws: Workspace, tokens: Sequence[str], host: str, port: int, insecure_local: bool = False) -> None:
    """Run the REST API under uvicorn until interrupted (SIGINT/SIGTERM flush the prediction log)."""
    import uvicorn

    app = create_app(ws, tokens, insecure_local)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False, access_log=False)
