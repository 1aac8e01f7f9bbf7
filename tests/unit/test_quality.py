"""Row-level data quality: normalise, cast and classify raw rows with real Great Expectations.

No database: the raw rows are the demo records in the shape the source table holds them.
Great Expectations takes seconds to import and to validate, so the hand-made faulty batch is
classified once per module and shared.
"""

from __future__ import annotations

import dataclasses
import html
import re
from datetime import date
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.contract.config import DatasetContract
from pipeline.data import demo, quality
from pipeline.data.casting import FormatError
from pipeline.data.quality import REASON_CODES, ROW_COLUMN
from pipeline.data.validate import column_of, describe_failure, load_suite
from tests.unit.conftest import declaring

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
def faulty_frame(raw_records: pd.DataFrame) -> pd.DataFrame:
    return with_faults(raw_records)


def with_faults(raw_records: pd.DataFrame) -> pd.DataFrame:
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
def classified(faulty_frame: pd.DataFrame, text_bmi: DatasetContract, suite: dict[str, Any]) -> quality.QualityResult:
    return quality.classify_rows(faulty_frame, text_bmi, suite)


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
    assert classified.reasons[70][0]["rule"] == "cast to float with decimal mark '.'"


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
    assert summary[("cast to float with decimal mark '.'", "bmi")]["unexpected_count"] == 1
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
# Text can only reach a column that declares how to read it (config refuses the others); the id and the
# timestamp column have no format to declare, so they get typed corruptions only.
TEXT_CORRUPTIONS = {"n/a", "blank", "date string"}
UNDECLARED = {"patient_id", "recorded_at"}
corruption_triples = st.lists(
    st.tuples(st.integers(0, SLICE_ROWS - 1), st.sampled_from(PROPERTY_COLUMNS), st.sampled_from(list(CORRUPTIONS)))
    .filter(lambda t: not (t[1] in UNDECLARED and t[2] in TEXT_CORRUPTIONS)),
    min_size=1, max_size=4,
)


@pytest.fixture(scope="module")
def all_declared(contract: DatasetContract) -> DatasetContract:
    """Every feature and the target declare the format their text would use."""
    formats = {f.name: "%Y-%m-%d" if f.type == "date" else "." for f in contract.features if f.type != "text"}
    return declaring(contract, formats, target_decimal=".")


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
        elif kind == "expect_compound_columns_to_be_unique":
            assert not valid[kwargs["column_list"]].dropna(how="all").duplicated().any(), kwargs


@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(triples=corruption_triples)
def test_any_corruption_classifies_every_row_exactly_once(raw_records: pd.DataFrame, all_declared: DatasetContract,
                                                          suite: dict[str, Any],
                                                          triples: list[tuple[int, str, str]]) -> None:
    batch = raw_records.head(SLICE_ROWS).reset_index(drop=True)
    frame, applied = corrupt(batch, triples)

    result = quality.classify_rows(frame, all_declared, suite)

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


# --- text dates are read by their declared format only ---------------------------------------------


AMBIGUOUS = {3: "3/01/1970", 4: "13/01/1970"}  # position -> birth date as typed in the source


@pytest.mark.parametrize(("fmt", "landed", "refused"), [
    ("%d/%m/%Y", {3: date(1970, 1, 3), 4: date(1970, 1, 13)}, {}),
    ("%m/%d/%Y", {3: date(1970, 3, 1)}, {4: "13/01/1970"}),
])
def test_text_dates_land_as_declared_or_quarantine_as_wrong_type(
        raw_records: pd.DataFrame, contract: DatasetContract, suite: dict[str, Any],
        fmt: str, landed: dict[int, date], refused: dict[int, str]) -> None:
    frame = raw_records.head(20).copy()
    frame["birth_date"] = [d.strftime(fmt) for d in frame["birth_date"]]
    for position, text in AMBIGUOUS.items():
        frame.at[position, "birth_date"] = text

    result = quality.classify_rows(frame, declaring(contract, {"birth_date": fmt}), suite)

    assert result.reasons == {p: [{"code": "wrong_type", "column": "birth_date", "value": text,
                                   "rule": f"cast to date with format {fmt}"}] for p, text in refused.items()}
    births = dict(zip(result.valid["patient_id"], result.valid["birth_date"].dt.date, strict=True))
    assert {p: births[int(frame.at[p, "patient_id"])] for p in landed} == landed
    untouched = [p for p in range(20) if p not in AMBIGUOUS]
    assert [births[int(frame.at[p, "patient_id"])] for p in untouched] == list(raw_records["birth_date"][untouched])


def test_text_dates_without_a_declared_format_fail_the_batch(raw_records: pd.DataFrame, contract: DatasetContract,
                                                              suite: dict[str, Any]) -> None:
    frame = raw_records.head(5).copy()
    frame["visit_date"] = [d.strftime("%d/%m/%Y") for d in frame["visit_date"]]
    with pytest.raises(FormatError, match="column 'visit_date'"):
        quality.classify_rows(frame, contract, suite)


# --- numbers as text, with either decimal mark -----------------------------------------------------


@pytest.mark.parametrize(("mark", "other"), [(".", ","), (",", ".")])
def test_numbers_as_text_follow_the_declared_mark(raw_records: pd.DataFrame, contract: DatasetContract,
                                                  suite: dict[str, Any], mark: str, other: str) -> None:
    frame = raw_records.head(20).copy()
    frame["bmi"] = [repr(v).replace(".", mark) for v in frame["bmi"]]
    frame.at[5, "bmi"] = f"27{other}5"       # the other mark
    frame.at[6, "bmi"] = f"1{other}027{mark}5"  # a thousands separator: never read
    frame.at[7, "bmi"] = "NaN"

    result = quality.classify_rows(frame, declaring(contract, {"bmi": mark}), suite)

    rule = f"cast to float with decimal mark '{mark}'"
    assert {p: [(r["code"], r["rule"], r["value"]) for r in reasons] for p, reasons in result.reasons.items()} == {
        5: [("wrong_type", rule, f"27{other}5")], 6: [("wrong_type", rule, f"1{other}027{mark}5")],
        7: [("wrong_type", rule, "NaN")]}
    kept = raw_records.head(20).drop(index=[5, 6, 7])
    assert result.valid["bmi"].tolist() == kept["bmi"].tolist()


# --- duplicate records: the same visit under two ids ------------------------------------------------

KEY = ["birth_date", "visit_date", "sex", "bmi", "bp_mean", "tc", "ldl", "hdl", "tch", "ltg", "glucose"]


def test_shipped_suite_quarantines_every_copy_of_a_duplicate_record(raw_records: pd.DataFrame,
                                                                   contract: DatasetContract,
                                                                   suite: dict[str, Any]) -> None:
    copy = raw_records.iloc[[7]].assign(patient_id=int(raw_records["patient_id"].max()) + 1,
                                        progression_12m=raw_records.at[7, "progression_12m"] + 40)
    frame = pd.concat([raw_records, copy], ignore_index=True)
    last = len(frame) - 1

    result = quality.classify_rows(frame, contract, suite)

    assert result.schema_failures == []
    assert sorted(result.reasons) == [7, last]
    [reason] = result.reasons[7]
    assert result.reasons[last] == [reason]
    assert (reason["code"], reason["column"], reason["rule"]) == (
        "duplicate_record", "+".join(KEY), "expect_compound_columns_to_be_unique")
    assert reason["value"].startswith(f"birth_date={pd.Timestamp(raw_records.at[7, 'birth_date'])}, visit_date=")
    assert f"sex={raw_records.at[7, 'sex']}" in reason["value"]
    assert len(result.valid) == len(raw_records) - 1
    assert result.reason_counts() == {"duplicate_record": 2}


def test_shipped_suite_keys_duplicates_on_the_visit_not_the_id_or_outcome(suite: dict[str, Any]) -> None:
    [compound] = [e["kwargs"] for e in suite["expectations"] if e["type"] == "expect_compound_columns_to_be_unique"]
    assert compound["column_list"] == KEY


def test_demo_data_has_no_duplicate_records(raw_records: pd.DataFrame) -> None:
    arrivals = [demo.arrival_records(500, seed) for seed in (3, 5, 7, 11)]
    assert not raw_records.duplicated(KEY).any()
    assert not pd.concat([raw_records[KEY], *(a[KEY] for a in arrivals)]).duplicated().any()


# --- any row-level expectation gives row-level reasons; table-level ones judge the batch --------------


GENERIC = [
    {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "sex", "regex": "^[FM]$"}},
    {"type": "expect_column_value_lengths_to_be_between", "kwargs": {"column": "sex", "min_value": 1, "max_value": 1}},
    {"type": "expect_select_column_values_to_be_unique_within_record", "kwargs": {"column_list": ["tc", "ldl"]}},
    {"type": "expect_column_values_to_be_increasing", "kwargs": {"column": "visit_date"}},
]


@pytest.fixture(scope="module")
def generic(raw_records: pd.DataFrame, contract: DatasetContract) -> tuple[pd.DataFrame, quality.QualityResult]:
    frame = raw_records.head(12).copy()
    frame.at[2, "sex"] = "Male"
    frame.at[4, "ldl"] = frame.at[4, "tc"]
    frame.at[6, "visit_date"] = frame.at[5, "visit_date"] - pd.Timedelta(days=1)
    return frame, quality.classify_rows(frame, contract, {"name": "generic", "expectations": GENERIC})


def test_any_row_level_expectation_gives_its_rows_a_reason(generic: tuple[pd.DataFrame, quality.QualityResult]) -> None:
    frame, result = generic
    tc = frame.at[4, "tc"]
    assert result.schema_failures == []
    assert {p: sorted((r["code"], r["column"], r["rule"], r["value"]) for r in reasons)
            for p, reasons in result.reasons.items()} == {
        2: [("bad_format", "sex", "expect_column_values_to_match_regex", "Male"),
            ("bad_length", "sex", "expect_column_value_lengths_to_be_between", "Male")],
        4: [("not_select_column_values_to_be_unique_within_record", "tc+ldl",
             "expect_select_column_values_to_be_unique_within_record", f"tc={tc}, ldl={tc}")],
        6: [("not_column_values_to_be_increasing", "visit_date", "expect_column_values_to_be_increasing",
             str(pd.Timestamp(frame.at[6, "visit_date"])))],
    }
    assert len(result.valid) == 9


@pytest.mark.parametrize(("expectation", "code"), [
    ("expect_column_values_to_be_in_set", "unknown_category"),
    ("expect_compound_columns_to_be_unique", "duplicate_record"),
    ("expect_column_values_to_not_match_regex_list", "bad_format"),
    ("expect_column_values_to_match_strftime_format", "bad_format"),
    ("expect_column_value_lengths_to_equal", "bad_length"),
    ("expect_column_pair_values_to_be_equal", "not_column_pair_values_to_be_equal"),
])
def test_reason_codes_are_readable_or_derived_from_the_expectation(expectation: str, code: str) -> None:
    assert quality.reason_code(expectation) == code


TABLE_LEVEL = [
    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1000, "max_value": 5000}},
    {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "bmi", "min_value": 40, "max_value": 60}},
    {"type": "expect_table_columns_to_match_set", "kwargs": {"column_set": ["patient_id", "bmi"], "exact_match": True}},
]


@pytest.fixture(scope="module")
def table_level(raw_records: pd.DataFrame, contract: DatasetContract) -> quality.QualityResult:
    return quality.classify_rows(raw_records.head(30), contract, {"name": "table", "expectations": TABLE_LEVEL})


def test_table_level_failures_judge_the_batch_not_a_row(table_level: quality.QualityResult) -> None:
    assert table_level.reasons == {} and len(table_level.valid) == 30
    assert sorted((f["expectation"], f["column"]) for f in table_level.schema_failures) == [
        ("expect_column_mean_to_be_between", "bmi"), ("expect_table_columns_to_match_set", "(table)"),
        ("expect_table_row_count_to_be_between", "(table)")]


def test_a_batch_failure_names_expectation_columns_observed_and_bound(table_level: quality.QualityResult,
                                                                      raw_records: pd.DataFrame,
                                                                      contract: DatasetContract) -> None:
    lines = {f["expectation"]: describe_failure(f) for f in quality.failure_summary(table_level, "patient_id")}
    mean = float(raw_records.head(30)["bmi"].mean())
    assert lines["expect_table_row_count_to_be_between"] == (
        "expect_table_row_count_to_be_between on (table): observed 30; expected min_value=1000, max_value=5000")
    assert lines["expect_column_mean_to_be_between"] == (
        f"expect_column_mean_to_be_between on bmi: observed {mean!r}; expected min_value=40.0, max_value=60.0")
    columns_line = lines["expect_table_columns_to_match_set"]
    assert columns_line.startswith("expect_table_columns_to_match_set on (table): observed [")
    assert "'unexpected': [" in columns_line
    assert columns_line.endswith("expected column_set=['patient_id', 'bmi']")  # GX drops exact_match: its default
    assert ROW_COLUMN not in columns_line  # GX sees the batch's own columns, not the row position
    page = quality.render_report(table_level, contract, "Validation")
    assert all(html.escape(line) in page for line in lines.values())


def test_an_erroring_expectation_judges_the_batch_with_its_error(raw_records: pd.DataFrame,
                                                                 contract: DatasetContract) -> None:
    broken = {"name": "broken", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "no_such_column", "min_value": 1}}]}
    result = quality.classify_rows(raw_records.head(5), contract, broken)
    [line] = [describe_failure(f) for f in result.schema_failures]
    assert line.startswith("expect_column_values_to_be_between on no_such_column: expected min_value=1.0; error ")
    assert "no_such_column" in line.split("error ", 1)[1]


# --- rows awaiting their outcome -------------------------------------------------------------------


def awaiting_rows(raw_records: pd.DataFrame) -> pd.DataFrame:
    """Five new visits whose outcome is not known yet: three clean, one with an unknown sex, and one
    the same visit as labelled row 0 under a new id."""
    rows = raw_records.iloc[10:15].copy()
    rows["patient_id"] = range(9001, 9006)
    rows["progression_12m"] = None
    rows["visit_date"] = rows["visit_date"] + pd.Timedelta(days=1)  # later visits of the same patients
    rows.iloc[3, rows.columns.get_loc("sex")] = "X"
    measured = [c for c in rows.columns if c not in ("patient_id", "progression_12m", "recorded_at")]
    rows.iloc[4, [rows.columns.get_loc(c) for c in measured]] = raw_records.iloc[0][measured].to_numpy()
    return rows


def test_awaiting_rows_are_counted_checked_and_never_trained_on(raw_records: pd.DataFrame, contract: DatasetContract,
                                                                 suite: dict[str, Any]) -> None:
    labelled = raw_records.copy()
    result, awaiting = quality.classify_with_awaiting(labelled, awaiting_rows(raw_records), contract, suite)

    result.check_reconciles()
    assert result.rows_read == len(labelled)
    assert 9001 not in set(result.valid["patient_id"])  # never trained on
    # The labelled copy of the duplicated visit is caught because the awaiting rows were checked with it.
    assert result.reason_counts() == {"duplicate_record": 1}
    assert list(result.quarantined["patient_id"]) == [labelled.iloc[0]["patient_id"]]
    assert awaiting.rows_read == 5
    assert awaiting.reason_counts() == {"duplicate_record": 1, "unknown_category": 1}  # no missing outcome
    assert sorted(awaiting.quarantined["patient_id"]) == [9004, 9005]
    assert {r["row_number"] for r in quality.quarantine_records(awaiting, "patient_id")} == {3, 4}
    page = quality.render_report(result, contract, "t", awaiting)
    assert "awaiting their outcome (not trained on)</td><td>5" in page


def test_without_awaiting_rows_the_labelled_result_is_unchanged(raw_records: pd.DataFrame, contract: DatasetContract,
                                                                suite: dict[str, Any]) -> None:
    alone = quality.classify_rows(raw_records, contract, suite)
    result, awaiting = quality.classify_with_awaiting(raw_records, None, contract, suite)
    pd.testing.assert_frame_equal(result.valid, alone.valid)
    assert (awaiting.rows_read, awaiting.reasons) == (0, {})


# --- the fast row checks scoring uses: the same verdicts as Great Expectations ---------------------

def both_ways(frame: pd.DataFrame, contract: DatasetContract, suite: dict[str, Any]) -> tuple[
        quality.QualityResult, quality.QualityResult]:
    by_gx = quality.classify_rows(frame, contract, suite)
    fast = quality.classify_rows(frame, contract, suite, fast=True)
    assert fast.gx_result.get("checked_by") == "pipeline.data.rowchecks"  # the fast path ran, not GX again
    assert "checked_by" not in by_gx.gx_result
    return by_gx, fast


def same_reasons(result: quality.QualityResult) -> dict[int, list[tuple[str, str, str, str | None]]]:
    """Each row's reasons in one order (GX lists its results by domain, the fast checks by the suite's order)."""
    return {p: sorted((r["code"], r["column"], r["rule"], r.get("value")) for r in reasons)
            for p, reasons in result.reasons.items()}


def test_fast_row_checks_give_each_row_the_reasons_gx_gives(faulty_frame: pd.DataFrame, text_bmi: DatasetContract,
                                                            suite: dict[str, Any]) -> None:
    by_gx, fast = both_ways(faulty_frame, text_bmi, suite)

    assert same_reasons(fast) == same_reasons(by_gx)
    assert reasons_by_position(fast) == {p: sorted(r) for p, (_, _, r) in FAULTS.items()}
    assert fast.valid.equals(by_gx.valid)


@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(triples=corruption_triples, copies=st.lists(st.integers(0, SLICE_ROWS - 1), max_size=3))
def test_fast_row_checks_agree_with_gx_on_any_corruption(raw_records: pd.DataFrame, all_declared: DatasetContract,
                                                         suite: dict[str, Any], triples: list[tuple[int, str, str]],
                                                         copies: list[int]) -> None:
    batch = raw_records.head(SLICE_ROWS).reset_index(drop=True)
    frame, _ = corrupt(batch, triples)
    frame = pd.concat([frame, frame.iloc[copies]], ignore_index=True)  # whole rows entered twice

    by_gx, fast = both_ways(frame, all_declared, suite)

    assert same_reasons(fast) == same_reasons(by_gx)


def test_fast_row_checks_agree_with_gx_on_the_clinic_export() -> None:
    from pipeline.contract.config import load_config
    from pipeline.contract.settings import PROJECT_ROOT

    config = load_config(PROJECT_ROOT / "examples" / "clinic" / "clinic.yaml")
    frame = demo.clinic_export()

    by_gx, fast = both_ways(frame, config.dataset, load_suite(config.dataset.expectation_suite))

    assert by_gx.reasons and same_reasons(fast) == same_reasons(by_gx)


# --- the report as GX Data Docs shows a validation (issue 14) ------------------------------------------


def report_rows(page: str, heading_id: str) -> list[list[str]]:
    """The cells of each body row of the table after the heading with `heading_id`."""
    part = page.split(f"<h2 id='{heading_id}'>", 1)[1].split("</table>", 1)[0]
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr(?: class='\w+')?>(.*?)</tr>", part)
            if "<td>" in row]


def test_report_lists_every_expectation_with_result_observed_share_and_bound(
        classified: quality.QualityResult, contract: DatasetContract, suite: dict[str, Any]) -> None:
    page = quality.render_report(classified, contract, "Validation")

    rows = report_rows(page, "expectations")
    assert sorted((r[1], r[2]) for r in rows) == sorted(  # every expectation of the suite, once
        (e["type"], html.escape(column_of(e["type"], e["kwargs"]))) for e in suite["expectations"])
    by_rule = {(r[1], r[2]): r for r in rows}
    total = classified.rows_read
    assert by_rule[("expect_column_values_to_be_between", "bmi")] == [
        "FAIL", "expect_column_values_to_be_between", "bmi", "unexpected, e.g. 500.0; 5.0", f"2 of {total}",
        f"{200 / total:.2f}%", "min_value=12.0, max_value=70.0"]
    assert by_rule[("expect_column_values_to_be_in_set", "sex")][3:] == [
        "unexpected, e.g. Male", f"1 of {total}", f"{100 / total:.2f}%", "value_set=[&#x27;F&#x27;, &#x27;M&#x27;]"]
    pair = by_rule[("expect_column_pair_values_a_to_be_greater_than_b", "visit_date/birth_date")]
    assert pair[0] == "FAIL" and pair[6] == "visit_date &gt; birth_date (either_value_is_missing)"
    assert by_rule[("expect_column_values_to_not_be_null", "patient_id")][0::3] == ["pass", "no unexpected value",
                                                                                   "no missing value"]
    stats = classified.gx_result["statistics"]
    assert (f"{stats['evaluated_expectations']} expectations, {stats['successful_expectations']} passed, "
            f"{stats['unsuccessful_expectations']} failed") in page
    assert sum(r[0] == "FAIL" for r in rows) == stats["unsuccessful_expectations"]


def test_report_shows_the_dates_of_an_impossible_dates_row(classified: quality.QualityResult,
                                                           contract: DatasetContract,
                                                           faulty_frame: pd.DataFrame) -> None:
    page = quality.render_report(classified, contract, "Validation")

    [row] = [r for r in report_rows(page, "quarantined") if r[0] == str(faulty_frame.at[60, "patient_id"])]
    birth, visit = faulty_frame.at[60, "birth_date"], faulty_frame.at[60, "visit_date"]
    assert row[1].startswith("impossible_dates(visit_date/birth_date=visit_date=")
    assert row[2] == f"visit_date={visit}, birth_date={birth}"  # as the source held them
    assert "None" not in row[1] + row[2]


def test_a_reason_without_a_value_quotes_the_original_cells(classified: quality.QualityResult,
                                                            contract: DatasetContract,
                                                            faulty_frame: pd.DataFrame) -> None:
    position = 60
    blank = dataclasses.replace(classified, reasons={
        **classified.reasons, position: [{**r, "value": None} for r in classified.reasons[position]]})

    [row] = [r for r in report_rows(quality.render_report(blank, contract, "t"), "quarantined")
             if r[0] == str(faulty_frame.at[position, "patient_id"])]

    birth, visit = faulty_frame.at[position, "birth_date"], faulty_frame.at[position, "visit_date"]
    assert row[1] == f"impossible_dates(visit_date/birth_date=visit_date={visit}, birth_date={birth})"


def test_report_states_the_quarantined_share_against_the_limit(classified: quality.QualityResult,
                                                               contract: DatasetContract, config: Any) -> None:
    quarantined, read = len(classified.quarantined), classified.rows_read
    share = quarantined / read

    within = quality.render_report(classified, contract, "t", policy=config.quality)
    over = quality.render_report(classified, contract, "t",
                                 policy=dataclasses.replace(config.quality, max_quarantine_share=0.01))

    assert f"<td>quarantined share</td><td>{share:.2%}</td>" in within
    assert "<td>limit (quality.max_quarantine_share)</td><td>5.00%</td>" in within
    assert (f"{quarantined} of {read} labelled rows quarantined ({share:.2%}): within the limit of 5.00% "
            "(quality.max_quarantine_share)") in within
    assert f"({share:.2%}): over the limit of 1.00% (quality.max_quarantine_share), so the run stops." in over


def test_reason_values_read_in_bulk_are_those_read_cell_by_cell() -> None:
    import datetime

    from pipeline.data.quality import _values, _values_at

    frame = pd.DataFrame({
        "i": pd.array([1, None, 3, 4], dtype="Int64"), "f": [1.5, float("nan"), 0.1, 3.0],
        "s": pd.array(["a", None, "c ", "d"], dtype="string"),
        "t": pd.to_datetime(["2020-01-01", None, "2021-02-03", "2022-01-01"], utc=True),
        "d": pd.Series([datetime.date(2020, 1, 1), None, datetime.date(1999, 1, 2), None], dtype=object),
        "o": pd.Series([1, "x", None, 2.5], dtype=object)}, index=[10, 11, 12, 13])
    for columns in (["i"], ["f"], ["s"], ["t"], ["d"], ["o"], ["i", "s"], ["t", "d"], [], ["nope"], ["f", "nope"]):
        for positions in ([13, 10, 11, 12], [11], []):
            assert _values_at(frame, positions, columns) == [_values(frame, p, columns) for p in positions]
