"""Several models in one database: each has its own registry, champion, runs, skips and arrivals.
And databases that are brand new, or older than the model column, just work."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from pipeline import stages
from pipeline.contract.config import DEFAULT_MODEL, suite_columns
from pipeline.contract.settings import (
    PROJECT_ROOT,
    Settings,
)
from pipeline.data import demo
from pipeline.data.arrivals import claim_arrival_signal, count_new_labelled_rows, last_seen_watermark
from pipeline.registry import records
from pipeline.store import db
from pipeline.workspace import Workspace
from tests.commands import cli_in_process, output
from tests.integration.stage_runs import (
    DEMO_WATERMARK,
    command_env,
    fetch,
    make_run,
    quick_workspace,
    retrain_through_stages,
)

TWIN = "twin_without_tch"


def twin_config(tmp_path: Path) -> Path:
    """The shipped config under another model name, on the same table without the `tch` feature:
    its snapshots differ from the demo model's, as another table's would."""
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["model"] = TWIN
    raw["dataset"]["features"] = [f for f in raw["dataset"]["features"] if f["name"] != "tch"]
    suite = json.loads((PROJECT_ROOT / "expectations" / "patient_records.json").read_text())
    suite["expectations"] = [e for e in suite["expectations"] if "tch" not in suite_columns(e)]
    (tmp_path / "twin_suite.json").write_text(json.dumps(suite))
    raw["dataset"]["expectation_suite"] = "twin_suite.json"
    path = tmp_path / "twin.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def twin(settings: Settings, tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.open(dataclasses.replace(settings, config_path=twin_config(tmp_path)))
    yield quick_workspace(workspace)
    workspace.engine.dispose()


def champion(ws: Workspace) -> dict[str, Any] | None:
    with ws.engine.connect() as conn:
        return records.current_champion(conn, ws.model)


def test_two_models_get_two_champions_and_never_compare(ws: Workspace, twin: Workspace) -> None:
    demo_ws = quick_workspace(ws)
    demo.seed_demo(ws.engine)
    first = retrain_through_stages(demo_ws, make_run("demo-first", DEMO_WATERMARK))
    other = retrain_through_stages(twin, make_run("twin-first", DEMO_WATERMARK))

    assert first["outcome"]["status"] == other["outcome"]["status"] == "promoted"
    assert other["evaluation"]["champion_version"] is None  # its own first model, not judged against the demo's
    assert champion(demo_ws)["version"] == first["candidate"]["version"]  # type: ignore[index]
    assert champion(twin)["version"] == other["candidate"]["version"]  # type: ignore[index]
    assert first["snapshot"]["snapshot_hash"] != other["snapshot"]["snapshot_hash"]


def test_status_history_and_skips_see_only_their_own_model(ws: Workspace, twin: Workspace) -> None:
    demo_ws = quick_workspace(ws)
    demo.seed_demo(ws.engine)
    retrain_through_stages(demo_ws, make_run("demo-first", DEMO_WATERMARK))
    retrain_through_stages(twin, make_run("twin-first", DEMO_WATERMARK))

    with ws.engine.connect() as conn:
        runs = {m: [r["run_id"] for r in records.recent_runs(conn, m)] for m in (DEFAULT_MODEL, TWIN)}
        events = {m: [e["run_id"] for e in records.promotion_history(conn, m)] for m in (DEFAULT_MODEL, TWIN)}
        quality = {m: [q["run_id"] for q in records.quality_history(conn, m)] for m in (DEFAULT_MODEL, TWIN)}
    assert runs == events == quality == {DEFAULT_MODEL: ["demo-first"], TWIN: ["twin-first"]}

    # The newest version in the database is the twin's; the demo model still sees its own rows unchanged.
    run = make_run("demo-again", DEMO_WATERMARK)
    snapshot = stages.ingest_snapshot(demo_ws, run)
    assert stages.has_new_data(demo_ws, run, snapshot["snapshot_hash"]) is False
    assert fetch(ws, "SELECT status FROM pipeline.training_runs WHERE run_id = 'demo-again'") == [{"status": "skipped"}]


def test_rollback_never_crosses_models(ws: Workspace, twin: Workspace) -> None:
    demo_ws = quick_workspace(ws)
    demo.seed_demo(ws.engine)
    demo_version = retrain_through_stages(demo_ws, make_run("demo-first", DEMO_WATERMARK))["candidate"]["version"]
    retrain_through_stages(twin, make_run("twin-first", DEMO_WATERMARK))

    with pytest.raises(LookupError, match=f"version {demo_version} is a version of model '{DEFAULT_MODEL}'"):
        stages.rollback_champion(twin, "twin-rollback", "wrong model", to_version=demo_version)
    assert fetch(ws, "SELECT count(*) AS n FROM pipeline.promotion_events") == [{"n": 2}]


def test_arrivals_are_counted_per_model(ws: Workspace, twin: Workspace) -> None:
    demo_ws = quick_workspace(ws)
    demo.seed_demo(ws.engine)
    retrain_through_stages(demo_ws, make_run("demo-first", DEMO_WATERMARK))
    retrain_through_stages(twin, make_run("twin-first", DEMO_WATERMARK))
    demo.simulate_arrivals(ws.engine, 60, seed=1)

    demo_signal = claim_arrival_signal(ws.engine, ws.model, ws.config.dataset, 50)
    twin_signal = claim_arrival_signal(ws.engine, twin.model, twin.config.dataset, 50)
    assert demo_signal is not None and twin_signal is not None  # the demo's pending signal holds no other back
    assert demo_signal["new_rows"] == twin_signal["new_rows"] == 60

    retrain_through_stages(demo_ws, make_run("demo-later", datetime.now(UTC)))  # reads the arrivals
    demo.simulate_arrivals(ws.engine, 10, seed=2)
    # The twin has read nothing past the demo watermark: all 70 rows are new to it, 10 to the demo.
    with ws.engine.connect() as conn:
        assert count_new_labelled_rows(conn, twin.config.dataset, last_seen_watermark(conn, TWIN))[0] == 70
        assert count_new_labelled_rows(conn, ws.config.dataset, last_seen_watermark(conn, ws.model))[0] == 10
    assert claim_arrival_signal(ws.engine, ws.model, ws.config.dataset, 10)["new_rows"] == 10  # type: ignore[index]
    assert claim_arrival_signal(ws.engine, TWIN, twin.config.dataset, 10) is None  # its first signal is pending


def test_a_run_id_belongs_to_one_model(ws: Workspace, twin: Workspace) -> None:
    demo.seed_demo(ws.engine)
    stages.ingest_snapshot(ws, make_run("shared-id", DEMO_WATERMARK))
    with pytest.raises(records.RunIdTaken, match=f"already a run of model '{DEFAULT_MODEL}', not '{TWIN}'"):
        stages.ingest_snapshot(twin, make_run("shared-id", DEMO_WATERMARK))
    assert fetch(ws, "SELECT model FROM pipeline.training_runs") == [{"model": DEFAULT_MODEL}]


# --- older and brand-new databases ----------------------------------------------------------------


def apply_files(engine: sa.engine.Engine, names: list[str]) -> None:
    with engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        for name in names:
            cursor.execute((db.SQL_DIR / name).read_text())


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    url = db.with_database(server_url, f"pipeline_test_{uuid.uuid4().hex[:10]}")
    db.ensure_database(url)
    yield url
    db.drop_database(url)


def test_an_older_database_migrates_and_its_rows_belong_to_the_default_model(empty_database: str) -> None:
    engine = db.create_engine(empty_database)
    before = [p.name for p in db.sql_files() if p.name < "006"]
    apply_files(engine, before)
    with engine.begin() as conn:  # one champion as an installation before model scoping held it
        conn.execute(sa.text("""
            INSERT INTO pipeline.training_runs (run_id, triggered_by, watermark, status) VALUES ('old', 'cli', now(), 'promoted');
            INSERT INTO pipeline.snapshots (snapshot_hash, source_table, query, watermark, row_count, path, first_run_id)
                 VALUES ('s', 'public.patient_records', 'SELECT 1', now(), 1, '/x', 'old');
            INSERT INTO pipeline.model_versions (run_id, snapshot_hash, artifact_hash, artifact_path, model_family,
                   params, cv_metrics, train_rows, holdout_rows, holdout_start, library_versions, code_version)
                 VALUES ('old', 's', 'a', '/a', 'ridge', '{}', '{}', 1, 1, '{}', '{}', 'x');
            INSERT INTO pipeline.champion (version, run_id) VALUES (1, 'old');
            INSERT INTO pipeline.promotion_events (to_version, run_id, actor, reason) VALUES (1, 'old', 'cli', 'first');
        """))
    assert not db.schema_is_current(engine)

    assert db.ensure_schema(engine) == [p.name for p in db.sql_files()]
    assert db.ensure_schema(engine) == []  # now current: nothing to do
    db.apply_schema(engine)  # and safe to apply again

    with engine.connect() as conn:
        assert records.current_champion(conn, DEFAULT_MODEL)["version"] == 1  # type: ignore[index]
        assert records.current_champion(conn, "another") is None
        assert [e["run_id"] for e in records.promotion_history(conn, DEFAULT_MODEL)] == ["old"]
        for table in ("training_runs", "model_versions", "champion", "promotion_events"):
            assert conn.scalar(sa.text(f"SELECT array_agg(DISTINCT model) FROM pipeline.{table}")) == [DEFAULT_MODEL]
        default = conn.scalar(sa.text("SELECT column_default FROM information_schema.columns "
                                      "WHERE table_name = 'training_runs' AND column_name = 'model'"))
    assert default is None  # new rows must name their model
    engine.dispose()


def test_a_brand_new_database_works_through_the_cli(empty_database: str, tmp_path: Path) -> None:
    env = command_env(Settings(database_url=empty_database, config_path=PROJECT_ROOT / "pipeline.yaml",
                               artifact_dir=tmp_path / "artifacts", pgdata_dir=PROJECT_ROOT / ".pgdata",
                               key_file=tmp_path / "secrets" / "master.key"))
    cli = cli_in_process(env)

    status = output(cli("status", "--json"))  # no init-db first: the schema is applied on the way
    assert status == {"model": DEFAULT_MODEL, "config": str(PROJECT_ROOT / "pipeline.yaml"), "champion": None,
                      "recent_runs": []}
    assert output(cli("quality", "--json")) == []
    output(cli("seed-demo", "--json"))
    assert output(cli("retrain", "--watermark", DEMO_WATERMARK.isoformat(), "--json"))["status"] == "promoted"
