"""The database and the data: init-db, seed-demo, seed-clinic-export, simulate-arrivals, simulate-outcomes, db-url, db-stop, check-config, health, migrate-store."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipeline import stages
from pipeline.cli.common import aligned, count_arg, shifts_of
from pipeline.contract.config import load_config
from pipeline.contract.settings import Settings
from pipeline.data import demo
from pipeline.registry.runs import database_error
from pipeline.store import db, keys
from pipeline.workspace import Workspace


def cmd_init_db(ws: Workspace, args: argparse.Namespace) -> Any:
    return {"applied": db.apply_schema(ws.engine)}


def text_init_db(result: dict[str, Any]) -> str:
    files = result["applied"]
    return f"schema applied: {len(files)} files of sql/" + (f" ({files[0]} to {files[-1]})" if files else "")


def cmd_seed_demo(ws: Workspace, args: argparse.Namespace) -> Any:
    db.apply_schema(ws.engine)
    return {"inserted": demo.seed_demo(ws.engine), "table": demo.DEMO_TABLE}


def cmd_seed_clinic_export(ws: Workspace, args: argparse.Namespace) -> Any:
    return {"inserted": demo.seed_clinic_export(ws.engine), "table": demo.CLINIC_TABLE}


def text_seeded(result: dict[str, Any]) -> str:
    return f"inserted {result['inserted']} rows into {result['table']}" + (
        "" if result["inserted"] else " (they were there already)")


def cmd_simulate_arrivals(ws: Workspace, args: argparse.Namespace) -> Any:
    ids = demo.simulate_arrivals(ws.engine, args.rows, args.seed, shifts_of(args.drift), labelled=not args.unlabelled,
                                 bad_rows=args.bad_rows)
    return {"inserted": len(ids), "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}


def text_simulate_arrivals(result: dict[str, Any]) -> str:
    ids = f" (ids {result['first_id']} to {result['last_id']})" if result["inserted"] else ""
    return f"inserted {result['inserted']} new records{ids}"


def cmd_simulate_outcomes(ws: Workspace, args: argparse.Namespace) -> Any:
    from pipeline.monitoring import outcomes

    return outcomes.fill_outcomes(ws.engine, ws.model, args.months, args.seed,
                                  shifts_of(args.shift, "--shift", "glucose=+30"))


def text_simulate_outcomes(result: dict[str, Any]) -> str:
    shift = ", ".join(f"{column} {value:+g}" for column, value in result["shift"].items())
    filled = f"filled the outcome of {result['filled']} forecast records with a visit up to {result['visits_up_to']}"
    if not result["filled"]:
        return filled
    return (f"{filled} (ids {result['first_id']} to {result['last_id']}, mean outcome {result['mean_outcome']:.1f}"
            f"{'; shifted as if ' + shift if shift else ''})")


def cmd_db_url(ws: Workspace, args: argparse.Namespace) -> Any:
    return {"url": ws.engine.url.render_as_string(hide_password=False)}


def cmd_migrate_store(ws: Workspace, args: argparse.Namespace) -> Any:
    """`migrate-store`: this machine's artifacts into the team store, registry paths in the store's form."""
    from dataclasses import asdict

    from pipeline.registry.store_paths import migrate_store

    root = Path(args.source) if args.source else ws.settings.artifact_dir
    db.apply_schema(ws.engine)
    return {"from": str(root), **asdict(migrate_store(ws.engine, root, ws.keyring, ws.config.security.encrypt_at_rest))}


def text_migrate_store(result: dict[str, Any]) -> str:
    rewritten = ", ".join(f"{k} {v}" for k, v in result["rewritten"].items()) or "none"
    lines = [f"from {result['from']}: copied {len(result['copied'])} files into the team store "
             f"({result['in_store']} there already); paths rewritten: {rewritten}"]
    lines += [f"  missing (found neither here nor in the team store): {m}" for m in result["missing"]]
    lines += [f"  skipped (names no stored file): {s}" for s in result["skipped"]]
    return "\n".join(lines)


def check_health(settings: Settings) -> dict[str, Any]:
    """`health`: the stack's readiness (pipeline.store.health); every check failing is named in the error."""
    from pipeline.store import health

    checks = health.readiness(os.environ, db.database_url(settings))
    if not all(c.ok for c in checks):
        raise health.Unhealthy(checks)
    return health.report(checks)


def text_health(result: dict[str, Any]) -> str:
    return "\n".join(["healthy", *aligned([[name, c["detail"]] for name, c in result["checks"].items()])])


def check_config(settings: Settings) -> dict[str, Any]:
    """`check-config`: the config and its suite, every family's parameters, and, when its database can be reached
    (never starting the embedded one), the checks a run makes before it writes anything (`stages.preflight`), as
    of now. Nothing is written."""
    from pipeline.model import train

    config = load_config(settings.config_path)
    train.check_families(config.training)
    result: dict[str, Any] = {"config": str(config.path), "model": config.model, "ok": True,
                              "keys": keys.describe(settings, config)}
    url, why_not = _reachable_database(settings)
    if url is None:
        return {**result, "source": {"checked": False, "why": why_not}}
    engine = db.create_engine(url, config.database)
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        return {**result, "source": {"checked": False, "why": database_error(exc, settings)}}
    try:
        checked = stages.preflight(config, engine, datetime.now(UTC))
    finally:
        engine.dispose()
    return {**result, "source": {"checked": True, "table": checked["table"], "watermark": checked["watermark"]}}


def _reachable_database(settings: Settings) -> tuple[str | None, str]:
    """The database URL to check the source on, or None and why not: the embedded server is used only when it runs."""
    if settings.database_url:
        return settings.database_url, ""
    pid_file = settings.pgdata_dir / "postmaster.pid"
    running = pid_file.is_file() and db.serves_data_directory(int(pid_file.read_text().split()[0]),
                                                               settings.pgdata_dir)
    if not running:
        return None, (f"no database: PIPELINE_DATABASE_URL is not set and the embedded PostgreSQL in "
                      f"{settings.pgdata_dir} is not running (check-config does not start it)")
    return db.database_url(settings), ""


def text_check_config(result: dict[str, Any]) -> str:
    source = result["source"]
    checked = (f"source {source['table']}: columns, types and labelled rows up to now ok (checked on the database)"
               if source["checked"] else f"source not checked: {source['why']}")
    return (f"{result['config']}: model {result['model']}, config, expectation suite and model parameters ok; "
            f"{checked}\n{text_keys(result['keys'])}")


def text_keys(found: dict[str, Any]) -> str:
    """The key manager line of check-config."""
    state = ("opens, current master key " + found["current_key_id"] if found.get("current_key_id") else
             "opens; " + found["why"] if found["opened"] else "CANNOT BE OPENED: " + found["why"])
    at_rest = "on" if found["encrypt_at_rest"] else "OFF (security.encrypt_at_rest: false)"
    return f"encryption at rest {at_rest}; key manager {found['manager']} ({found.get('source')}): {state}"


def stop_embedded(settings: Settings) -> dict[str, Any]:
    """`db-stop`: stop the embedded server without starting one first."""
    return {"stopped_pid": db.stop_embedded_postgres(settings.pgdata_dir), "pgdata": str(settings.pgdata_dir)}


def text_db_stop(result: dict[str, Any]) -> str:
    pid, where = result["stopped_pid"], result["pgdata"]
    return f"stopped embedded PostgreSQL (pid {pid}) on {where}" if pid else f"no embedded PostgreSQL running on {where}"


def register(add: Any) -> None:
    """The parsers of the database and data commands."""
    add("init-db", cmd_init_db, "apply the SQL files in sql/ (safe twice)", text=text_init_db,
        json_help="{applied: [file names]}")
    add("seed-demo", cmd_seed_demo, "load the 442-patient diabetes study into the source table", text=text_seeded,
        json_help="{inserted, table}")
    add("seed-clinic-export", cmd_seed_clinic_export, "load the worked example's clinic export into clinic.visits "
        "(its own column names, d/m/Y text dates, a few faults; see examples/clinic/)", text=text_seeded,
        json_help="{inserted, table}")
    p = add("simulate-arrivals", cmd_simulate_arrivals, "append new plausible labelled records",
            text=text_simulate_arrivals, json_help="{inserted, first_id, last_id}")
    p.add_argument("--rows", type=count_arg, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drift", action="append", default=[], metavar="COLUMN=SHIFT",
                   help="shift a numeric column, e.g. bmi=+4 (repeatable)")
    p.add_argument("--unlabelled", action="store_true", help="outcome not known yet (progression_12m NULL)")
    p.add_argument("--bad-rows", type=int, default=0, metavar="K",
                   help="make K rows faulty (unknown sex, kPa blood pressure, birth after visit, ...) and K more messy")
    p = add("simulate-outcomes", cmd_simulate_outcomes, "fill in the outcomes of forecast records whose visit was "
            "--months ago or earlier (demo table), by UPDATE: the trigger stamps label_recorded_at",
            text=text_simulate_outcomes, json_help="{filled, visits_up_to, months, seed, shift, first_id, last_id, "
            "mean_outcome}")
    p.add_argument("--months", type=int, default=12, help="the outcome is known this many months after the visit: "
                   "visits on or before today minus MONTHS get theirs (0: every forecast record; default 12)")
    p.add_argument("--shift", action="append", default=[], metavar="COLUMN=SHIFT",
                   help="concept shift: outcomes computed as if COLUMN were SHIFT higher (stored value unchanged), "
                   "e.g. glucose=+30 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    add("db-url", cmd_db_url, "print the database URL in use (starts the embedded server if needed)",
        text=lambda result: result["url"], json_help="{url}")
    add("db-stop", None, "stop the embedded PostgreSQL (PIPELINE_PGDATA); data is kept", text=text_db_stop,
        json_help="{stopped_pid (null when none ran), pgdata}").set_defaults(without_database=stop_embedded)
    p = add("migrate-store", cmd_migrate_store, "copy this machine's artifacts that the registry names into the team "
            "store (pipeline.artifact_objects) and record their paths in its form, <kind>/<sha256><suffix> (safe "
            "twice)", text=text_migrate_store, json_help="{from, copied, in_store, rewritten, missing, skipped}")
    p.add_argument("--from", dest="source", metavar="DIR", help="the artifact folder the files are in (default: "
                   "PIPELINE_ARTIFACT_DIR); an absolute path in the registry is read where it points")
    add("health", None, "is the stack ready: its databases, its broker (PING) and a live Celery worker; exit "
        "status 1 naming what is down", text=text_health,
        json_help="{healthy, checks: {name: {ok, detail}}}").set_defaults(without_database=check_health)
    add("check-config", None, "check the config, its expectation suite and model parameters; and the source "
        "table's columns, types and rows when its database is reachable (nothing is written)",
        text=text_check_config, json_help="{config, model, ok, keys: {encrypt_at_rest, manager, source, opened, current_key_id | why}, "
        "source: {checked, table, watermark | why}}").set_defaults(without_database=check_config)
