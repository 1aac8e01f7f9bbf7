"""Streamed validation equals whole-frame validation on edge-case data.

`chunked_quality.classify_chunks` at 7 rows a chunk against `quality.classify_with_awaiting` on the
whole frame, on the tables `test_quality.py` judges: every row's verdict and reasons, the counts, the
normalisations, Great Expectations' stored result (statistics included), the report and the clean
snapshot's bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.contract.config import DatasetContract, QualityPolicy
from pipeline.data import chunked_quality, ingest, quality
from tests.unit.conftest import declaring
from tests.unit.test_quality import (
    GENERIC,
    SLICE_ROWS,
    TABLE_LEVEL,
    awaiting_rows,
    corrupt,
    corruption_triples,
    with_faults,
)

CHUNK = 7  # rows per chunk: every table here spans several, with faults on both sides of a boundary


@pytest.fixture(scope="module")
def all_declared(contract: DatasetContract) -> DatasetContract:
    formats = {f.name: "%Y-%m-%d" if f.type == "date" else "." for f in contract.features if f.type != "text"}
    return declaring(contract, formats, target_decimal=".")


def without_load_time(gx_result: dict[str, Any]) -> dict[str, Any]:
    """GX's result but the wall-clock time it stamps on the batch, which no two runs share."""
    meta = dict(gx_result.get("meta") or {})
    if "batch_markers" in meta:
        meta["batch_markers"] = {k: v for k, v in meta["batch_markers"].items() if k != "ge_load_time"}
    return {**gx_result, "meta": meta} if gx_result else gx_result


def assert_same(whole: quality.QualityResult, streamed: quality.QualityResult, id_column: str) -> None:
    assert streamed.rows_read == whole.rows_read
    assert streamed.valid_count == whole.valid_count
    assert list(streamed.reasons.items()) == list(whole.reasons.items())  # reasons, and in the same order
    assert streamed.reason_counts() == whole.reason_counts()
    pd.testing.assert_frame_equal(streamed.quarantined, whole.quarantined)
    assert streamed.normalisations == whole.normalisations
    assert streamed.schema_failures == whole.schema_failures
    assert without_load_time(streamed.gx_result) == without_load_time(whole.gx_result)
    assert quality.failure_summary(streamed, id_column) == quality.failure_summary(whole, id_column)
    assert quality.quarantine_records(streamed, id_column) == quality.quarantine_records(whole, id_column)


def both_ways(labelled: pd.DataFrame, awaiting: pd.DataFrame | None, contract: DatasetContract,
              suite: dict[str, Any], policy: QualityPolicy | None = None) -> tuple[quality.QualityResult,
                                                                                   chunked_quality.Classified]:
    """Whole frame and 7-row chunks on the same rows; asserts they agree, returns both."""
    whole, whole_awaiting = quality.classify_with_awaiting(labelled, awaiting, contract, suite, policy)
    frames = [labelled] + ([awaiting] if awaiting is not None and len(awaiting) else [])
    streamed = chunked_quality.classify_chunks(chunked_quality.frame_chunks(frames, CHUNK), len(labelled), contract,
                                               suite, policy)
    assert_same(whole, streamed.result, contract.id_column)
    assert_same(whole_awaiting, streamed.awaiting, contract.id_column)
    pd.testing.assert_frame_equal(streamed.awaiting.valid, whole_awaiting.valid)
    assert (hashlib.sha256(streamed.clean).hexdigest()
            == hashlib.sha256(ingest.snapshot_bytes(whole.valid)).hexdigest())  # the clean snapshot's hash
    page = quality.render_report(whole, contract, "t", whole_awaiting, policy)
    assert quality.render_report(streamed.result, contract, "t", streamed.awaiting, policy) == page
    return whole, streamed


def test_one_row_per_fault_kind(raw_records: pd.DataFrame, text_bmi: DatasetContract,
                                suite: dict[str, Any]) -> None:
    whole, _ = both_ways(with_faults(raw_records), None, text_bmi, suite, QualityPolicy(max_quarantine_share=0.05))
    assert whole.reasons and whole.normalisations  # the table has faults and fixes for the chunks to agree on


def test_duplicates_far_apart_and_across_the_awaiting_rows(raw_records: pd.DataFrame,
                                                           text_bmi: DatasetContract,
                                                           suite: dict[str, Any]) -> None:
    labelled = raw_records.copy()
    labelled.at[3, "patient_id"] = labelled.at[len(labelled) - 2, "patient_id"]  # first and last chunk
    whole, streamed = both_ways(labelled, awaiting_rows(raw_records), text_bmi, suite)
    assert set(whole.reason_counts()) == {"duplicate_id", "duplicate_record"}  # the last: a visit awaiting too
    assert "duplicate_record" in streamed.awaiting.reason_counts()


def test_rules_of_any_family(raw_records: pd.DataFrame, contract: DatasetContract) -> None:
    frame = raw_records.head(30).copy()
    frame.at[2, "sex"], frame.at[4, "ldl"], frame.at[25, "ldl"] = "Male", frame.at[4, "tc"], frame.at[25, "tc"]
    row_local = [e for e in GENERIC if e["type"] != "expect_column_values_to_be_increasing"]
    both_ways(frame, None, contract, {"name": "generic", "expectations": row_local})


def test_a_batch_level_rule_is_not_streamed(raw_records: pd.DataFrame, contract: DatasetContract) -> None:
    for expectations in (TABLE_LEVEL, GENERIC):  # a row count, a mean, a row order: only the whole batch knows
        assert not chunked_quality.streamable({"name": "t", "expectations": expectations})
        with pytest.raises(chunked_quality.NotStreamable):
            chunked_quality.classify_chunks(chunked_quality.frame_chunks([raw_records], CHUNK), len(raw_records),
                                            contract, {"name": "t", "expectations": expectations})


def test_columns_the_suite_expects_but_the_batch_lacks(raw_records: pd.DataFrame,
                                                       contract: DatasetContract, suite: dict[str, Any]) -> None:
    exact = {**suite, "expectations": [*suite["expectations"], {"type": "expect_table_columns_to_match_set", "kwargs": {
        "column_set": ["patient_id", "bmi"], "exact_match": True}}]}
    whole, _ = both_ways(raw_records.head(40), None, contract, exact)
    assert whole.schema_failures


@settings(max_examples=10, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(triples=corruption_triples, copies=st.lists(st.tuples(st.integers(0, SLICE_ROWS - 1),
                                                              st.integers(0, SLICE_ROWS - 1)), max_size=3))
def test_any_corruption_streams_to_the_whole_frame_verdicts(raw_records: pd.DataFrame,
                                                            all_declared: DatasetContract,
                                                            suite: dict[str, Any],
                                                            triples: list[tuple[int, str, str]],
                                                            copies: list[tuple[int, int]]) -> None:
    frame, _ = corrupt(raw_records.head(SLICE_ROWS).reset_index(drop=True), triples)
    for source, target in copies:  # whole rows copied: duplicate ids and records, in any chunk
        frame.iloc[target] = frame.iloc[source]
    both_ways(frame.iloc[:45].reset_index(drop=True), frame.iloc[45:], all_declared, suite)
