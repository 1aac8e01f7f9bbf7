"""The REST API's routes: health, readiness, the served model, its card, and predict.

`router(tokens, state)` is included by `pipeline.serving.app.create_app`; `state` is filled by the app's startup
(the workspace, the champion holder, the prediction log, the suite).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from pipeline.serving.rest import (
    BEARER,
    RequestProblem,
    Served,
    model_summary,
    parse_records,
    read_body,
    request_id_of,
    score_records,
    token_matches,
)
from pipeline.store import artifacts
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


def router(tokens: Sequence[str], state: dict[str, Any]) -> APIRouter:
    """The routes, authenticated by `tokens` (none: unauthenticated), answering from `state`."""
    api = APIRouter()

    def authenticated(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if not tokens:
            return
        if credentials is None or credentials.scheme.lower() != "bearer" or not token_matches(
                credentials.credentials, tokens):
            raise HTTPException(401, "a valid bearer token is required (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})

    def known(model: str) -> Workspace:
        ws: Workspace = state["ws"]
        if model != ws.model:
            raise HTTPException(404, f"no model {model!r} is served here; this service serves {ws.model!r}")
        return ws

    def served_now() -> Served:
        served: Served | None = state["champion"].current
        if served is None:
            raise HTTPException(503, "no champion loaded yet", headers={"Retry-After": "5"})
        return served

    @api.get("/healthz", summary="the process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", summary="200 once a hash-verified champion is loaded, else 503")
    def readyz() -> Any:
        served: Served | None = state["champion"].current if state else None
        if served is None:
            return JSONResponse({"status": "not ready", "reason": "no champion loaded"}, status_code=503)
        return {"status": "ready", "model": state["ws"].model, "version": served.version}

    @api.get("/v1/models/{model}", dependencies=[Depends(authenticated)],
             summary="the served champion: version, family, holdout metrics, promotion time, model card")
    def describe(model: str) -> dict[str, Any]:
        ws = known(model)
        return model_summary(ws, served_now(), state["champion"].refused)

    @api.get("/v1/models/{model}/card", dependencies=[Depends(authenticated)], summary="the served version's card")
    def card(model: str) -> Any:
        ws = known(model)
        found = model_summary(ws, served_now(), None)["model_card"]
        if found is None:
            raise HTTPException(404, "no model card was written for this version (python -m pipeline card VERSION)")
        return FileResponse(artifacts.recorded_copy(ws.store, found["path"]), media_type="text/html")

    @api.post("/v1/models/{model}/predict", dependencies=[Depends(authenticated)],
              summary="forecast one record (an object) or many (a list); see the description for the rules",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}}}}})
    async def predict(model: str, request: Request) -> Any:
        ws = known(model)
        request_id = request_id_of(request.headers.get("x-request-id"))
        headers = {"X-Request-ID": request_id}
        try:
            body = await read_body(request, ws.config.serving.max_request_bytes)
            records, single = parse_records(body, ws.config.serving.max_request_records)
        except RequestProblem as problem:
            log.info("request %s refused: HTTP %s", request_id, problem.status)
            return JSONResponse({"detail": problem.detail, "request_id": request_id}, problem.status, headers)
        served = served_now()
        started = time.perf_counter()
        try:
            scored = await run_in_threadpool(score_records, records, served, ws, state["suite"], request_id,
                                             state["judging"])
        except Exception as exc:  # noqa: BLE001 - the exception's text may quote a value: log its type only
            log.error("request %s failed scoring %d records with version %s: %s", request_id, len(records),
                      served.version, type(exc).__name__)
            return JSONResponse({"detail": "internal error", "request_id": request_id}, 500, headers)
        state["writer"].put(scored.log_rows)
        log.info("request %s: %d records, %d scored, %d refused, version %s, %.0f ms", request_id, len(records),
                 len(scored.log_rows), len(records) - len(scored.log_rows), served.version,
                 1000 * (time.perf_counter() - started))
        common = {"request_id": request_id, "model": ws.model, "model_version": served.version}
        if single:
            [result] = scored.results
            if result["status"] == 422:
                return JSONResponse({"detail": result["errors"], **common}, 422, headers)
            return JSONResponse({**common, **{k: v for k, v in result.items() if k not in ("index", "status")}},
                                headers=headers)
        return JSONResponse({**common, "records": len(records), "scored": len(scored.log_rows),
                             "refused": len(records) - len(scored.log_rows), "results": scored.results},
                            headers=headers)

    return api
