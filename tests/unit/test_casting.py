"""Casting: typed values cast as they are, text only by the format its column declares, never guessed."""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd
import pytest

from pipeline.data.casting import FormatError, cast_column, cast_strict, describe_cast
from pipeline.model.features import AgeFromDates


def cast(values: list[Any], kind: str, fmt: str | None) -> tuple[list[Any], list[bool]]:
    """The cast values (NaN/NaT/NA as None) and which cells failed, for a column of python objects."""
    out, failed = cast_column(pd.Series(values, dtype=object), kind, fmt, "col")
    return [None if pd.isna(v) else v for v in out], failed.tolist()


# --- dates and timestamps held as text -----------------------------------------------------------


@pytest.mark.parametrize(("fmt", "expected"), [
    ("%d/%m/%Y", [date(2024, 1, 3), date(2024, 1, 13), date(2024, 1, 3)]),
    ("%m/%d/%Y", [date(2024, 3, 1), None, date(2024, 3, 1)]),
])
def test_ambiguous_dates_land_as_declared_or_fail(fmt: str, expected: list[date | None]) -> None:
    values, failed = cast(["3/01/2024", "13/01/2024", " 03/01/2024 "], "date", fmt)

    assert [None if v is None else v.date() for v in values] == expected
    assert failed == [v is None for v in expected]  # 13 is never a month: not swapped, refused


def test_day_and_month_are_never_swapped() -> None:
    texts = [f"{d}/{m:02d}/2024" for d in range(1, 29) for m in range(1, 13)]
    by_day_first, _ = cast(texts, "date", "%d/%m/%Y")
    by_month_first, failed = cast(texts, "date", "%m/%d/%Y")
    for text, day_first, month_first, refused in zip(texts, by_day_first, by_month_first, failed, strict=True):
        d, m = (int(p) for p in text.split("/")[:2])
        assert day_first.date() == date(2024, m, d), text
        assert refused == (d > 12) and (refused or month_first.date() == date(2024, d, m)), text


@pytest.mark.parametrize("text", ["2024-01-03", "3/01/24", "3/01/2024 10:00", "31/02/2024", "", "  "])
def test_text_not_in_the_declared_pattern_fails(text: str) -> None:
    assert cast([text], "date", "%d/%m/%Y") == ([None], [True])


def test_typed_dates_cast_as_before_and_numbers_are_not_dates() -> None:
    values, failed = cast([date(2024, 2, 1), pd.Timestamp("2024-03-01"), "5/04/2024", 5, None], "date", "%d/%m/%Y")

    assert values[:3] == [pd.Timestamp("2024-02-01"), pd.Timestamp("2024-03-01"), pd.Timestamp("2024-04-05")]
    assert failed == [False, False, False, True, False]


def test_dates_and_timestamps_keep_their_dtypes() -> None:
    dates, _ = cast_column(pd.Series(["3/01/2024"]), "date", "%d/%m/%Y", "visit_date")
    stamps, failed = cast_column(pd.Series(["2024-01-03 10:00", "2024-01-03 10:00+0200"]), "timestamp",
                                 "%Y-%m-%d %H:%M", "recorded_at")

    assert str(dates.dtype) == "datetime64[us]"
    assert str(stamps.dtype) == "datetime64[us, UTC]"
    assert stamps[0] == pd.Timestamp("2024-01-03 10:00", tz="UTC")  # a pattern without a zone reads as UTC
    assert failed.tolist() == [False, True]  # a zone the pattern does not declare is not read


@pytest.mark.parametrize("kind", ["date", "timestamp"])
def test_text_dates_without_a_declared_format_raise(kind: str) -> None:
    with pytest.raises(FormatError, match="column 'birth_date'") as raised:
        cast_column(pd.Series([date(1970, 1, 1), "3/01/1970"], dtype=object), kind, None, "birth_date")
    assert "format: '" in str(raised.value) and "'3/01/1970'" in str(raised.value)


# --- numbers held as text ------------------------------------------------------------------------


NUMBERS = ["1.5", "1,5", " -2e3 ", "+3", "12", "1,234.5", "1.234,5", "1 000", "1'000", "NaN", "inf", "-inf",
           ".5", "5.", "", "abc", "٣"]
READ_WITH_POINT = [1.5, None, -2000.0, 3.0, 12.0] + [None] * 12
READ_WITH_COMMA = [None, 1.5, -2000.0, 3.0, 12.0] + [None] * 12


@pytest.mark.parametrize(("mark", "expected"), [(".", READ_WITH_POINT), (",", READ_WITH_COMMA)])
def test_numbers_as_text_read_only_with_the_declared_mark(mark: str, expected: list[float | None]) -> None:
    values, failed = cast(NUMBERS, "float", mark)

    assert dict(zip(NUMBERS, values, strict=True)) == dict(zip(NUMBERS, expected, strict=True))
    assert failed == [v is None for v in expected]


def test_text_numbers_round_trip_exactly() -> None:
    numbers = [0.1, 2.4e-05, 1 / 3, 123456.789, -7.25, 1e300]
    values, _ = cast([repr(n) for n in numbers], "float", ".")
    assert values == numbers


def test_integers_refuse_fractions_in_text_and_in_numbers() -> None:
    values, failed = cast(["12", "1e3", "1.5", 7, 7.5, 1e30, None], "integer", ".")

    assert values == [12, 1000, None, 7, None, None, None]
    assert failed == [False, False, True, False, True, True, False]


def test_mixed_objects_cast_cell_by_cell() -> None:
    values, failed = cast([1.5, "2.5", 3, None, date(2024, 1, 1), "x"], "float", ".")

    assert values == [1.5, 2.5, 3.0, None, None, None]
    assert failed == [False, False, False, False, True, True]


def test_numbers_keep_their_dtypes() -> None:
    floats, _ = cast_column(pd.Series(["1,5", None]), "float", ",", "bmi")
    ints, _ = cast_column(pd.Series([1, 2]), "integer", None, "patient_id")
    assert (str(floats.dtype), str(ints.dtype)) == ("float64", "Int64")


@pytest.mark.parametrize("kind", ["float", "integer"])
def test_text_numbers_without_a_declared_mark_raise(kind: str) -> None:
    with pytest.raises(FormatError, match="column 'bmi'") as raised:
        cast_column(pd.Series([26.0, "27.1"], dtype=object), kind, None, "bmi")
    assert "decimal: '.'" in str(raised.value)


def test_typed_numbers_need_no_declared_mark() -> None:
    values, failed = cast_column(pd.Series([26.0, None, 27.5]), "float", None, "bmi")
    assert values.tolist()[::2] == [26.0, 27.5] and not failed.any()


# --- raise mode and rules --------------------------------------------------------------------------


def test_cast_strict_names_the_column_the_rule_and_the_values() -> None:
    with pytest.raises(ValueError, match="column 'visit_date'") as raised:
        cast_strict(pd.Series(["3/01/2024", "2024-01-03"]), "date", "%d/%m/%Y", "visit_date")
    assert "1 value(s) will not cast to date with format %d/%m/%Y" in str(raised.value)
    assert "'2024-01-03'" in str(raised.value)


def test_describe_cast_names_the_declared_format() -> None:
    assert describe_cast("date", "%d/%m/%Y") == "cast to date with format %d/%m/%Y"
    assert describe_cast("float", ",") == "cast to float with decimal mark ','"
    assert describe_cast("integer", None) == "cast to integer"


# --- the model never reads a date from text -------------------------------------------------------


def test_age_from_dates_refuses_text_dates() -> None:
    frame = pd.DataFrame({"birth_date": [date(1970, 1, 1)], "visit_date": ["3/01/2024"]})
    with pytest.raises(TypeError, match="input column 1 holds string values") as raised:
        AgeFromDates().fit_transform(frame)
    assert "dates must be typed" in str(raised.value)
