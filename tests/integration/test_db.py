"""The schema on real PostgreSQL: safe to apply twice, append-only where it says so."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.contract.config import DEFAULT_MODEL
from pipeline.data import demo
from pipeline.data.ingest import Snapshot
from pipeline.registry import records
from pipeline.store import db

WATERMARK = datetime(2026, 7, 1, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.create_engine(database_url)
    yield engine
    engine.dispose()


def schema_shape(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Columns, indexes and triggers of the project's schemas, for before/after comparisons."""
    queries = {
        "columns": """
            SELECT table_schema, table_name, column_name, data_type, is_nullable, column_default
              FROM information_schema.columns WHERE table_schema IN ('public', 'pipeline')
             ORDER BY table_schema, table_name, ordinal_position""",
        "indexes": """
            SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
             WHERE schemaname IN ('public', 'pipeline') ORDER BY indexname""",
        "triggers": """
            SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal
             ORDER BY 1, 2""",
    }
    with engine.connect() as conn:
        return {name: [tuple(row) for row in conn.execute(sa.text(sql))] for name, sql in queries.items()}


def row_counts(engine: Engine) -> dict[str, int]:
    tables = ["public.patient_records", "pipeline.training_runs", "pipeline.snapshots",
              "pipeline.model_versions", "pipeline.champion", "pipeline.promotion_events"]
    with engine.connect() as conn:
        return {t: conn.scalar(sa.text(f"SELECT count(*) FROM {t}")) for t in tables}


def register_champion(engine: Engine) -> int:
    """A snapshot, a model version and its promotion, written through the registry."""
    snapshot = Snapshot("a" * 64, "/nowhere/a.parquet", 442, WATERMARK.isoformat(), "public.patient_records",
                        "SELECT 1")
    record = {
        "model": DEFAULT_MODEL, "run_id": "run-1", "snapshot_hash": snapshot.snapshot_hash, "artifact_hash": "b" * 64,
        "artifact_path": "/nowhere/b.joblib", "model_family": "ridge", "params": {"alpha": 1.0},
        "cv_metrics": {"ridge": {"cv_rmse_mean": 55.0, "cv_rmse_std": 3.0}}, "train_rows": 354,
        "holdout_rows": 88, "holdout_start": {"patient_id": 355}, "library_versions": {"scikit-learn": "x"},
        "code_version": "test",
    }
    with engine.begin() as conn:
        records.start_run(conn, DEFAULT_MODEL, "run-1", "test", WATERMARK, {})
        records.record_snapshot(conn, snapshot, "run-1")
        version = records.register_model(conn, record)
    assert records.promote(engine, DEFAULT_MODEL, "run-1", version, None, "test", "first model")
    return version


def test_apply_schema_twice_keeps_tables_and_rows(engine: Engine) -> None:
    demo.seed_demo(engine)
    register_champion(engine)
    shape_before, counts_before = schema_shape(engine), row_counts(engine)

    applied = db.apply_schema(engine)

    assert applied == [path.name for path in db.sql_files()]
    assert applied[:2] == ["001_patient_records.sql", "002_pipeline_schema.sql"]
    assert schema_shape(engine) == shape_before
    assert row_counts(engine) == counts_before
    assert counts_before["public.patient_records"] == 442
    assert counts_before["pipeline.promotion_events"] == 1


def test_apply_schema_concurrently_succeeds(engine: Engine) -> None:
    shape_before = schema_shape(engine)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: db.apply_schema(engine), range(4)))
    assert all(applied == [path.name for path in db.sql_files()] for applied in results)
    assert schema_shape(engine) == shape_before


def test_schema_has_the_append_only_triggers(engine: Engine) -> None:
    triggers = schema_shape(engine)["triggers"]
    assert ("pipeline.model_versions", "model_versions_append_only") in triggers
    assert ("pipeline.promotion_events", "promotion_events_append_only") in triggers


def append_only_functions(engine: Engine) -> dict[str, Any]:
    """Which function each append-only trigger with exceptions calls, and which such functions exist."""
    with engine.connect() as conn:
        triggers = dict(conn.execute(sa.text("""
            SELECT tgrelid::regclass::text, tgfoid::regproc::text FROM pg_trigger
             WHERE tgname IN ('model_versions_append_only', 'performance_reports_append_only')""")).tuples().all())
        functions = conn.scalars(sa.text("SELECT proname FROM pg_proc WHERE proname LIKE 'refuse_change_but%' "
                                         "ORDER BY proname")).all()
    return {"triggers": triggers, "functions": functions}


def test_one_function_holds_the_append_only_exceptions_also_over_an_older_database(engine: Engine) -> None:
    one = {"triggers": {"pipeline.model_versions": "pipeline.refuse_change_but_erasure_or_store_path",
                        "pipeline.performance_reports": "pipeline.refuse_change_but_erasure_or_store_path"},
           "functions": ["refuse_change_but_erasure_or_store_path"]}
    assert append_only_functions(engine) == one
    with engine.begin() as conn:  # what the earlier 021 and 024 left: a function each, 024's on the triggers
        for old in ("refuse_change_but_erasure", "refuse_change_but_store_path"):
            conn.execute(sa.text(f"CREATE FUNCTION pipeline.{old}() RETURNS trigger LANGUAGE plpgsql AS "
                                 "$$ BEGIN RAISE EXCEPTION 'old'; END $$"))
        for table in ("model_versions", "performance_reports"):
            conn.execute(sa.text(f"DROP TRIGGER {table}_append_only ON pipeline.{table}; CREATE TRIGGER "
                                 f"{table}_append_only BEFORE UPDATE OR DELETE ON pipeline.{table} FOR EACH ROW "
                                 "EXECUTE FUNCTION pipeline.refuse_change_but_store_path()"))

    db.apply_schema(engine)  # as when the files' fingerprints changed

    assert append_only_functions(engine) == one


@pytest.mark.parametrize(
    ("table", "operation", "statement"),
    [
        ("model_versions", "UPDATE", "UPDATE pipeline.model_versions SET model_family = 'tampered'"),
        ("model_versions", "DELETE", "DELETE FROM pipeline.model_versions"),
        ("promotion_events", "UPDATE", "UPDATE pipeline.promotion_events SET actor = 'tampered'"),
        ("promotion_events", "DELETE", "DELETE FROM pipeline.promotion_events"),
    ],
)
def test_append_only_tables_refuse_changes(engine: Engine, table: str, operation: str, statement: str) -> None:
    register_champion(engine)
    with engine.connect() as conn:
        before = [dict(r) for r in conn.execute(sa.text(f"SELECT * FROM pipeline.{table}")).mappings()]

    with pytest.raises(sa.exc.DBAPIError, match=rf"pipeline\.{table} is append-only: {operation} refused"):
        with engine.begin() as conn:
            conn.execute(sa.text(statement))

    with engine.connect() as conn:
        after = [dict(r) for r in conn.execute(sa.text(f"SELECT * FROM pipeline.{table}")).mappings()]
    assert after == before
    assert len(after) == 1


def test_promotion_events_refuse_truncate(engine: Engine) -> None:
    register_champion(engine)
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE pipeline.promotion_events"))


def test_ensure_database_keeps_an_existing_database(engine: Engine, database_url: str) -> None:
    demo.seed_demo(engine)
    engine.dispose()

    db.ensure_database(database_url)
    db.ensure_database(database_url)

    assert row_counts(engine)["public.patient_records"] == 442


def test_ensure_database_creates_once(server_url: str) -> None:
    name = f"pipeline_test_ensure_{uuid.uuid4().hex[:10]}"
    url = db.with_database(server_url, name)
    admin = db.create_engine(db.with_database(server_url, "postgres"))
    count = sa.text("SELECT count(*) FROM pg_database WHERE datname = :n")
    try:
        db.ensure_database(url)
        db.ensure_database(url)
        with admin.connect() as conn:
            assert conn.scalar(count, {"n": name}) == 1
        probe = db.create_engine(url)
        with probe.connect() as conn:
            assert conn.scalar(sa.text("SELECT current_database()")) == name
        probe.dispose()
    finally:
        db.drop_database(url)
        admin.dispose()
    with admin.connect() as conn:
        assert conn.scalar(count, {"n": name}) == 0
    admin.dispose()


def test_quarantined_rows_are_recorded_in_batches_and_replaced_on_retry(engine: Engine) -> None:
    """More rows than one INSERT takes (records.QUARANTINE_BATCH_ROWS), every value as given: text and number
    ids, a missing id, NaN and infinity as null (jsonb has neither), labelled or not; a retry replaces them."""
    snapshot = Snapshot("c" * 64, "/nowhere/c.parquet", 3, WATERMARK.isoformat(), "public.patient_records", "SELECT 1")
    rows = [{"snapshot_hash": snapshot.snapshot_hash, "row_number": n, "source_id": [f"p-{n}", n, None][n % 3],
             "reasons": [{"code": "out_of_range", "column": "bmi", "value": n / 7}],
             "original": {"bmi": [float("nan"), float("inf"), n / 7][n % 3], "note": "x'y\"z"},
             "labelled": n % 2 == 0} for n in range(records.QUARANTINE_BATCH_ROWS * 2 + 5)]
    with engine.begin() as conn:
        records.start_run(conn, DEFAULT_MODEL, "run-q", "test", WATERMARK, {})
        records.record_snapshot(conn, snapshot, "run-q")
        records.record_quarantine(conn, "run-q", rows)
        records.record_quarantine(conn, "run-q", rows)  # a retried task
    with engine.connect() as conn:
        stored = conn.execute(sa.text("""
            SELECT row_number, source_id, reasons, original, labelled FROM pipeline.quarantine
             WHERE run_id = 'run-q' ORDER BY row_number""")).all()
    assert len(stored) == len(rows)
    for n in (0, 1, 2, len(rows) - 1):
        assert tuple(stored[n]) == (n, [f"p-{n}", str(n), None][n % 3],
                                    [{"code": "out_of_range", "column": "bmi", "value": n / 7}],
                                    {"bmi": [None, None, n / 7][n % 3], "note": "x'y\"z"}, n % 2 == 0)
