"""Forecasts out: score (the batch) and serve (the REST API)."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from typing import Any

from pipeline.cli.common import counts
from pipeline.workspace import Workspace


def cmd_score(ws: Workspace, args: argparse.Namespace) -> Any:
    """Forecast the records that need one with the champion (the score_patients DAG runs the same)."""
    from pipeline.serving import scoring

    return scoring.score_batch(ws, args.scoring_run_id or f"score__{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")


def text_score(result: dict[str, Any]) -> str:
    refused = f" ({counts(result['reason_counts'])})" if result["rows_refused"] else ""
    lines = [f"scoring run {result['run_id']}: {result['rows_selected']} records selected ({result['score_records']}), "
             f"{result['rows_scored']} scored by version {result['version']} of {result['model']} "
             f"(interval {result['coverage']:.0%}), {result['rows_refused']} refused{refused}"]
    lines += [f"  shadow version {shadow['version']}: " + (f"{shadow['rows_scored']} scored" if shadow["status"] == "done"
                                                           else f"stopped: {shadow['reason']}")
              for shadow in result["shadows"]]
    return "\n".join(lines)


def cmd_serve(ws: Workspace, args: argparse.Namespace) -> Any:
    """`serve`: the REST API on the champion, until interrupted; refuses to start without API tokens."""
    from pipeline.serving import app, rest

    app.serve(ws, rest.tokens_from_environment(os.environ), args.host, args.port, args.insecure_local)
    return None


def register(add: Any) -> None:
    """The parsers of score and serve."""
    p = add("score", cmd_score, "forecast every record that needs one with the champion, into pipeline.predictions",
            text=text_score, json_help="{run_id, model, version, rows_selected, rows_scored, rows_refused, "
            "reason_counts, shadows, ...}")
    p.add_argument("--run-id", dest="scoring_run_id", help="the scoring run's id (again: its rows are replaced)")
    p = add("serve", cmd_serve, "the REST API: forecasts from the champion, hot-swapped when it changes "
            "(tokens from the file PIPELINE_API_TOKEN_FILE names)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--insecure-local", action="store_true",
                   help="serve without authentication when no tokens are configured (this machine only)")
