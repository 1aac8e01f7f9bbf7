"""`python -m pipeline <command>`: every stage by hand, with the arguments the DAG uses.

Output. Every command prints text for people on stdout: one line per thing, columns aligned. With `--json` it
prints one JSON document instead, for scripts (`status --json | jq .champion`). Read commands (status, quality,
history, drift, performance, shadow without --add/--remove, card, reproduce, check-config, db-url, health) show
the state; write commands (init-db, seed-*, simulate-*, ingest, validate, train, evaluate, promote, retrain, score,
rollback, shadow --add/--remove, db-stop, migrate-store) change it and print a short summary of what they did, or with
`--json` everything they return. `serve`, `airflow` and `airflow-celery` run until stopped and have no --json. A failure is one
`error: ...` line on stderr and exit status 1, nothing on stdout; a run id or version that names nothing the
command can work on is refused so before anything runs. Piped into `head`, a command stops quietly.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipeline import stages
from pipeline.cli import airflow, champion, monitor, privacy, retrain, serve, setup
from pipeline.cli.common import UnknownTarget, as_json, command_adder
from pipeline.contract.settings import Settings
from pipeline.registry import runs
from pipeline.registry.runs import error_line
from pipeline.runtime import threads
from pipeline.workspace import Workspace


def build_parser() -> argparse.ArgumentParser:
    """Every command, one group at a time: each group's parsers live beside its commands."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="PATH", help="the model's config file (default: PIPELINE_CONFIG, "
                        "else pipeline.yaml); every command works on the model it names")
    sub = parser.add_subparsers(dest="command", required=True)
    add = command_adder(sub)
    for group in (setup, retrain, champion, monitor, serve, privacy):
        group.register(add)
    airflow.register(sub)
    return parser


def end_failed_run(ws: Workspace, run_id: str, reason: str, kind: str) -> None:
    """Record the command's run as failed, so it never stays 'running'; a database that is gone is said so."""
    try:
        stages.mark_run_failed(ws, run_id, reason, kind)
    except sa.exc.DBAPIError:
        print(f"warning: run {run_id} could not be marked failed: the database is unreachable", file=sys.stderr)


def execute(args: argparse.Namespace, settings: Settings) -> Any:
    """The command's result. A failure of a run's stage marks the run failed; a refused run id or version
    (UnknownTarget) ran nothing, so it marks nothing."""
    if getattr(args, "without_database", None):
        return args.without_database(settings)
    ws = stages.open_workspace(settings)
    try:
        if not hasattr(args, "run_id"):
            return args.handler(ws, args)
        # a stage, as a task runs it: pools sized to the slot (said at debug: stderr is for the error line)
        with threads.sized(ws.config.training.n_jobs, logging.DEBUG):
            return args.handler(ws, args)
    except Exception as exc:
        if getattr(args, "run_id", None) and not isinstance(exc, UnknownTarget):
            end_failed_run(ws, args.run_id, f"{args.command}: {error_line(exc, settings)}", runs.failure_kind(exc))
        raise
    finally:
        ws.engine.dispose()  # the command leaves no connection behind (also when called in a longer process)


def main(argv: list[str] | None = None) -> int:
    """Run one command: its result on stdout as text for people, or as JSON with --json; a failure as one line
    on stderr, exit status 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # an environment variable with a value it does not allow: one line, as any failure
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.config:
        settings = dataclasses.replace(settings, config_path=Path(args.config))
    if args.command == "airflow":
        airflow.exec_airflow(settings, args.airflow_args)
    if args.command == "airflow-celery" and args.add_worker:
        airflow.run_extra_worker(settings)
    if args.command == "airflow-celery":
        airflow.run_celery_airflow(settings, args.workers, args.concurrency, args.broker_url, args.host)
        return 0
    try:
        result = execute(args, settings)
    except Exception as exc:  # noqa: BLE001 - the CLI reports every failure as one clear line
        print(f"error: {error_line(exc, settings)}", file=sys.stderr)
        return 1
    if result is None:
        return 0
    try:
        print(as_json(result) if args.json else args.text(result), flush=True)
    except BrokenPipeError:
        # The reader stopped early (`| head`): nothing more to say. What is left in the buffer goes nowhere, so
        # the flush at exit does not complain either (https://docs.python.org/3/library/signal.html#note-on-sigpipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
