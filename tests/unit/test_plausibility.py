"""Values no contract type can carry, and dates no patient can have: refused by name, never guessed.

No database: Arrow tables hold the values exactly as the PostgreSQL driver hands them on (its
infinities included), and the demo records carry the implausible dates. Great Expectations runs for real.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from pipeline.contract.config import (
    DEFAULT_AGE_AT_EVENT_YEARS,
    ConfigError,
    DatasetContract,
    PipelineConfig,
    load_config,
)
from pipeline.contract.settings import PROJECT_ROOT
from pipeline.data import ingest, quality
from pipeline.data.casting import NOT_FINITE, OUT_OF_RANGE_DATE, Unreadable, cast_column
from tests.unit.conftest import source_records

# PostgreSQL's infinities as adbc-driver-postgresql hands them on: shifted from its 2000 epoch, wrapping.
DATE_INFINITY, DATE_MINUS_INFINITY = -2_147_472_692, -2_147_472_691
TIME_MINUS_INFINITY = -9_222_425_352_054_775_808


# --- reading: Arrow to pandas ---------------------------------------------------------------------


def test_out_of_range_dates_and_nan_arrive_as_unreadable_cells_naming_the_value() -> None:
    table = pa.table({
        "day": pa.array([DATE_INFINITY, DATE_MINUS_INFINITY, -2_440_588, 0, None], pa.date32()),
        "stamp": pa.array([TIME_MINUS_INFINITY, 0, 1, None, 2], pa.timestamp("us", "UTC")),
        "number": pa.array([float("nan"), None, 1.5, float("inf"), 2.0]),
    })

    frame = ingest.arrow_to_frame(table)

    assert list(frame["day"]) == [Unreadable(OUT_OF_RANGE_DATE, "infinity"), Unreadable(OUT_OF_RANGE_DATE, "-infinity"),
                                  Unreadable(OUT_OF_RANGE_DATE, "-4713-11-24"), date(1970, 1, 1), None]
    assert frame.at[0, "stamp"] == Unreadable(OUT_OF_RANGE_DATE, "-infinity")
    assert frame.at[2, "stamp"] == pd.Timestamp(1, unit="us", tz="UTC")
    assert frame.at[0, "number"] == Unreadable(NOT_FINITE, "NaN")  # a value, not the NULL in the next row
    assert pd.isna(frame.at[1, "number"]) and frame.at[3, "number"] == float("inf")


def test_a_read_with_no_such_value_keeps_its_dtypes() -> None:
    table = pa.table({"day": pa.array([0, None], pa.date32()), "number": pa.array([1.0, None])})

    frame = ingest.arrow_to_frame(table)

    assert frame["day"].dtype == object and frame["number"].dtype == "float64"


# --- casting ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "values"), [
    ("date", [date(2020, 1, 1), Unreadable(OUT_OF_RANGE_DATE, "infinity"), None]),
    ("timestamp", [pd.Timestamp("2020-01-01", tz="UTC"), Unreadable(OUT_OF_RANGE_DATE, "-infinity"), None]),
    ("float", [1.5, Unreadable(NOT_FINITE, "NaN"), None]),
    ("float", [1.5, float("-inf"), None]),
])
def test_an_unreadable_or_infinite_cell_never_casts(kind: str, values: list[Any]) -> None:
    cast, failed = cast_column(pd.Series(values, dtype=object), kind, None, "col")

    assert failed.tolist() == [False, True, False]
    assert pd.notna(cast.iloc[0]) and cast.iloc[1:].isna().all()


def test_infinity_is_reported_as_postgresql_prints_it(demo_frame: pd.DataFrame, contract: DatasetContract) -> None:
    frame = source_records().head(3).astype({"bmi": object, "glucose": object})
    frame.at[0, "bmi"], frame.at[1, "glucose"] = float("inf"), Unreadable(NOT_FINITE, "NaN")
    frame[quality.ROW_COLUMN] = range(len(frame))

    _, reasons = quality.coerce_types(frame, contract)

    assert {p: [(r["code"], r["column"], r["value"]) for r in found] for p, found in reasons.items()} == {
        0: [("not_finite", "bmi", "Infinity")], 1: [("not_finite", "glucose", "NaN")]}


# --- the configured age bounds -----------------------------------------------------------------------


def variant(tmp_path: Path, bounds: Any) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    if bounds is None:
        raw["quality"].pop("age_at_event_years", None)
    else:
        raw["quality"]["age_at_event_years"] = bounds
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_age_bounds_are_configured_and_default_to_any_human_age(config: PipelineConfig, tmp_path: Path) -> None:
    assert config.quality.age_at_event_years == (18.0, 110.0)
    assert load_config(variant(tmp_path, None)).quality.age_at_event_years == DEFAULT_AGE_AT_EVENT_YEARS == (0, 120)


@pytest.mark.parametrize(("bounds", "message"), [
    ([110, 18], "quality.age_at_event_years must be [low, high] with 0 <= low < high, got [110, 18]"),
    ([-1, 120], "quality.age_at_event_years must be [low, high] with 0 <= low < high, got [-1, 120]"),
    ([18], "quality.age_at_event_years must be [low, high] in years, got [18]"),
    (["adult", 110], "quality.age_at_event_years must be a number, got 'adult'"),
])
def test_bad_age_bounds_are_refused_by_key_and_value(tmp_path: Path, bounds: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(variant(tmp_path, bounds))


# --- classifying: the plausibility checks by contract role ------------------------------------------


def with_dates(position: int, **dates: Any) -> pd.DataFrame:
    frame = source_records().astype({"birth_date": object, "visit_date": object})
    for column, value in dates.items():
        frame.at[position, column] = value
    return frame


def codes(result: quality.QualityResult) -> dict[int, list[tuple[str, str]]]:
    return {p: [(r["code"], r["column"]) for r in found] for p, found in result.reasons.items()}


def test_every_demo_row_has_a_plausible_age_under_the_shipped_bounds(config: PipelineConfig,
                                                                     suite: dict[str, Any]) -> None:
    result = quality.classify_rows(source_records(), config.dataset, suite, config.quality)

    assert len(result.quarantined) == 0 and result.rows_read == len(result.valid) == 442


def test_an_age_outside_the_configured_bounds_is_quarantined(config: PipelineConfig, suite: dict[str, Any]) -> None:
    visit = source_records().at[5, "visit_date"]
    frame = with_dates(5, birth_date=visit - pd.DateOffset(years=15))

    shipped = quality.classify_rows(frame, config.dataset, suite, config.quality)
    any_age = quality.classify_rows(frame, config.dataset, suite)

    assert codes(shipped) == {5: [("implausible_age", "birth_date/visit_date")]}
    assert shipped.reasons[5][0]["value"].startswith("age 15.0 years (birth_date=")
    assert "18 and 110 years (quality.age_at_event_years)" in shipped.reasons[5][0]["rule"]
    assert codes(any_age) == {}
    shipped.check_reconciles()


def test_a_birth_after_the_visit_is_impossible_not_also_implausible(config: PipelineConfig,
                                                                    suite: dict[str, Any]) -> None:
    visit = source_records().at[5, "visit_date"]
    result = quality.classify_rows(with_dates(5, birth_date=visit + pd.Timedelta(days=30)), config.dataset, suite,
                                   config.quality)

    assert codes(result) == {5: [("impossible_dates", "visit_date/birth_date")]}


def test_a_visit_after_its_recording_is_in_the_future_and_its_age_not_judged(config: PipelineConfig,
                                                                             suite: dict[str, Any]) -> None:
    result = quality.classify_rows(with_dates(5, visit_date=date(2300, 1, 1)), config.dataset, suite, config.quality)

    assert codes(result) == {5: [("future_date", "visit_date/recorded_at")]}
    assert "visit_date=2300-01-01" in result.reasons[5][0]["value"]


def test_the_checks_follow_the_roles_not_the_demo_names(config: PipelineConfig, suite: dict[str, Any]) -> None:
    renames = {"birth_date": "born", "visit_date": "seen", "recorded_at": "entered"}
    contract = dataclasses.replace(
        config.dataset, timestamp_column="entered",
        features=tuple(dataclasses.replace(f, name=renames.get(f.name, f.name)) for f in config.dataset.features))
    renamed_suite = {"name": "renamed", "expectations": []}
    frame = with_dates(5, birth_date=date(1700, 1, 1)).rename(columns=renames)
    frame.at[6, "seen"] = date(2300, 1, 1)

    result = quality.classify_rows(frame, contract, renamed_suite, config.quality)

    assert codes(result) == {5: [("implausible_age", "born/seen")], 6: [("future_date", "seen/entered")]}


def test_quarantined_rows_show_their_new_reasons_in_the_report(config: PipelineConfig, suite: dict[str, Any]) -> None:
    frame = with_dates(5, birth_date=date(1700, 1, 1)).astype({"bmi": object})
    frame.at[6, "bmi"] = Unreadable(NOT_FINITE, "NaN")
    frame.at[7, "visit_date"] = Unreadable(OUT_OF_RANGE_DATE, "infinity")

    result = quality.classify_rows(frame, config.dataset, suite, config.quality)
    page = quality.render_report(result, config.dataset, "bad values")

    result.check_reconciles()
    assert codes(result) == {5: [("implausible_age", "birth_date/visit_date")], 6: [("not_finite", "bmi")],
                             7: [("out_of_range_date", "visit_date")]}
    for code in ("implausible_age", "not_finite", "out_of_range_date"):
        assert f"<td>{code}</td>" in page
    assert "not_finite(bmi=NaN)" in page and "out_of_range_date(visit_date=infinity)" in page
    [record] = [r for r in quality.quarantine_records(result, "patient_id") if r["row_number"] == 7]
    assert record["original"]["visit_date"] == "infinity"
    assert np.isnan(result.valid["bmi"]).sum() == 0
