"""The REST API's routes: health, readiness, the served model, its card, and predict.

`router(tokens, state)` is included by `pipeline.serving.app.create_app`; `state` is filled by the app's startup
(the workspace, the champion holder, the prediction log, the suite). Every answer is JSON of the documented
shape (`pipeline.serving.schema`); a forecast is recorded only once its answer has been handed to the server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from pipeline.serving.rest import (
    BEARER,
    PredictionLog,
    RequestProblem,
    Scored,
    Served,
    parse_records,
    principal_of,
    read_body,
    request_id_of,
    score_plain,
    score_records,
)
from pipeline.store import accesslog, artifacts
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)
RETRY_SECONDS = "5"
ANONYMOUS = "anonymous (--insecure-local)"  # the principal of every call to a service without tokens
INLINE_RECORDS = 10  # requests of at most this many records are scored on the event loop when no frame is needed


class RecordedResponse(JSONResponse):
    """A JSON answer whose forecasts go to the prediction log once it has been sent; if sending fails, their
    room in the log is given back and nothing is recorded."""

    def __init__(self, content: Any, headers: dict[str, str], writer: PredictionLog, rows: list[dict[str, Any]],
                 status_code: int = 200, read: accesslog.Access | None = None) -> None:
        super().__init__(content, status_code, headers)
        self.writer, self.rows, self.read = writer, rows, read

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except BaseException:
            self.writer.release(len(self.rows))
            raise
        self.writer.put(self.rows, self.read)


def unavailable(reason: str, request_id: str | None = None) -> JSONResponse:
    """503 with Retry-After: the service cannot answer this now, and says why."""
    body = {"detail": reason, **({"request_id": request_id} if request_id else {})}
    headers = {"Retry-After": RETRY_SECONDS, **({"X-Request-ID": request_id} if request_id else {})}
    return JSONResponse(body, 503, headers)


def no_champion(state: dict[str, Any]) -> str:
    """Why no champion is served: none loaded yet, and the registry's champion that was refused, with the reason
    (a file that does not hash to what the registry says, say)."""
    refused = state["champion"].refused if state else None
    return "no champion loaded" + (f": version {refused['version']} was refused ({refused['reason']})"
                                   if refused else " yet")


def not_ready(state: dict[str, Any]) -> str | None:
    """Why the service cannot serve forecasts now, or None when it can."""
    if not state or state["champion"].current is None:
        return no_champion(state)
    writer: PredictionLog = state["writer"]
    return writer.trouble()


def answer(scored: Scored, single: bool, common: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The status and body of a predict answer: one record's forecast or refusal, or one result per record."""
    if single:
        [result] = scored.results
        if result["status"] == 422:
            return 422, {"detail": result["errors"], **common}
        return 200, {**common, **{k: v for k, v in result.items() if k not in ("index", "status")}}
    refused = len(scored.results) - len(scored.log_rows)
    return 200, {**common, "records": len(scored.results), "scored": len(scored.log_rows), "refused": refused,
                 "results": scored.results}


async def read_request(request: Request, ws: Workspace) -> tuple[list[Any], bool]:
    """The request's records: JSON only, within the configured size and count."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise RequestProblem(415, f"the body must be application/json, got {kind[:64] or 'no content type'!r}")
    body = await read_body(request, ws.config.serving.max_request_bytes)
    return parse_records(body, ws.config.serving.max_request_records)


async def forecast_answer(records: list[Any], single: bool, served: Served, ws: Workspace, state: dict[str, Any],
                          request_id: str, principal: str = ANONYMOUS, path: str = "") -> Response:
    """Score records whose room in the prediction log is kept, and answer; the forecasts are recorded once the
    answer has been sent. A failure answers 500, names only the exception's type, and records nothing."""
    writer: PredictionLog = state["writer"]
    headers = {"X-Request-ID": request_id}
    started, inline = time.perf_counter(), len(records) <= INLINE_RECORDS
    try:
        # A few records scored with no frame take about a millisecond: on the event loop, as a bare endpoint's
        # work is, with no hop to a worker thread (on two cores, concurrent requests then queue for the GIL
        # behind the hops). The rest, and what needs pandas, go to a worker thread.
        scored = score_plain(records, served, ws, request_id, state.get("checks")) if inline else None
        if scored is None:
            scored = await run_in_threadpool(score_records, records, served, ws, state["suite"], request_id,
                                             state["judging"], state.get("checks"), not inline)
    except Exception as exc:  # noqa: BLE001 - the exception's text may quote a value: log its type only
        writer.release(len(records))
        log.error("request %s failed scoring %d records with version %s: %s", request_id, len(records),
                  served.version, type(exc).__name__)
        return JSONResponse({"detail": "internal error", "request_id": request_id}, 500, headers)
    writer.release(len(records) - len(scored.log_rows))
    status, body = answer(scored, single, {"request_id": request_id, "model": ws.model,
                                           "model_version": served.version})
    read = accesslog.Access(principal, "rest", "predict", len(scored.log_rows), f"POST {path} request {request_id}",
                            ws.model) if scored.log_rows else None
    try:
        response = RecordedResponse(body, headers, writer, scored.log_rows, status, read)
    except ValueError as exc:  # a number JSON cannot carry: nothing is answered, so nothing is recorded
        writer.release(len(scored.log_rows))
        log.error("request %s: answer not renderable (%s)", request_id, type(exc).__name__)
        return JSONResponse({"detail": "internal error", "request_id": request_id}, 500, headers)
    log.info("request %s: %d records, %d scored, %d refused, version %s, %.0f ms", request_id, len(records),
             len(scored.log_rows), len(records) - len(scored.log_rows), served.version,
             1000 * (time.perf_counter() - started))
    return response


def router(tokens: Sequence[str], state: dict[str, Any]) -> APIRouter:
    """The routes, authenticated by `tokens` (none: unauthenticated), answering from `state`."""
    api = APIRouter()

    async def authenticated(request: Request,
                            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        """Refuse a call without a valid token; keep the caller's principal name (the token's, never the token)
        on the request, for the access log. async: a plain def dependency is run on a worker thread, a hop for
        each request for a comparison."""
        principal = ANONYMOUS if not tokens else None if credentials is None or \
            credentials.scheme.lower() != "bearer" else principal_of(credentials.credentials, tokens)
        if principal is None:
            raise HTTPException(401, "a valid bearer token is required (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})
        request.state.principal = principal

    def known(model: str) -> Workspace:
        ws: Workspace = state["ws"]
        if model != ws.model:
            raise HTTPException(404, f"no model {model[:64]!r} is served here; this service serves {ws.model!r}")
        return ws

    def served_now() -> Served:
        served: Served | None = state["champion"].current
        if served is None:
            raise HTTPException(503, no_champion(state), headers={"Retry-After": RETRY_SECONDS})
        return served

    @api.get("/healthz", operation_id="healthz", summary="the process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", operation_id="readyz", summary="200 once a hash-verified champion is loaded and forecasts can be recorded")
    def readyz() -> Any:
        reason = not_ready(state)
        if reason is not None:
            return JSONResponse({"status": "not ready", "reason": reason}, 503, {"Retry-After": RETRY_SECONDS})
        return {"status": "ready", "model": state["ws"].model, "version": state["champion"].current.version}

    @api.get("/v1/models/{model}", dependencies=[Depends(authenticated)], operation_id="describe_model",
             summary="the served champion: version, family, holdout metrics, promotion time, model card")
    def describe(model: str) -> dict[str, Any]:
        known(model)
        return {**served_now().summary, "champion_not_loaded": state["champion"].refused}

    @api.get("/v1/models/{model}/card", dependencies=[Depends(authenticated)], operation_id="model_card", summary="the served version's card")
    def card(model: str) -> Any:
        ws = known(model)
        found = served_now().summary["model_card"]
        if found is None:
            raise HTTPException(404, "no model card was written for this version (python -m pipeline card VERSION)")
        try:
            page = artifacts.recorded_copy(ws.store, found["path"])  # read as its plaintext, checked against its name
            return Response(artifacts.read_verified(page, page.stem, ws.store.keyring), media_type="text/html")
        except Exception as exc:  # noqa: BLE001 - the store (a database in team mode) may be out of reach
            log.warning("model card of version %s not readable: %s", served_now().version, type(exc).__name__)
            return unavailable("the model card cannot be read now (the artifact store): try again")

    @api.post("/v1/models/{model}/predict", dependencies=[Depends(authenticated)], operation_id="predict",
              summary="forecast one record (an object) or many (a list); see the description for the rules")
    async def predict(model: str, request: Request) -> Any:
        ws = known(model)
        request_id = request_id_of(request.headers.get("x-request-id"))
        headers = {"X-Request-ID": request_id}
        try:
            records, single = await read_request(request, ws)
        except RequestProblem as problem:
            log.info("request %s refused: HTTP %s", request_id, problem.status)
            return JSONResponse({"detail": problem.detail, "request_id": request_id}, problem.status, headers)
        served, writer = served_now(), state["writer"]
        if not writer.admit(len(records)):
            log.warning("request %s refused: %s", request_id, writer.trouble())
            return unavailable(f"forecasts cannot be recorded now ({writer.trouble()}): try again", request_id)
        return await forecast_answer(records, single, served, ws, state, request_id, request.state.principal,
                                     request.url.path)

    return api
