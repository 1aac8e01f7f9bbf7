"""Row-level data quality: normalise, cast and classify raw rows with real Great Expectations.

No database: the raw rows are the demo records in the shape the source table holds them.
Great Expectations takes seconds to import and to validate, so the hand-made faulty batch is
classified once per module and shared.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import demo, quality
from pipeline.config import DatasetContract
from pipeline.quality import REASON_CODES, ROW_COLUMN
from pipeline.validate import load_suite

KNOWN_CODES = set(REASON_CODES.values())

# position in the demo records -> (column, value written there, reasons expected as (code, column))
FAULTS: dict[int, tuple[str, Any, list[tuple[str, str]]]] = {
    10: ("patient_id", 12, [("duplicate_id", "patient_id")]),  # row 11 already has patient_id 12
    11: ("patient_id", 12, [("duplicate_id", "patient_id")]),
    20: ("sex", "Male", [("unknown_category", "sex")]),  # ambiguous: never guessed to be M
    30: ("bmi", 500.0, [("out_of_range", "bmi")]),
    40: ("sex", None, [("missing_required", "sex")]),
    50: ("visit_date", None, [("missing_required", "visit_date")]),
    60: ("birth_date", "visit + 30 days", [("impossible_dates", "visit_date/birth_date")]),
    70: ("bmi", "abc", [("wrong_type", "bmi")]),
    # messy and broken: normalised, yet quarantined for its bmi, keeping the original sex
    80: ("bmi", 5.0, [("out_of_range", "bmi")]),
}
MESSY = {0: " f ", 1: "m", 80: " m "}  # position -> sex as typed; each has one obvious meaning


@pytest.fixture(scope="module")
def suite(contract: DatasetContract) -> dict[str, Any]:
    return load_suite(contract.expectation_suite)


@pytest.fixture(scope="module")
def raw_records() -> pd.DataFrame:
    """The demo study as the source table holds it: dates as date objects, sex as text."""
    return demo.demo_records()


@pytest.fixture(scope="module")
def faulty_frame(raw_records: pd.DataFrame) -> pd.DataFrame:
    """The demo records with one row per fault kind, and a few messy but fixable ones."""
    frame = raw_records.copy()
    for column in ("bmi", "sex", "birth_date", "visit_date"):
        frame[column] = frame[column].astype(object)  # room for a value of the wrong type
    for position, (column, value, _) in FAULTS.items():
        if value == "visit + 30 days":
            value = frame.at[position, "visit_date"] + pd.Timedelta(days=30)
        frame.at[position, column] = value
    for position, sex in MESSY.items():
        frame.at[position, "sex"] = sex
    return frame


@pytest.fixture(scope="module")
def classified(faulty_frame: pd.DataFrame, contract: DatasetContract, suite: dict[str, Any]) -> quality.QualityResult:
    return quality.classify_rows(faulty_frame, contract, suite)


def reasons_by_position(result: quality.QualityResult) -> dict[int, list[tuple[str, str]]]:
    return {p: sorted((r["code"], r["column"]) for r in reasons) for p, reasons in result.reasons.items()}


# --- normalise -----------------------------------------------------------------------------------


def test_normalise_strips_spaces_and_fixes_letter_case(faulty_frame: pd.DataFrame, contract: DatasetContract,
                                                       suite: dict[str, Any]) -> None:
    normalised, records = quality.normalise(faulty_frame, contract, suite)

    ids = faulty_frame["patient_id"]
    assert records == [
        {"column": "sex", "rule": "strip_spaces", "rows": 2, "sample_ids": [int(ids[0]), int(ids[80])]},
        {"column": "sex", "rule": "letter_case", "rows": 3, "sample_ids": [int(ids[0]), int(ids[1]), int(ids[80])]},
    ]
    assert list(normalised.loc[[0, 1, 80], "sex"]) == ["F", "M", "M"]
    assert normalised.at[20, "sex"] == "Male"
    assert faulty_frame.at[0, "sex"] == " f "  # the input is not changed in place


def test_normalise_leaves_clean_rows_alone(raw_records: pd.DataFrame, contract: DatasetContract,
                                           suite: dict[str, Any]) -> None:
    normalised, records = quality.normalise(raw_records, contract, suite)
    assert records == []
    assert list(normalised["sex"]) == list(raw_records["sex"])


def test_ambiguous_category_is_quarantined_not_guessed(classified: quality.QualityResult,
                                                       faulty_frame: pd.DataFrame) -> None:
    male_id = int(faulty_frame.at[20, "patient_id"])
    assert all(male_id not in n["sample_ids"] for n in classified.normalisations)
    assert classified.reasons[20] == [{"code": "unknown_category", "column": "sex",
                                       "rule": "expect_column_values_to_be_in_set", "value": "Male"}]


# --- classify_rows on one row per fault kind -----------------------------------------------------


def test_each_faulty_row_gets_exactly_its_reasons(classified: quality.QualityResult) -> None:
    assert reasons_by_position(classified) == {p: expected for p, (_, _, expected) in FAULTS.items()}
    assert sorted(classified.quarantined[ROW_COLUMN]) == sorted(FAULTS)
    assert classified.schema_failures == []


def test_reason_values_name_what_was_wrong(classified: quality.QualityResult) -> None:
    values = {p: [r["value"] for r in reasons] for p, reasons in classified.reasons.items()}
    assert values[30] == ["500.0"]
    assert values[70] == ["abc"]
    assert values[40] == [None] and values[50] == [None]
    assert values[10] == values[11] == ["12"]
    assert classified.reasons[70][0]["rule"] == "cast to float"


def test_every_other_row_is_valid_and_counts_reconcile(classified: quality.QualityResult,
                                                       raw_records: pd.DataFrame) -> None:
    classified.check_reconciles()
    assert classified.rows_read == len(raw_records) == len(classified.valid) + len(classified.quarantined)
    expected_valid = raw_records.drop(index=list(FAULTS))["patient_id"]
    assert list(classified.valid["patient_id"]) == list(expected_valid)
    assert classified.reason_counts() == {"duplicate_id": 2, "impossible_dates": 1, "missing_required": 2,
                                          "out_of_range": 2, "unknown_category": 1, "wrong_type": 1}


def test_valid_rows_are_typed_and_normalised(classified: quality.QualityResult, raw_records: pd.DataFrame,
                                             contract: DatasetContract) -> None:
    valid = classified.valid
    assert list(valid.columns) == contract.columns()
    assert valid["bmi"].dtype == "float64" and str(valid["patient_id"].dtype) == "Int64"
    assert str(valid["birth_date"].dtype) == "datetime64[us]"
    by_id = valid.set_index("patient_id")
    assert by_id.at[int(raw_records.at[0, "patient_id"]), "sex"] == "F"
    assert by_id.at[int(raw_records.at[1, "patient_id"]), "sex"] == "M"
    assert set(valid["sex"]) == {"F", "M"}


def test_check_reconciles_fails_when_a_row_goes_missing(classified: quality.QualityResult) -> None:
    broken = quality.QualityResult(classified.rows_read + 1, classified.valid, classified.quarantined,
                                   classified.reasons, classified.normalisations, classified.gx_result)
    with pytest.raises(quality.QualityError, match=f"read {classified.rows_read + 1}"):
        broken.check_reconciles()


# --- quarantine_records, failure_summary, render_report ------------------------------------------


def test_quarantine_records_keep_the_original_values(classified: quality.QualityResult,
                                                     faulty_frame: pd.DataFrame) -> None:
    records = {r["row_number"]: r for r in quality.quarantine_records(classified, "patient_id")}
    assert sorted(records) == sorted(FAULTS)
    messy = records[80]
    assert messy["original"]["sex"] == " m "  # before normalisation
    assert messy["original"]["bmi"] == 5.0
    assert messy["source_id"] == str(faulty_frame.at[80, "patient_id"])
    assert messy["reasons"] == classified.reasons[80]
    assert records[70]["original"]["bmi"] == "abc"
    assert records[20]["original"]["sex"] == "Male"
    assert records[40]["original"]["sex"] is None
    assert records[50]["original"]["visit_date"] is None
    wrong_dates = records[60]["original"]
    assert date.fromisoformat(wrong_dates["birth_date"]) > date.fromisoformat(wrong_dates["visit_date"])
    assert ROW_COLUMN not in messy["original"]


def test_failure_summary_groups_rows_by_rule_and_column(classified: quality.QualityResult) -> None:
    summary = {(f["expectation"], f["column"]): f for f in quality.failure_summary(classified, "patient_id")}
    assert summary[("expect_column_values_to_be_unique", "patient_id")]["unexpected_count"] == 2
    assert summary[("expect_column_values_to_be_between", "bmi")]["unexpected_count"] == 2
    assert summary[("cast to float", "bmi")]["unexpected_count"] == 1
    assert sum(f["unexpected_count"] for f in summary.values()) == len(FAULTS)


def test_failure_summary_sample_ids_keep_integer_ids(classified: quality.QualityResult,
                                                     faulty_frame: pd.DataFrame) -> None:
    summary = {(f["expectation"], f["column"]): f for f in quality.failure_summary(classified, "patient_id")}
    assert summary[("expect_column_values_to_be_in_set", "sex")]["sample_ids"] == [
        int(faulty_frame.at[20, "patient_id"])]


def test_render_report_shows_counts_reasons_and_quarantined_ids(classified: quality.QualityResult,
                                                                contract: DatasetContract,
                                                                faulty_frame: pd.DataFrame) -> None:
    page = quality.render_report(classified, contract, "Validation <run 1>")

    assert "<title>Validation &lt;run 1&gt;</title>" in page
    for label, count in (("rows read", classified.rows_read), ("valid", len(classified.valid)),
                         ("quarantined", len(classified.quarantined))):
        assert f"<td>{label}</td><td>{count}</td>" in page
    for code, count in classified.reason_counts().items():
        assert f"<td>{code}</td><td>{count}</td>" in page
    for position in FAULTS:
        assert f"<tr><td>{faulty_frame.at[position, 'patient_id']}</td>" in page
    assert "unknown_category(sex=Male)" in page and "wrong_type(bmi=abc)" in page
    assert "<td>sex</td><td>letter_case</td><td>3</td>" in page


# --- rows whose id itself is broken (no GX needed) -------------------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("bad_id", [1.5, 1e30])
def test_non_integral_id_is_quarantined_as_wrong_type(raw_records: pd.DataFrame, contract: DatasetContract,
                                                      bad_id: float) -> None:
    frame = raw_records.head(5).copy()
    frame["patient_id"] = frame["patient_id"].astype(object)
    frame.at[2, "patient_id"] = bad_id
    frame[ROW_COLUMN] = range(len(frame))

    _, reasons = quality.coerce_types(frame, contract)

    assert [r["code"] for r in reasons[2]] == ["wrong_type"]


@pytest.mark.parametrize("bad_id", [None, float("nan"), "A-17"])
def test_normalise_survives_a_row_without_a_usable_id(raw_records: pd.DataFrame, contract: DatasetContract,
                                                      suite: dict[str, Any], bad_id: Any) -> None:
    frame = raw_records.head(5).copy()
    frame["patient_id"] = frame["patient_id"].astype(object)
    frame.at[2, "patient_id"] = bad_id
    frame.at[2, "sex"] = "f"

    normalised, records = quality.normalise(frame, contract, suite)

    assert normalised.at[2, "sex"] == "F"
    assert [(r["rule"], r["rows"]) for r in records] == [("letter_case", 1)]


# --- property: any corruption of a small batch classifies every row once --------------------------

SLICE_ROWS = 60
TEXT_GARBAGE = ("n/a", "  ")
CORRUPTIONS: dict[str, Any] = {
    "missing": None, "n/a": "n/a", "blank": "  ", "huge": 1e300, "negative": -3.5,
    "date string": "2021-03-04", "wrong case": str.lower,
}
PROPERTY_COLUMNS = [*demo.SOURCE_COLUMNS, "recorded_at"]
corruption_triples = st.lists(
    st.tuples(st.integers(0, SLICE_ROWS - 1), st.sampled_from(PROPERTY_COLUMNS), st.sampled_from(list(CORRUPTIONS))),
    min_size=1, max_size=4,
)


def corrupt(frame: pd.DataFrame, triples: list[tuple[int, str, str]]) -> tuple[pd.DataFrame, dict[tuple[int, str], str]]:
    """A copy of `frame` with each (row, column) cell corrupted; returns the last corruption per cell."""
    out, applied = frame.copy(), {}
    for row, column, name in triples:
        out[column] = out[column].astype(object)
        corruption = CORRUPTIONS[name]
        old = out.at[row, column]
        out.at[row, column] = (corruption(old) if isinstance(old, str) else old) if callable(corruption) else corruption
        applied[(row, column)] = name
    return out, applied


def assert_rows_meet_the_suite(valid: pd.DataFrame, suite: dict[str, Any]) -> None:
    """Every rule of the suite, checked with plain pandas on the valid rows."""
    for expectation in suite["expectations"]:
        kind, kwargs = expectation["type"], expectation["kwargs"]
        column = valid[kwargs["column"]] if "column" in kwargs else None
        if kind == "expect_column_values_to_not_be_null":
            assert column.notna().all(), kwargs
        elif kind == "expect_column_values_to_be_unique":
            assert column.is_unique, kwargs
        elif kind == "expect_column_values_to_be_in_set":
            assert column.dropna().isin(kwargs["value_set"]).all(), kwargs
        elif kind == "expect_column_values_to_be_between":
            assert column.dropna().between(kwargs["min_value"], kwargs["max_value"]).all(), kwargs
        elif kind == "expect_column_pair_values_a_to_be_greater_than_b":
            pair = valid[[kwargs["column_A"], kwargs["column_B"]]].dropna()
            assert (pair[kwargs["column_A"]] > pair[kwargs["column_B"]]).all(), kwargs


@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(triples=corruption_triples)
def test_any_corruption_classifies_every_row_exactly_once(raw_records: pd.DataFrame, contract: DatasetContract,
                                                          suite: dict[str, Any],
                                                          triples: list[tuple[int, str, str]]) -> None:
    batch = raw_records.head(SLICE_ROWS).reset_index(drop=True)
    frame, applied = corrupt(batch, triples)

    result = quality.classify_rows(frame, contract, suite)

    result.check_reconciles()
    position_of = {int(i): p for p, i in enumerate(batch["patient_id"])}
    valid_positions = {position_of[int(i)] for i in result.valid["patient_id"]}
    quarantined_positions = set(result.quarantined[ROW_COLUMN])
    assert valid_positions.isdisjoint(quarantined_positions)
    assert valid_positions | quarantined_positions == set(range(SLICE_ROWS))
    assert len(result.valid) + len(result.quarantined) == result.rows_read == SLICE_ROWS
    assert set(result.reasons) == quarantined_positions
    assert all(reasons and {r["code"] for r in reasons} <= KNOWN_CODES for reasons in result.reasons.values())
    assert_rows_meet_the_suite(result.valid, suite)
    garbage = {row for (row, _), name in applied.items() if CORRUPTIONS[name] in TEXT_GARBAGE}
    assert garbage <= quarantined_positions  # text that means nothing never passes as a value
    required = {e["kwargs"]["column"] for e in suite["expectations"]
                if e["type"] == "expect_column_values_to_not_be_null"}
    emptied = {row for (row, column), name in applied.items() if name == "missing" and column in required}
    assert emptied <= quarantined_positions
    untouched = set(range(SLICE_ROWS)) - {row for row, _ in applied}
    assert untouched <= valid_positions
