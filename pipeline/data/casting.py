"""Casting: the one place a value becomes its contract type.

Values the source already typed (numbers, dates, timestamps) cast as they are. Text is read only
by the format its column declares: a strftime pattern for dates and timestamps, a decimal mark for
numbers. Nothing is inferred, so a day is never read as a month and "1.234" never becomes 1234.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

DTYPES = {"float": "float64", "integer": "Int64", "text": "string",
          "date": "datetime64[us]", "timestamp": "datetime64[us, UTC]"}
DATE_KINDS = ("date", "timestamp")
NUMBER_KINDS = ("float", "integer")
EXAMPLES = 5  # failing values quoted in an error


class FormatError(ValueError):
    """A column holds text for a date or number type but declares no format to read it by."""


# Reason codes for a value the source holds but no contract type can carry (the row is quarantined).
OUT_OF_RANGE_DATE = "out_of_range_date"  # a date or time outside years 1 to 9999 (PostgreSQL's infinity, too)
NOT_FINITE = "not_finite"  # NaN or an infinity in a number column: NULL, not NaN, is how a source says missing
UNREADABLE_RULES = {OUT_OF_RANGE_DATE: "a date or time between the years 1 and 9999",
                    NOT_FINITE: "a finite number (a missing value is NULL, not NaN)"}


@dataclass(frozen=True)
class Unreadable:
    """A cell holding a value pandas cannot carry faithfully (a date outside years 1 to 9999; NaN, which
    pandas cannot tell from NULL), as the database printed it: it never casts, so its row is quarantined
    with `code` and this text instead of the batch failing or the value silently becoming missing."""

    code: str
    text: str

    def __str__(self) -> str:
        return self.text


def unreadable_reason(value: object) -> tuple[str, str, str] | None:
    """The reason code, rule and value text (as PostgreSQL prints it) for a cell that did not cast because
    no contract type can carry its value (an Unreadable, an infinite number); None for any other cell."""
    if isinstance(value, Unreadable):
        return value.code, UNREADABLE_RULES[value.code], value.text
    if isinstance(value, float | np.floating) and np.isinf(value):
        return NOT_FINITE, UNREADABLE_RULES[NOT_FINITE], "Infinity" if value > 0 else "-Infinity"
    return None


def _unreadable_cells(values: pd.Series) -> pd.Series:
    # An Unreadable among other values makes the column "mixed" to pandas' type inference (in C): a column of
    # dates, texts or numbers alone holds none, and is not looked at cell by cell.
    if values.dtype != object or not pd.api.types.infer_dtype(values, skipna=True).startswith("mixed"):
        return pd.Series(False, index=values.index)
    return values.map(lambda v: isinstance(v, Unreadable)).astype(bool)


def describe_cast(kind: str, fmt: str | None) -> str:
    """The rule a cell breaks when it will not cast, e.g. "cast to date with format %d/%m/%Y"."""
    if fmt is None:
        return f"cast to {kind}"
    if kind in DATE_KINDS:
        return f"cast to {kind} with format {fmt}"
    return f"cast to {kind} with decimal mark '{fmt}'"


def number_pattern(mark: str) -> re.Pattern[str]:
    """A whole cell holding one number: sign, digits, the declared mark and digits, an exponent."""
    return re.compile(rf"[+-]?[0-9]+(?:{re.escape(mark)}[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def text_cells(values: pd.Series) -> pd.Series:
    """Which cells hold text (str), as opposed to a typed value or nothing."""
    if isinstance(values.dtype, pd.StringDtype):
        return values.notna()
    if values.dtype != object:
        return pd.Series(False, index=values.index)
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "string":
        return values.notna()
    if kind != "mixed" and not kind.startswith("mixed-"):
        return pd.Series(False, index=values.index)
    return values.map(lambda v: isinstance(v, str)).astype(bool)


def check_declared(values: pd.Series, text: pd.Series, kind: str, fmt: str | None, column: str) -> None:
    """Refuse text in a date or number column that declares no format: it would have to be guessed."""
    if fmt is not None or kind not in (*DATE_KINDS, *NUMBER_KINDS) or not text.any():
        return
    if kind in DATE_KINDS:
        example = "%d/%m/%Y" if kind == "date" else "%Y-%m-%d %H:%M:%S"
        fix = f"format: '{example}' (the strftime pattern its text uses) in its feature entry"
    else:
        fix = "decimal: '.' (or ',': the mark its text uses) in its feature entry (target_decimal for the target)"
    raise FormatError(f"column '{column}' holds {kind} values as text (e.g. {values[text].iloc[0]!r}) but "
                      f"declares no format to read them by; set {fix} under dataset in the config")


NON_ASCII_DIGIT = r"(?![0-9])\d"  # a Unicode digit other than 0-9 ('١٩٨٠', '１９８０'): strptime would read it


def _parse_text_dates(text: pd.Series, fmt: str, utc: bool) -> pd.Series:
    """Text read with exactly the declared pattern, in the digits 0-9 only (as numbers are); a pattern without a
    zone reads as UTC."""
    stripped = text.astype("string").str.strip()
    plain = stripped.where(~stripped.str.contains(NON_ASCII_DIGIT, regex=True).fillna(False).astype(bool))
    return pd.to_datetime(plain.astype(object), format=fmt, exact=True, errors="coerce", utc=utc)


def _typed_dates(values: pd.Series, utc: bool) -> pd.Series:
    """Date and time objects as they are (for a date, a zoned time is taken in UTC); anything else (a number, a
    boolean) is not a date."""
    if not pd.api.types.is_datetime64_any_dtype(values.dtype):
        kind = pd.api.types.infer_dtype(values, skipna=True)
        if kind not in ("date", "datetime", "datetime64", "empty"):
            datelike = values.map(lambda v: isinstance(v, date | np.datetime64)).astype(bool)
            values = values.where(datelike)
    typed = pd.to_datetime(values, errors="coerce", utc=utc)
    if not utc and isinstance(typed.dtype, pd.DatetimeTZDtype):  # a timestamptz column read as a date
        typed = typed.dt.tz_convert("UTC").dt.tz_localize(None)
    return typed


def _cast_dates(values: pd.Series, text: pd.Series, kind: str, fmt: str | None) -> pd.Series:
    utc, target = kind == "timestamp", DTYPES[kind]
    if not text.any():
        out = _typed_dates(values, utc).astype(target)
    else:
        out = pd.Series(pd.NaT, index=values.index, dtype=target)
        out[text] = _parse_text_dates(values[text], str(fmt), utc).astype(target)
        if not text.all():
            out[~text] = _typed_dates(values[~text], utc).astype(target)
    return out.dt.normalize() if kind == "date" else out  # a date holds no time of day


def _booleans(values: pd.Series) -> pd.Series:
    """Which cells hold a boolean: True is no measurement, though Python counts it as 1."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.notna().astype(bool)
    if values.dtype != object or pd.api.types.infer_dtype(values, skipna=True) in (
            "string", "floating", "integer", "decimal", "mixed-integer-float", "empty"):
        return pd.Series(False, index=values.index)
    return values.map(lambda v: isinstance(v, bool | np.bool_)).astype(bool)


def _parse_text_numbers(text: pd.Series, mark: str) -> pd.Series:
    """Text that is one number written with the declared mark; anything else (1,234.5, NaN) is not."""
    stripped = text.astype("string").str.strip()
    plain = stripped.where(stripped.str.fullmatch(number_pattern(mark)).fillna(False).astype(bool))
    return pd.to_numeric(plain.str.replace(mark, ".", regex=False), errors="coerce").astype("float64")


def _cast_numbers(values: pd.Series, text: pd.Series, fmt: str | None) -> pd.Series:
    if not text.any():
        return pd.to_numeric(values, errors="coerce").astype("float64")
    out = pd.Series(np.nan, index=values.index, dtype="float64")
    out[text] = _parse_text_numbers(values[text], str(fmt))
    if not text.all():
        out[~text] = pd.to_numeric(values[~text], errors="coerce").astype("float64")
    return out


def _cast_integers(values: pd.Series, text: pd.Series, fmt: str | None) -> pd.Series:
    """Whole numbers only: a fraction or a number past int64 is not an integer."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.astype("Int64")
    number = _cast_numbers(values, text, fmt)
    whole = (number == number.round()) & (number.abs() < 2.0**63)
    return number.where(whole).astype("Int64")


def cast_column(values: pd.Series, kind: str, fmt: str | None, column: str) -> tuple[pd.Series, pd.Series]:
    """The column cast to its contract type, and which cells held a value that did not cast (an
    Unreadable or an infinite number among them: they never cast)."""
    marked = _unreadable_cells(values)
    source, values = values, values.where(~marked) if marked.any() else values
    if kind == "text":
        cast = values.astype("string")
    else:
        booleans = _booleans(values) if kind in NUMBER_KINDS else None
        if booleans is not None and booleans.any():
            values = values.astype(object).where(~booleans)
        text = text_cells(values)
        check_declared(values, text, kind, fmt, column)
        if kind in DATE_KINDS:
            cast = _cast_dates(values, text, kind, fmt)
        elif kind == "integer":
            cast = _cast_integers(values, text, fmt)
        else:
            cast = _cast_numbers(values, text, fmt)
        if kind == "float":
            cast = cast.where(~np.isinf(cast))  # Infinity is no measurement (an integer cast has none)
    failed = (source.notna() & cast.isna()).astype(bool)
    return cast, failed


def cast_strict(values: pd.Series, kind: str, fmt: str | None, column: str) -> pd.Series:
    """The column cast to its contract type, or a ValueError naming the column and values that did not cast."""
    cast, failed = cast_column(values, kind, fmt, column)
    if failed.any():
        examples = [str(v) for v in values[failed].head(EXAMPLES)]
        raise ValueError(f"column '{column}': {int(failed.sum())} value(s) will not {describe_cast(kind, fmt)}, "
                         f"e.g. {examples}")
    return cast
