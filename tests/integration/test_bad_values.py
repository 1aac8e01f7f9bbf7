"""Values no contract type can carry, and dates no patient can have, read for real from PostgreSQL.

Each fault is written into a real row of the source table; ingest and validation run as the DAG runs
them. The row is quarantined with its reason and its column named, every other row still validates,
no row is lost, and the raw snapshot keeps the value as the database held it.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from pipeline import stages
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.data import demo, ingest
from pipeline.workspace import Workspace
from tests.integration.stage_runs import DEMO_WATERMARK, LATER_WATERMARK, fetch, make_run, stored_bytes, stored_text

FAULTY_ID = 17
STUDY_ROWS = 442


def write_fault(ws: Workspace, column: str, literal: str, table: str = demo.DEMO_TABLE,
                id_column: str = "patient_id", row_id: int = FAULTY_ID) -> None:
    """Set one cell of one row to a SQL literal (e.g. 'infinity'::date), as a source system could."""
    with ws.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {table} SET {column} = {literal} WHERE {id_column} = :i"), {"i": row_id})


def validate(ws: Workspace, run_id: str, watermark: datetime = DEMO_WATERMARK) -> dict[str, Any]:
    run = make_run(run_id, watermark)
    snapshot = stages.ingest_snapshot(ws, run)
    checked = stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])
    store = ws.settings.artifact_dir  # paths are the store's own, relative to it or absolute
    return {**checked, "raw_path": store / snapshot["path"], "report_path": store / checked["report_path"],
            "report": stored_text(ws, store / checked["report_path"]), "raw": stored_bytes(ws, store / snapshot["path"])}


def quarantine_record(ws: Workspace, run_id: str) -> dict[str, Any]:
    [record] = fetch(ws, "SELECT * FROM pipeline.quarantine WHERE run_id = :r", r=run_id)
    return record


def assert_one_quarantined(checked: dict[str, Any], code: str, rows: int = STUDY_ROWS) -> None:
    assert (checked["rows_read"], checked["rows_valid"], checked["rows_quarantined"]) == (rows, rows - 1, 1)
    assert checked["rows_read"] == checked["rows_valid"] + checked["rows_quarantined"]
    assert checked["reason_counts"] == {code: 1}
    assert f"<td>{code}</td>" in checked["report"]


# --- 1. infinite and out-of-range dates and times -------------------------------------------------

OUT_OF_RANGE = [
    ("birth_date", "'infinity'::date", "infinity"),
    ("visit_date", "'-infinity'::date", "-infinity"),
    ("birth_date", "'4713-01-01 BC'::date", "-4712-01-01"),  # PostgreSQL's first date; Python's is year 1
    ("visit_date", "'5874897-12-31'::date", "5874897-12-31"),  # PostgreSQL's last date
    ("recorded_at", "'-infinity'::timestamptz", "-infinity"),  # before any watermark, so it is read
]


@pytest.mark.parametrize(("column", "literal", "text"), OUT_OF_RANGE, ids=[f"{c}={t}" for c, _, t in OUT_OF_RANGE])
def test_out_of_range_date_is_quarantined_naming_its_column(ws: Workspace, column: str, literal: str,
                                                            text: str) -> None:
    demo.seed_demo(ws.engine)
    write_fault(ws, column, literal)

    checked = validate(ws, "out-of-range")

    assert_one_quarantined(checked, "out_of_range_date")
    record = quarantine_record(ws, "out-of-range")
    assert int(record["source_id"]) == FAULTY_ID
    assert [(r["code"], r["column"], r["value"]) for r in record["reasons"]] == [("out_of_range_date", column, text)]
    assert record["original"][column] == text
    assert f"out_of_range_date({column}={text})" in checked["report"]
    # The raw snapshot holds the value as the driver read it from the database: never rewritten.
    raw = pq.read_table(pa.BufferReader(checked["raw"]))
    cell = raw.column(column).filter(pa.compute.equal(raw.column("patient_id"), FAULTY_ID))[0]
    kind = pa.int32() if pa.types.is_date32(cell.type) else pa.int64()
    first, last = ((ingest.FIRST_DAY, ingest.LAST_DAY) if kind == pa.int32()
                   else (ingest.FIRST_MICROSECOND, ingest.LAST_MICROSECOND))
    assert not first <= cell.cast(kind).as_py() <= last


def test_drift_read_counts_out_of_range_and_nan_rows_as_unreadable(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    write_fault(ws, "visit_date", "'infinity'::date")
    write_fault(ws, "recorded_at", "'-infinity'::timestamptz", row_id=18)
    write_fault(ws, "bmi", "'NaN'::float8", row_id=19)
    query = ingest.recorded_rows_query(ws.config.dataset, DEMO_WATERMARK)

    recent, unreadable = ingest.read_readable_rows(ws.engine, ws.config.dataset, query)

    assert unreadable == 3 and len(recent) == STUDY_ROWS - 3
    assert not {FAULTY_ID, 18, 19} & set(recent["patient_id"])
    assert recent["bmi"].dtype == "float64" and str(recent["visit_date"].dtype) == "datetime64[us]"


# --- 2. NaN and infinities in measured numbers, the target included --------------------------------

NOT_FINITE = [
    ("bmi", "'NaN'::float8", "NaN"),
    ("glucose", "'Infinity'::float8", "Infinity"),
    ("ltg", "'-Infinity'::float8", "-Infinity"),
    ("progression_12m", "'NaN'::float8", "NaN"),  # not NULL: the row is labelled, with a value no model can use
]


@pytest.mark.parametrize(("column", "literal", "text"), NOT_FINITE, ids=[f"{c}={t}" for c, _, t in NOT_FINITE])
def test_not_finite_number_is_quarantined_not_read_as_missing(ws: Workspace, column: str, literal: str,
                                                              text: str) -> None:
    demo.seed_demo(ws.engine)
    write_fault(ws, column, literal)

    # Read after the fault was written: an outcome changed now is known now (sql/009 stamps its label time),
    # so a read as of DEMO_WATERMARK would rightly show that row as awaiting its outcome.
    checked = validate(ws, "not-finite", LATER_WATERMARK)

    assert_one_quarantined(checked, "not_finite")
    record = quarantine_record(ws, "not-finite")
    assert int(record["source_id"]) == FAULTY_ID
    assert [(r["code"], r["column"], r["value"]) for r in record["reasons"]] == [("not_finite", column, text)]
    assert checked["rows_unlabelled"] == 0  # a NaN outcome is not an outcome awaited


# --- 3. dates no patient can have -----------------------------------------------------------------


def test_birth_in_1700_is_an_implausible_age(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    write_fault(ws, "birth_date", "'1700-01-01'::date")

    checked = validate(ws, "age")

    assert_one_quarantined(checked, "implausible_age")
    [reason] = quarantine_record(ws, "age")["reasons"]
    assert (reason["code"], reason["column"]) == ("implausible_age", "birth_date/visit_date")
    assert reason["value"].startswith("age 323.") and "birth_date=1700-01-01" in reason["value"]


def test_the_configured_age_bounds_reach_validation(ws: Workspace) -> None:
    """pipeline.yaml's quality.age_at_event_years is [18, 110]: a 15-year-old patient is out of it."""
    assert ws.config.quality.age_at_event_years == (18, 110)
    demo.seed_demo(ws.engine)
    write_fault(ws, "birth_date", "visit_date - interval '15 years'")

    checked = validate(ws, "young")

    assert_one_quarantined(checked, "implausible_age")
    [reason] = quarantine_record(ws, "young")["reasons"]
    assert reason["value"].startswith("age 15.")


def test_visit_in_2100_is_a_future_date(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    write_fault(ws, "visit_date", "'2100-01-01'::date")

    checked = validate(ws, "future")

    assert_one_quarantined(checked, "future_date")
    [reason] = quarantine_record(ws, "future")["reasons"]
    assert (reason["code"], reason["column"]) == ("future_date", "visit_date/recorded_at")
    assert "visit_date=2100-01-01" in reason["value"]


def test_visit_on_its_recording_day_is_not_in_the_future(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)  # recorded at 23:30 UTC: the visit's day had begun east of UTC, up to UTC+14
    write_fault(ws, "visit_date", "(recorded_at AT TIME ZONE 'UTC')::date + 1")
    write_fault(ws, "recorded_at", "date_trunc('day', recorded_at) + interval '23 hours 30 minutes'")

    checked = validate(ws, "same-day")

    assert (checked["rows_read"], checked["rows_quarantined"]) == (STUDY_ROWS, 0)


# --- the clinic's export: the same checks by role, under its own column names -----------------------


def plain_clinic_ids(count: int) -> list[int]:
    """Labelled visits of the clinic's export that carry no fault of their own (and no copy)."""
    export = demo.clinic_export()
    key = [c for c in export.columns if c not in ("visit_id", "outcome_score", "entered_at")]
    plain = export[export["outcome_score"].notna() & ~export.duplicated(key, keep=False)
                   & export["gender"].isin(["F", "M"]) & (export["seen_on"] != demo.CLINIC_IMPOSSIBLE_DATE)]
    return [int(i) for i in plain["visit_id"].head(count)]


def test_clinic_export_gets_the_checks_by_role(ws: Workspace, settings: Settings) -> None:
    demo.seed_clinic_export(ws.engine)
    clinic = Workspace.open(dataclasses.replace(settings, config_path=PROJECT_ROOT / "examples/clinic/clinic.yaml"))
    faults = [("dob", "'1/01/1700'", ("implausible_age", "dob/seen_on")),
              ("seen_on", "'1/01/2100'", ("future_date", "seen_on/entered_at")),
              ("dob", "'1/01/0000'", ("wrong_type", "dob")),  # year 0 is no date under %d/%m/%Y
              ("dob", "'1/01/99999'", ("wrong_type", "dob")),  # nor is a five-digit year
              ("body_mass", "'NaN'::float8", ("not_finite", "body_mass"))]
    ids = plain_clinic_ids(len(faults))
    try:
        for visit_id, (column, literal, _) in zip(ids, faults, strict=True):
            write_fault(clinic, column, literal, table=demo.CLINIC_TABLE, id_column="visit_id", row_id=visit_id)
        checked = validate(clinic, "clinic-bad")
        rows = fetch(clinic, "SELECT * FROM pipeline.quarantine WHERE run_id = 'clinic-bad'")  # opened
    finally:
        clinic.engine.dispose()

    assert checked["rows_read"] == checked["rows_valid"] + checked["rows_quarantined"] == 444
    assert checked["rows_quarantined"] == 8 + len(faults)  # the export's own 8 faulty rows, and these
    reasons = {int(r["source_id"]): [(x["code"], x["column"]) for x in r["reasons"]] for r in rows}
    for visit_id, (_, _, expected) in zip(ids, faults, strict=True):
        assert reasons[visit_id] == [expected]
