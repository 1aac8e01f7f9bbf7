"""Data tests: the shipped expectation suite, run by real Great Expectations on pandas frames."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.contract.config import DatasetContract
from pipeline.data import ingest
from pipeline.data.validate import ValidationFailed, ValidationReport, load_suite, validate_frame
from tests.unit.conftest import source_records

Corruption = Callable[[pd.DataFrame], pd.DataFrame]
VICTIM = 7  # the patient whose row each corruption breaks
TWIN = 5    # the patient whose id the duplicate copies


def at_victim(frame: pd.DataFrame, column: str, value: Any) -> pd.DataFrame:
    """A copy of `frame` with `column` set to `value` in the victim's row only."""
    out = frame.copy()
    out.loc[out["patient_id"] == VICTIM, column] = value
    return out


VISIT = ["birth_date", "visit_date", "sex", "bmi", "bp_mean", "tc", "ldl", "hdl", "tch", "ltg", "glucose"]


def twin_visit(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` where the victim's row records the twin's visit again, under its own id and outcome."""
    out = frame.copy()
    out.loc[out["patient_id"] == VICTIM, VISIT] = out.loc[out["patient_id"] == TWIN, VISIT].to_numpy()
    return out


CORRUPTIONS: dict[str, tuple[Corruption, str, str, int]] = {
    # name: (corruption, expectation type, column as reported, id expected in sample_ids)
    "duplicate id": (
        lambda f: at_victim(f, "patient_id", TWIN), "expect_column_values_to_be_unique", "patient_id", TWIN,
    ),
    "unknown sex": (lambda f: at_victim(f, "sex", "X"), "expect_column_values_to_be_in_set", "sex", VICTIM),
    "implausible bmi": (lambda f: at_victim(f, "bmi", 500.0), "expect_column_values_to_be_between", "bmi", VICTIM),
    "missing label": (
        lambda f: at_victim(f, "progression_12m", float("nan")),
        "expect_column_values_to_not_be_null", "progression_12m", VICTIM,
    ),
    "same visit twice": (twin_visit, "expect_compound_columns_to_be_unique", "+".join(VISIT), VICTIM),
    "visit before birth": (
        lambda f: at_victim(f, "visit_date", pd.Timestamp("1900-01-01")),
        "expect_column_pair_values_a_to_be_greater_than_b", "visit_date/birth_date", VICTIM,
    ),
}


@pytest.fixture(scope="module")
def valid_frame(contract: DatasetContract) -> pd.DataFrame:
    """The demo study as ingest types it, recorded_at included."""
    return ingest.cast_to_contract(source_records(), contract)


@pytest.fixture(scope="module")
def reports(valid_frame: pd.DataFrame, suite: dict[str, Any], contract: DatasetContract) -> dict[str, ValidationReport]:
    """One validation per corruption, shared by the tests that inspect the failures."""
    return {
        name: validate_frame(corrupt(valid_frame), suite, contract.id_column)
        for name, (corrupt, *_) in CORRUPTIONS.items()
    }


def failures_of(report: ValidationReport, expectation: str, column: str) -> list[dict[str, Any]]:
    return [f for f in report.failures if f["expectation"] == expectation and f["column"] == column]


# --- the valid frame -----------------------------------------------------------------------------


def test_shipped_suite_passes_on_the_demo_records(
    valid_frame: pd.DataFrame, suite: dict[str, Any], contract: DatasetContract
) -> None:
    report = validate_frame(valid_frame, suite, contract.id_column)
    assert report.success, report.failures
    assert report.failures == []
    assert report.statistics["evaluated_expectations"] == len(suite["expectations"])
    assert report.statistics["unsuccessful_expectations"] == 0


def test_shipped_suite_passes_on_the_snapshot_as_stored(
    valid_frame: pd.DataFrame, suite: dict[str, Any], contract: DatasetContract, tmp_path: Path
) -> None:
    """The validate stage reads the parquet snapshot back; its dtypes must satisfy the suite too."""
    path = tmp_path / "snapshot.parquet"
    path.write_bytes(ingest.snapshot_bytes(valid_frame))
    report = validate_frame(pd.read_parquet(path), suite, contract.id_column)
    assert report.success, report.failures


def test_corruptions_leave_the_shared_frame_untouched(valid_frame: pd.DataFrame) -> None:
    for corrupt, *_ in CORRUPTIONS.values():
        assert not corrupt(valid_frame).equals(valid_frame)
    assert valid_frame["patient_id"].is_unique


# --- corruptions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_fails_naming_expectation_column_and_patient(
    name: str, reports: dict[str, ValidationReport]
) -> None:
    _, expectation, column, offender = CORRUPTIONS[name]
    report = reports[name]
    assert report.success is False
    matching = failures_of(report, expectation, column)
    assert matching, f"{name}: expected a failure of {expectation} on {column}, got {report.failures}"
    assert offender in matching[0]["sample_ids"]
    assert matching[0]["unexpected_count"] >= 1


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_breaks_nothing_else(name: str, reports: dict[str, ValidationReport]) -> None:
    """One bad value, one failed rule: the summary points at the cause, not at noise."""
    _, expectation, column, _ = CORRUPTIONS[name]
    assert [(f["expectation"], f["column"]) for f in reports[name].failures] == [(expectation, column)]


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_validation_failed_message_names_expectation_and_column_but_never_an_id(
    name: str, reports: dict[str, ValidationReport], suite: dict[str, Any]
) -> None:
    _, expectation, column, offender = CORRUPTIONS[name]
    report = reports[name]
    error = ValidationFailed(report.suite_name, report.failures)
    message = str(error)
    assert report.suite_name == suite["name"]
    assert suite["name"] in message
    assert expectation in message
    assert column in message
    # the failing record's id is kept with the failures (sealed at rest), never in the one-line error, which goes to
    # the run's record, its note, the task log and alerts
    assert any(offender in f["sample_ids"] for f in error.failures) and "ids in the quality report" in message
    assert not re.search(rf"\b{offender}\b", message), message
    assert error.failures == report.failures


# --- load_suite ----------------------------------------------------------------------------------


def test_load_suite_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    with pytest.raises(ValueError, match="absent.json") as caught:
        load_suite(missing)
    assert str(missing) in str(caught.value)


def test_load_suite_names_a_file_with_invalid_json(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "patient_records", "expectations": [')
    with pytest.raises(ValueError, match="broken.json") as caught:
        load_suite(broken)
    assert str(broken) in str(caught.value)


@pytest.mark.parametrize("content", ['{"expectations": []}', '{"name": "s", "expectations": {}}'])
def test_load_suite_names_a_file_without_name_or_expectation_list(tmp_path: Path, content: str) -> None:
    odd = tmp_path / "odd.json"
    odd.write_text(content)
    with pytest.raises(ValueError, match="odd.json"):
        load_suite(odd)


def test_load_suite_reads_the_shipped_suite(suite: dict[str, Any]) -> None:
    assert suite["name"]
    assert all("type" in e and "kwargs" in e for e in suite["expectations"])


def test_load_suite_names_a_file_holding_a_json_list(tmp_path: Path) -> None:
    listed = tmp_path / "listed.json"
    listed.write_text('[{"type": "expect_column_values_to_not_be_null"}]')
    with pytest.raises(ValueError, match="listed.json"):
        load_suite(listed)


# --- table-level failures and suites GX cannot run -----------------------------------------------


def test_table_level_failure_names_expectation_observed_and_bound(valid_frame: pd.DataFrame,
                                                                   contract: DatasetContract) -> None:
    suite = {"name": "volume", "expectations": [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1000, "max_value": 5000}},
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "glucose", "max_value": 100}}]}
    report = validate_frame(valid_frame, suite, contract.id_column)

    message = str(ValidationFailed(report.suite_name, report.failures))
    top = float(valid_frame["glucose"].max())
    assert ("  - expect_table_row_count_to_be_between on (table): observed 442; expected min_value=1000, "
            "max_value=5000") in message.splitlines()
    assert f"  - expect_column_max_to_be_between on glucose: observed {top!r}; expected max_value=100.0" in (
        message.splitlines())


@pytest.mark.parametrize(("expectation", "kwargs"), [
    ("expect_multicolumn_values_to_be_unique", {"column_list": ["tc", "ldl"]}),  # not in GX 1.x
    ("expect_column_values_to_be_between", {"min_value": 1}),  # no column
])
def test_an_expectation_gx_cannot_build_is_refused_not_dropped(valid_frame: pd.DataFrame, contract: DatasetContract,
                                                                expectation: str, kwargs: dict[str, Any]) -> None:
    suite = {"name": "typo", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "bmi"}},
        {"type": expectation, "kwargs": kwargs}]}
    with pytest.raises(ValueError, match=f"expectation 1 \\({expectation}\\) of suite 'typo' cannot run"):
        validate_frame(valid_frame, suite, contract.id_column)
