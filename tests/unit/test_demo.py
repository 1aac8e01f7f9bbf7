"""Demo data: the study as a patient table, and plausible, reproducible new arrivals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from pipeline.contract.config import DatasetContract
from pipeline.data import demo

ARRIVAL_ROWS = 300


def study() -> pd.DataFrame:
    """The diabetes study straight from scikit-learn, independent of the code under test."""
    return load_diabetes(scaled=False, as_frame=True).frame


def whole_years(frame: pd.DataFrame) -> np.ndarray:
    """Completed years between birth and visit, as floor(days / 365.25)."""
    days = (pd.to_datetime(frame["visit_date"]) - pd.to_datetime(frame["birth_date"])).dt.days
    years: np.ndarray = np.floor(days.to_numpy() / 365.25).astype(int)
    return years


def suite_ranges(suite_path: Path) -> dict[str, tuple[float, float]]:
    """(min, max) of every expect_column_values_to_be_between in the expectation suite."""
    expectations = json.loads(suite_path.read_text())["expectations"]
    return {
        e["kwargs"]["column"]: (e["kwargs"]["min_value"], e["kwargs"]["max_value"])
        for e in expectations
        if e["type"] == "expect_column_values_to_be_between"
    }


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return demo.demo_records()


# --- demo_records --------------------------------------------------------------------------------


def test_demo_records_hold_the_whole_study_with_ids_one_to_n(records: pd.DataFrame) -> None:
    n = len(study())
    assert n == 442
    assert len(records) == n
    assert records["patient_id"].is_unique
    assert sorted(records["patient_id"]) == list(range(1, n + 1))


def test_age_from_the_dates_is_the_study_age_for_every_row(records: pd.DataFrame) -> None:
    assert np.array_equal(whole_years(records), study()["age"].astype(int).to_numpy())


def test_demo_records_keep_the_study_label_and_sex_as_f_or_m(records: pd.DataFrame) -> None:
    assert np.array_equal(records["progression_12m"].to_numpy(), study()["target"].to_numpy())
    assert set(records["sex"]) == {"F", "M"}
    pairs = set(zip(study()["sex"], records["sex"], strict=True))
    assert len(pairs) == 2, f"each study sex code should map to one letter, got {pairs}"


def test_demo_rows_are_recorded_after_their_visit(records: pd.DataFrame) -> None:
    visits = pd.to_datetime(records["visit_date"]).dt.tz_localize("UTC")
    assert (records["recorded_at"] > visits).all()
    assert (pd.to_datetime(records["visit_date"]) > pd.to_datetime(records["birth_date"])).all()


def test_demo_records_are_deterministic(records: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(demo.demo_records(), records)


# --- arrival_records -----------------------------------------------------------------------------


def test_arrivals_are_deterministic_per_seed() -> None:
    pd.testing.assert_frame_equal(demo.arrival_records(ARRIVAL_ROWS, 7), demo.arrival_records(ARRIVAL_ROWS, 7))


def test_arrivals_differ_between_seeds() -> None:
    one, other = demo.arrival_records(ARRIVAL_ROWS, 7), demo.arrival_records(ARRIVAL_ROWS, 8)
    assert not one["bmi"].equals(other["bmi"])
    assert not one["visit_date"].equals(other["visit_date"])


def test_arrivals_have_the_source_columns_but_no_id() -> None:
    arrivals = demo.arrival_records(5, 0)
    assert "patient_id" not in arrivals.columns
    assert list(arrivals.columns) == [c for c in demo.demo_records().columns if c not in ("patient_id", "recorded_at")]


@pytest.mark.parametrize("seed", [0, 1, 2024])
def test_arrivals_stay_inside_the_suite_ranges(seed: int, contract: DatasetContract) -> None:
    arrivals = demo.arrival_records(ARRIVAL_ROWS, seed)
    ranges = {c: r for c, r in suite_ranges(contract.expectation_suite).items() if c in arrivals.columns}
    assert len(ranges) >= 8, "the suite should bound every numeric arrival column"
    for column, (low, high) in ranges.items():
        values = arrivals[column]
        assert values.notna().all(), column
        assert values.between(low, high).all(), f"{column} outside [{low}, {high}]: {values.min()}..{values.max()}"
    assert set(arrivals["sex"]) <= {"F", "M"}


def test_arrival_ages_are_study_ages() -> None:
    ages = set(whole_years(demo.arrival_records(ARRIVAL_ROWS, 3)))
    assert ages <= set(study()["age"].astype(int))


def test_bmi_drift_shifts_every_bmi_by_exactly_the_drift() -> None:
    base = demo.arrival_records(ARRIVAL_ROWS, 11)
    drifted = demo.arrival_records(ARRIVAL_ROWS, 11, drift={"bmi": 4})
    assert drifted["bmi"].mean() - base["bmi"].mean() == pytest.approx(4.0, abs=1e-9)
    np.testing.assert_allclose(drifted["bmi"].to_numpy(), base["bmi"].to_numpy() + 4, rtol=0, atol=1e-9)
    pd.testing.assert_frame_equal(drifted.drop(columns="bmi"), base.drop(columns="bmi"))


@pytest.mark.parametrize("column", ["sex", "birth_date", "visit_date", "weight"])
def test_drift_on_a_non_numeric_or_unknown_column_raises_naming_it(column: str) -> None:
    with pytest.raises(ValueError, match=f"'{column}'"):
        demo.arrival_records(10, 0, drift={column: 1})


def test_drift_on_a_column_that_is_not_returned_raises() -> None:
    with pytest.raises(ValueError, match="'age'"):
        demo.arrival_records(10, 0, drift={"age": 5})
