"""Hostile values against the contract, one table: each value, written into one row of the demo study, is either
quarantined with its named reason (on its own column) or accepted as the named value, by Great Expectations and by
the compiled row checks alike (`quality.classify_rows`, fast or not).

bmi declares its decimal mark and birth_date its format, so text reaches both the number and the date casts; every
other column holds what PostgreSQL would give it. Not in the table: a lone surrogate (PostgreSQL's text cannot hold
one, and the REST API refuses it with a 4xx before any check) and a bare float NaN (ingest reads a NaN the database
holds as `Unreadable("not_finite", "NaN")`, in the table, because pandas cannot tell a NaN from a NULL).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest

from pipeline.contract.config import DatasetContract, PipelineConfig
from pipeline.data import quality
from pipeline.data.casting import Unreadable, cast_column
from tests.unit.conftest import declaring, source_records


class Accepted(NamedTuple):
    value: Any  # what the row's cell holds once normalised and cast


class Case(NamedTuple):
    name: str
    column: str
    value: Any
    expected: str | tuple[str, ...] | Accepted  # reason code(s) of the row, or the accepted value


DAY = pd.Timestamp
CASES = [
    # text and categories: spaces and letter case are normalised, nothing else is guessed
    Case("spaces around a category", "sex", " f ", Accepted("F")),
    Case("lower case category", "sex", "m", Accepted("M")),
    Case("no-break spaces around", "sex", "\u00a0F\u00a0", Accepted("F")),
    Case("a word for a category", "sex", "Male", "unknown_category"),
    Case("empty string", "sex", "", "unknown_category"),
    Case("only spaces", "sex", "   ", "unknown_category"),
    Case("NUL byte in text", "sex", "F\x00", "unknown_category"),
    Case("fullwidth letter", "sex", "\uff26", "unknown_category"),
    Case("zero-width space", "sex", "F\u200b", "unknown_category"),
    Case("mojibake", "sex", "Ã©", "unknown_category"),
    Case("very long string", "sex", "F" * 10_000, "unknown_category"),
    Case("a boolean for a category", "sex", True, "unknown_category"),
    # numbers: finite, in range, written with the declared mark and the digits 0-9 only
    Case("NaN the database held", "bmi", Unreadable("not_finite", "NaN"), "not_finite"),
    Case("infinity", "bmi", float("inf"), "not_finite"),
    Case("minus infinity as the target", "progression_12m", float("-inf"), "not_finite"),
    Case("negative zero", "progression_12m", -0.0, Accepted(0.0)),
    Case("largest double", "bmi", 1e308, "out_of_range"),
    Case("smallest subnormal", "bmi", 5e-324, "out_of_range"),
    Case("tiny negative", "glucose", -1e-300, "out_of_range"),
    Case("lower bound itself", "bmi", 12.0, Accepted(12.0)),
    Case("just past the upper bound", "bmi", 70.0000001, "out_of_range"),
    Case("boolean true as a number", "bmi", True, "wrong_type"),
    Case("boolean false as a number", "bmi", False, "wrong_type"),
    Case("an integer", "bmi", 25, Accepted(25.0)),
    Case("float32", "bmi", np.float32(25.5), Accepted(25.5)),
    Case("decimal", "bmi", Decimal("25.5"), Accepted(25.5)),
    Case("number as text", "bmi", "25.5", Accepted(25.5)),
    Case("number as text, spaces around", "bmi", " 25.5 ", Accepted(25.5)),
    Case("explicit plus sign", "bmi", "+25", Accepted(25.0)),
    Case("the other decimal mark", "bmi", "25,5", "wrong_type"),
    Case("thousands separator", "bmi", "1,234.5", "wrong_type"),
    Case("'NaN' as text", "bmi", "NaN", "wrong_type"),
    Case("'inf' as text", "bmi", "inf", "wrong_type"),
    Case("'Infinity' as text", "bmi", "Infinity", "wrong_type"),
    Case("Arabic-Indic digits", "bmi", "\u0662\u0665", "wrong_type"),
    Case("fullwidth digits", "bmi", "\uff12\uff15", "wrong_type"),
    Case("empty string as a number", "bmi", "", "wrong_type"),
    Case("hexadecimal", "bmi", "0x1A", "wrong_type"),
    Case("a mark and no digits after", "bmi", "25.", "wrong_type"),
    Case("NUL byte in a number", "bmi", "25.5\x00", "wrong_type"),
    Case("exponent", "bmi", "1e1", "out_of_range"),
    Case("text minus zero", "bmi", "-0", "out_of_range"),
    Case("400 digits", "bmi", "1" * 400, "wrong_type"),
    Case("past the largest double", "bmi", "1e400", "wrong_type"),
    # ids
    Case("fractional id", "patient_id", 1.5, "wrong_type"),
    Case("id past int64", "patient_id", 2**63, "wrong_type"),
    Case("boolean id", "patient_id", True, "wrong_type"),
    Case("missing id", "patient_id", None, "missing_required"),
    Case("duplicate id", "patient_id", 100, "duplicate_id"),  # DUPLICATED_ROW keeps its own id 100
    # dates: real calendar days, by the declared format, in the digits 0-9, before the recording
    Case("leap day", "birth_date", dt.date(2000, 2, 29), Accepted(DAY("2000-02-29"))),
    Case("leap day as text", "birth_date", "2000-02-29", Accepted(DAY("2000-02-29"))),
    Case("no such leap day", "birth_date", "2001-02-29", "wrong_type"),
    Case("date as text, spaces around", "birth_date", " 1980-01-01 ", Accepted(DAY("1980-01-01"))),
    Case("date as text without leading zeros", "birth_date", "1980-1-1", Accepted(DAY("1980-01-01"))),
    Case("another date format", "birth_date", "01/02/1980", "wrong_type"),
    Case("NUL byte in a date", "birth_date", "1980-01-01\x00", "wrong_type"),
    Case("Arabic-Indic digits in a date", "birth_date", "\u0661\u0669\u0668\u0660-01-01", "wrong_type"),
    Case("empty string as a date", "birth_date", "", "wrong_type"),
    Case("a number as a date", "birth_date", 19800101, "wrong_type"),
    Case("a boolean as a date", "birth_date", True, "wrong_type"),
    Case("a time of day in a date", "birth_date", DAY("1980-01-01 23:59"), Accepted(DAY("1980-01-01"))),
    Case("beyond year 9999", "birth_date", Unreadable("out_of_range_date", "infinity"), "out_of_range_date"),
    Case("visit a century ahead", "visit_date", dt.date(2100, 1, 1), "future_date"),
    Case("born on the last day", "birth_date", dt.date(9999, 12, 31), ("future_date", "impossible_dates")),
    Case("born in 1700", "birth_date", dt.date(1700, 1, 1), "implausible_age"),
    Case("missing outcome", "progression_12m", None, "missing_required"),
]
DUPLICATED_ROW = 99  # the row whose id is 100 (ids count from 1): the other half of "duplicate id"
OBJECT_COLUMNS = ("sex", "bmi", "patient_id", "birth_date", "visit_date", "progression_12m", "glucose")


@pytest.fixture(scope="module")
def declared(config: PipelineConfig) -> DatasetContract:
    return declaring(config.dataset, {"bmi": ".", "birth_date": "%Y-%m-%d"})


@pytest.fixture(scope="module", params=[False, True], ids=["great_expectations", "compiled_row_checks"])
def judged(request: pytest.FixtureRequest, declared: DatasetContract, suite: dict[str, Any],
           config: PipelineConfig) -> quality.QualityResult:
    """The demo study with one hostile value per row (row i holds CASES[i]), judged once per path."""
    raw = source_records().astype({column: object for column in OBJECT_COLUMNS})
    for row, case in enumerate(CASES):
        raw.at[row, case.column] = case.value
    return quality.classify_rows(raw, declared, suite, config.quality, fast=request.param)


@pytest.mark.parametrize("row", range(len(CASES)), ids=[c.name for c in CASES])
def test_each_hostile_value_has_its_named_reason_or_its_accepted_value(judged: quality.QualityResult,
                                                                      row: int) -> None:
    case = CASES[row]
    reasons = judged.reasons.get(row, [])
    if isinstance(case.expected, Accepted):
        assert reasons == [], reasons
        cell = judged.typed.at[row, case.column]  # type: ignore[union-attr]
        assert cell == case.expected.value, (cell, case.expected.value)
        return
    codes = (case.expected,) if isinstance(case.expected, str) else case.expected
    assert sorted({r["code"] for r in reasons}) == sorted(codes), reasons
    assert any(case.column in r["column"].split("/") for r in reasons), reasons  # the column is named


def test_the_rows_without_a_hostile_value_all_pass(judged: quality.QualityResult) -> None:
    assert [p for p in judged.reasons if p >= len(CASES)] == [DUPLICATED_ROW]
    assert {r["code"] for r in judged.reasons[DUPLICATED_ROW]} == {"duplicate_id"}
    assert judged.rows_read == judged.valid_count + len(judged.quarantined)


def test_a_timestamptz_column_read_as_a_date_gives_its_utc_day() -> None:
    zoned = pd.Series(pd.to_datetime(["1980-01-01 23:59", "1980-01-02 00:30"]).tz_localize("UTC"))
    cast, failed = cast_column(zoned, "date", None, "birth_date")  # was a TypeError that failed the whole batch
    assert list(cast) == [DAY("1980-01-01"), DAY("1980-01-02")] and not failed.any()
