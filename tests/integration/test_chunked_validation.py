"""Streamed validation equals whole-frame validation on snapshots read for real from PostgreSQL.

The faults `test_bad_values.py` writes one at a time (infinite and out-of-range dates, NaN, a timestamp
before any watermark), with messy codes, a duplicate id and rows awaiting their outcome, all in one
table: validating its snapshot 7 rows at a time stores what validating it whole stores, row for row,
with the same clean snapshot hash.
"""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import stages
from pipeline.data import chunked_quality, demo, quality
from pipeline.workspace import Workspace
from tests.integration.stage_runs import DEMO_WATERMARK, fetch, make_run
from tests.integration.test_bad_values import write_fault
from tests.unit.test_chunked_quality import assert_same, without_load_time

FAULTS = [("visit_date", "'infinity'::date", 17), ("recorded_at", "'-infinity'::timestamptz", 18),
          ("bmi", "'NaN'::float8", 19), ("birth_date", "'4713-01-01 BC'::date", 40), ("sex", "' m '", 41),
          ("sex", "'U'", 60), ("bmi", "'Infinity'::float8", 100), ("birth_date", "'1700-01-01'::date", 150),
          ("sex", "'f'", 301), ("progression_12m", "NULL", 200),
          ("progression_12m", "NULL", 201), ("sex", "'X'", 201), ("visit_date", "NULL", 202)]
# row 300 becomes the same visit as row 3 (a duplicate record, in another chunk)
COPIED = ["birth_date", "visit_date", "sex", "bmi", "bp_mean", "tc", "ldl", "hdl", "tch", "ltg", "glucose"]


@pytest.fixture
def faulty_snapshot(ws: Workspace) -> dict[str, Any]:
    demo.seed_demo(ws.engine)
    for column, literal, row_id in FAULTS:
        write_fault(ws, column, literal, row_id=row_id)
    for column in COPIED:
        write_fault(ws, column, f"(SELECT {column} FROM {demo.DEMO_TABLE} WHERE patient_id = 3)", row_id=300)
    return stages.ingest_snapshot(ws, make_run("ingested", DEMO_WATERMARK))


def test_chunks_of_the_stored_snapshots_give_the_whole_frame_verdicts(ws: Workspace,
                                                                      faulty_snapshot: dict[str, Any]) -> None:
    contract, suite = ws.config.dataset, quality_suite(ws)
    labelled, awaiting = ws.load_snapshot(faulty_snapshot["snapshot_hash"]), ws.load_snapshot(
        faulty_snapshot["unlabelled_hash"])
    whole, whole_awaiting = quality.classify_with_awaiting(labelled, awaiting, contract, suite, ws.config.quality)
    paths = [ws.snapshot_path(faulty_snapshot[key]) for key in ("snapshot_hash", "unlabelled_hash")]

    streamed = chunked_quality.classify_snapshots(paths, contract, suite, ws.config.quality, chunk_rows=7,
                                                  keys=ws.keyring)

    assert_same(whole, streamed.result, contract.id_column)
    assert_same(whole_awaiting, streamed.awaiting, contract.id_column)
    assert len(whole.reason_counts()) >= 5 and whole_awaiting.rows_read >= 2


def test_the_stage_stores_the_same_records_either_way(ws: Workspace, faulty_snapshot: dict[str, Any]) -> None:
    stages.ingest_snapshot(ws, make_run("whole", DEMO_WATERMARK))

    streamed = stages.validate_snapshot(ws, make_run("chunked", DEMO_WATERMARK), faulty_snapshot["snapshot_hash"],
                                        chunk_rows=7)
    whole = stages.validate_snapshot(ws, make_run("whole", DEMO_WATERMARK), faulty_snapshot["snapshot_hash"],
                                     chunk_rows=None)

    assert {k: v for k, v in streamed.items() if k != "report_path"} == {
        k: v for k, v in whole.items() if k != "report_path"}  # the clean snapshot's hash among them
    stored = {r["run_id"]: r for r in fetch(ws, "SELECT * FROM pipeline.validation_results")}
    keys = set(stored["whole"]) - {"run_id", "id", "validated_at", "created_at", "result", "report_path", "key_ref"}
    assert {k: stored["chunked"][k] for k in keys} == {k: stored["whole"][k] for k in keys}
    assert without_load_time(stored["chunked"]["result"]) == without_load_time(stored["whole"]["result"])
    quarantined = "SELECT * FROM pipeline.quarantine WHERE run_id = :r ORDER BY labelled, row_number"
    fields = ("row_number", "source_id", "reasons", "original", "labelled")  # as opened: sealed under each run's key
    assert [{k: r[k] for k in fields} for r in fetch(ws, quarantined, r="chunked")] == [
        {k: r[k] for k in fields} for r in fetch(ws, quarantined, r="whole")]


def quality_suite(ws: Workspace) -> dict[str, Any]:
    from pipeline.data.validate import load_suite

    return load_suite(ws.config.dataset.expectation_suite)
