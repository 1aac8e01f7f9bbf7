"""Records judged in plain Python by checks compiled once from the contract and the suite, for small requests.

`pipeline.serving.rest` judges a request with pandas (`records_frame`, then `judge` through
`quality.classify_with_awaiting` and `pipeline.data.rowchecks`): about 75 ms whatever its size. The checks
here give the same typed values and the same error items (codes, order, rule texts, echoed values) with no
pandas; `tests/unit/test_record_checks.py` holds the two together over generated records. A suite with a rule
or argument not handled here compiles to None, and a value whose reading by pandas is not mirrored here
(a year 0, non-ASCII digits or spaces, a date written other than YYYY-MM-DD) makes `judge` answer None:
the caller then keeps the pandas path.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from pipeline.contract.ages import DAYS_PER_YEAR
from pipeline.contract.config import DEFAULT_AGE_AT_EVENT_YEARS, DatasetContract, QualityPolicy
from pipeline.data.casting import DTYPES, NOT_FINITE
from pipeline.data.quality import REASON_CODES, ZONE_AHEAD, allowed_categories
from pipeline.data.rowchecks import HANDLED_ARGUMENTS
from pipeline.data.validate import column_of, domain_columns
from pipeline.serving.rest import API_RULES, NotFinite, _error, _shape_errors, api_fields, bounded, describe_rule

Row = dict[str, Any]
Errors = dict[int, list[dict[str, Any]]]
Flags = Callable[[list[Row]], list[int]]  # the positions a rule flags
SAFE_SPACES = " \t\n\r\x0b\x0c"  # stripped alike by Python and by pyarrow (the string dtype's storage)
DATE_TEXT = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
NOT_FINITE_RULE = "a finite JSON number (no NaN, Infinity, or number past the float range)"
NUMERIC = ("float", "integer")
ZONE_AHEAD_PY = timedelta(seconds=ZONE_AHEAD.total_seconds())


class Undecided(Exception):
    """A value the compiled checks do not read exactly as pandas does: the request takes the pandas path."""


@dataclass(frozen=True)
class Rule:
    """One row-level rule of the suite: how it flags rows, and the reason it gives them."""

    code: str
    column: str  # as reported: 'a', 'A/B' or 'a+b+c'
    columns: tuple[str, ...]
    text: str  # `rest.describe_rule`'s text
    flags: Flags


def _strip(text: str) -> str:
    stripped = text.strip(SAFE_SPACES)
    if stripped != stripped.strip():
        raise Undecided  # other Unicode spaces at an edge: pyarrow and Python disagree on some
    return stripped


def _number(value: Any, kind: str) -> tuple[Any, bool]:
    """A JSON number as `cast_column` reads it (integers through float64, as pandas does), and whether it failed."""
    if value is None:
        return None, False
    if isinstance(value, str | bool) or not isinstance(value, int | float):
        return None, True
    try:
        number = float(value)
    except OverflowError:
        raise Undecided from None
    if kind == "float":
        if number == 0 and math.copysign(1, number) < 0:
            raise Undecided  # pandas keeps -0.0 or makes it 0.0 by the values before it in the column
        return number, False
    return (int(number), False) if number == round(number) and abs(number) < 2.0**63 else (None, True)


def _date(value: Any) -> tuple[Any, bool]:
    """Text YYYY-MM-DD (spaces around stripped) as a naive midnight datetime, and whether it failed."""
    if value is None:
        return None, False
    if not isinstance(value, str):
        return None, True
    text = _strip(value)
    found = DATE_TEXT.fullmatch(text)
    if found is None:
        if any(c.isdigit() for c in text) or not text.isascii():
            raise Undecided  # strptime's other spellings (2020-1-1, Unicode digits): pandas decides
        return None, True
    year, month, day = (int(g) for g in found.groups())
    if year == 0:
        raise Undecided  # pandas reads year 0; Python's datetime cannot hold it
    try:
        return datetime(year, month, day), False
    except ValueError:
        return None, True


def _timestamp(value: Any) -> tuple[Any, bool]:
    """RFC 3339 text with a zone as an aware UTC datetime (`rest._timestamp`), and whether it failed."""
    if value is None:
        return None, False
    if not isinstance(value, str):
        return None, True
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None, True
    if parsed.tzinfo is None:
        return None, True
    try:
        return parsed.astimezone(UTC), False
    except OverflowError:
        raise Undecided from None


def _text(value: Any) -> tuple[Any, bool]:
    if value is None:
        return None, False
    return (value, False) if isinstance(value, str) else (None, True)


def cast_value(value: Any, kind: str) -> tuple[Any, bool]:
    """A JSON value cast by the API's rules (`rest._cast`) to a plain Python value, and whether it failed."""
    if kind in NUMERIC:
        return _number(value, kind)
    if kind == "date":
        return _date(value)
    if kind == "timestamp":
        return _timestamp(value)
    return _text(value)


def cell_text(value: Any) -> str | None:
    """A typed value as a reason quotes it (`str` of the pandas cell)."""
    return None if value is None else str(value)


def values_text(row: Row, columns: tuple[str, ...]) -> str | None:
    """The value a reason quotes: the cell, or 'a=1, b=2' for several columns (`quality._values`)."""
    if len(columns) == 1:
        return cell_text(row[columns[0]])
    return ", ".join(f"{c}={cell_text(row[c]) or 'missing'}" for c in columns) or None


def _not_null(column: str) -> Flags:
    return lambda rows: [i for i, r in enumerate(rows) if r[column] is None]


def _in_set(column: str, allowed: list[Any]) -> Flags:
    return lambda rows: [i for i, r in enumerate(rows) if r[column] is not None and r[column] not in allowed]


def _outside(value: Any, kwargs: dict[str, Any], as_float: bool) -> bool:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    v = float(value) if as_float else value
    if low is not None and ((v <= low) if kwargs.get("strict_min") else (v < low)):
        return True
    return high is not None and ((v >= high) if kwargs.get("strict_max") else (v > high))


def _between(column: str, kwargs: dict[str, Any], kind: str) -> Flags:
    as_float = kind == "float" or any(isinstance(kwargs.get(b), float) for b in ("min_value", "max_value"))
    return lambda rows: [i for i, r in enumerate(rows) if r[column] is not None and _outside(r[column], kwargs, as_float)]


def _unique(column: str) -> Flags:
    def flags(rows: list[Row]) -> list[int]:
        counts = Counter(r[column] for r in rows if r[column] is not None)
        return [i for i, r in enumerate(rows) if r[column] is not None and counts[r[column]] > 1]
    return flags


def _never(missing: list[bool]) -> bool:
    return False


def _compound_unique(columns: list[str], ignore: str) -> Flags:
    skip: Callable[[list[bool]], bool] = {"all_values_are_missing": all, "any_value_is_missing": any,
                                          "never": _never}[ignore]

    def flags(rows: list[Row]) -> list[int]:
        keys = [None if skip([r[c] is None for c in columns]) else tuple(r[c] for c in columns) for r in rows]
        counts = Counter(k for k in keys if k is not None)
        return [i for i, k in enumerate(keys) if k is not None and counts[k] > 1]
    return flags


def _a_greater_than_b(a: str, b: str, or_equal: bool, ignore: str) -> Flags:
    def flags(rows: list[Row]) -> list[int]:
        out = []
        for i, r in enumerate(rows):
            x, y = r[a], r[b]
            if (ignore == "either_value_is_missing" and (x is None or y is None)) or (
                    ignore == "both_values_are_missing" and x is None and y is None):
                continue
            holds = x is not None and y is not None and (x >= y if or_equal else x > y)
            if not holds:
                out.append(i)
        return out
    return flags


def _row_flags(kind: str, kwargs: dict[str, Any], types: dict[str, str]) -> Flags | None:
    """How one row-level rule flags rows, when `rowchecks` would handle it for these column types; else None."""
    if kind == "expect_column_values_to_not_be_null":
        return _not_null(kwargs["column"])
    if kind == "expect_column_values_to_be_in_set":
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in kwargs["value_set"])
        if numeric != (types[kwargs["column"]] in NUMERIC):
            return None  # a numeric set against text (or the reverse): rowchecks leaves it to GX
        return _in_set(kwargs["column"], list(kwargs["value_set"]))
    if kind == "expect_column_values_to_be_between":
        bounds = (kwargs.get("min_value"), kwargs.get("max_value"))
        if types[kwargs["column"]] not in NUMERIC or any(b is not None and not isinstance(b, int | float) for b in bounds):
            return None
        return _between(kwargs["column"], kwargs, types[kwargs["column"]])
    if kind == "expect_column_values_to_be_unique":
        return _unique(kwargs["column"])
    if kind == "expect_compound_columns_to_be_unique":
        ignore = kwargs.get("ignore_row_if", "all_values_are_missing")
        return _compound_unique(list(kwargs["column_list"]), ignore) if ignore in (
            "all_values_are_missing", "any_value_is_missing", "never") else None
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        a, b, ignore = kwargs["column_A"], kwargs["column_B"], kwargs.get("ignore_row_if", "both_values_are_missing")
        comparable = types[a] == types[b] or (types[a] in NUMERIC and types[b] in NUMERIC)
        if not comparable or ignore not in ("either_value_is_missing", "both_values_are_missing", "neither"):
            return None
        return _a_greater_than_b(a, b, bool(kwargs.get("or_equal")), ignore)
    if kind == "expect_column_values_to_be_in_type_list":
        return (lambda rows: []) if DTYPES[types[kwargs["column"]]] in kwargs["type_list"] else None
    return None


def compile_rules(contract: DatasetContract, suite: dict[str, Any]) -> list[Rule] | None:
    """The suite's rules as plain checks, in the suite's order; None when one is not handled (as `rowchecks`)."""
    types, rules = contract.column_types(), []
    for expectation in suite.get("expectations") or []:
        kind, kwargs = expectation["type"], dict(expectation.get("kwargs") or {})
        columns = domain_columns(kind, kwargs)
        if set(kwargs) - HANDLED_ARGUMENTS or any(c not in types for c in columns):
            return None
        if kind == "expect_table_columns_to_match_set":
            if set(types) != set(kwargs["column_set"]):
                return None
            continue
        flags = _row_flags(kind, kwargs, types)
        if flags is None:
            return None
        reason = {"rule": kind, "column": column_of(kind, kwargs)}
        rules.append(Rule(REASON_CODES.get(kind, kind), reason["column"], tuple(columns),
                          describe_rule(reason, suite), flags))
    return rules


@dataclass(frozen=True)
class RecordChecks:
    """The contract's casts, normalisations, suite rules and plausibility checks, compiled for plain records."""

    contract: DatasetContract
    rules: list[Rule]
    categories: dict[str, dict[str, str]]  # text column -> upper-case value -> the suite's spelling
    age_bounds: tuple[float, float]

    def judge(self, records: list[Any], now: datetime) -> tuple[list[Row], Errors] | None:
        """Every record's typed, normalised values and its API error items (as `rest.judge` then `rest.bounded`
        give them); None when a value is one only pandas decides."""
        try:
            rows, errors = self._typed(records, now)
            reasons = self._suite_reasons(rows)
        except Undecided:
            return None
        for i, found in self._plausibility(rows, reasons).items():
            reasons.setdefault(i, []).extend(found)
        for i, found in sorted(reasons.items()):
            unreadable = {e["field"] for e in errors.get(i, [])}
            for code, column, rule, value in found:
                if (code == "missing_required" and column == self.contract.target_column) or \
                        set(column.split("/")) <= unreadable:
                    continue
                errors.setdefault(i, []).append(_error(column, code, rule, value))
        return rows, bounded(errors)

    def valid_rows(self, records: list[Any], now: datetime) -> tuple[pd.DataFrame, Errors] | None:
        """The valid records as one frame of the contract's dtypes, and every record's errors (`rest.RecordChecks`)."""
        judged = self.judge(records, now)
        if judged is None:
            return None
        rows, errors = judged
        return rows_frame([rows[i] for i in range(len(records)) if i not in errors], self.contract), errors

    def _typed(self, records: list[Any], now: datetime) -> tuple[list[Row], Errors]:
        """Records cast (`rest.records_frame`) and normalised (`quality.normalise`), with their cast errors."""
        contract, types = self.contract, self.contract.column_types()
        errors = _shape_errors(records, api_fields(contract))
        objects = [r if isinstance(r, dict) else {} for r in records]
        rows: list[Row] = []
        for i, record in enumerate(objects):
            row: Row = {}
            for column in contract.columns():
                raw = record.get(column)
                if column == contract.target_column:
                    row[column] = None
                    continue
                if isinstance(raw, NotFinite):
                    errors.setdefault(i, []).append(_error(column, NOT_FINITE, NOT_FINITE_RULE, raw))
                    raw = None
                row[column], failed = cast_value(raw, types[column])
                if failed:
                    errors.setdefault(i, []).append(_error(column, "wrong_type", API_RULES[types[column]], raw))
            rows.append(row)
        self._fill_defaults(rows, objects, now)
        for row in rows:
            self._normalise(row)
        return rows, errors

    def _fill_defaults(self, rows: list[Row], objects: list[dict[str, Any]], now: datetime) -> None:
        """`rest._fill_defaults`: an id unique in the request for a record without one, `now` as its timestamp."""
        id_column, stamp = self.contract.id_column, self.contract.timestamp_column
        no_id = [i for i, r in enumerate(objects) if r.get(id_column) is None]
        if no_id and self.contract.id_type == "text":
            for i in no_id:
                rows[i][id_column] = f"\x00record-{i}"
        elif no_id:
            low = min([0, *(r[id_column] for r in rows if r[id_column] is not None)]) - 1
            for i in no_id:
                rows[i][id_column] = low - i
        for i, record in enumerate(objects):
            if record.get(stamp) is None:
                rows[i][stamp] = now.astimezone(UTC)

    def _normalise(self, row: Row) -> None:
        """Text stripped and categories in the suite's letter case (`quality.normalise`)."""
        for column, kind in self.contract.column_types().items():
            if kind != "text" or row[column] is None:
                continue
            value = _strip(row[column])
            if column in self.categories:
                if not value.isascii():
                    raise Undecided  # pyarrow's and Python's upper case differ past ASCII
                value = self.categories[column].get(value.upper(), value)
            row[column] = value

    def _suite_reasons(self, rows: list[Row]) -> dict[int, list[tuple[str, str, str, str | None]]]:
        """(code, column, rule text, value) per record, rule by rule in the suite's order."""
        reasons: dict[int, list[tuple[str, str, str, str | None]]] = {}
        for rule in self.rules:
            for i in rule.flags(rows):
                reasons.setdefault(i, []).append((rule.code, rule.column, rule.text, values_text(rows[i], rule.columns)))
        return reasons

    def _plausibility(self, rows: list[Row], reasons: dict[int, list[tuple[str, str, str, str | None]]]
                      ) -> dict[int, list[tuple[str, str, str, str | None]]]:
        """`future_date` and `implausible_age` (`quality.plausibility_reasons`), pairs judged already skipped."""
        contract, recorded = self.contract, self.contract.timestamp_column
        birth, event = contract.names_with_role("birth_date"), contract.names_with_role("event_date")
        found: dict[int, list[tuple[str, str, str, str | None]]] = {}
        for i, row in enumerate(rows):
            judged = {frozenset(r[1].split("/")) for r in reasons.get(i, []) if r[1].count("/") == 1}
            future = False
            for column in birth + event:
                if not _after_recording(row[column], row[recorded]):
                    continue
                future = True
                if frozenset((column, recorded)) not in judged:
                    found.setdefault(i, []).append((
                        "future_date", f"{column}/{recorded}", f"{column} not after {recorded}, the time the row was "
                        "recorded", values_text(row, (column, recorded))))
            if birth and event and not future and frozenset((birth[0], event[0])) not in judged:
                age = _age(row[birth[0]], row[event[0]])
                low, high = self.age_bounds
                if age is not None and (age < low or age > high):
                    found.setdefault(i, []).append((
                        "implausible_age", f"{birth[0]}/{event[0]}",
                        f"age at {event[0]} between {low:g} and {high:g} years (quality.age_at_event_years)",
                        f"age {age:.1f} years ({values_text(row, (birth[0], event[0]))})"))
        return found


def _after_recording(day: datetime | None, recorded: datetime | None) -> bool:
    """A calendar date later than the date anywhere on Earth when the row was recorded (UTC+14)."""
    if day is None or recorded is None:
        return False
    try:
        latest = (recorded.astimezone(UTC) + ZONE_AHEAD_PY).replace(tzinfo=None)
    except OverflowError:
        return False  # past year 9999: no date is later
    return day.date() > latest.date()


def _age(birth: datetime | None, event: datetime | None) -> float | None:
    return None if birth is None or event is None else (event - birth).days / DAYS_PER_YEAR


def compile_checks(contract: DatasetContract, suite: dict[str, Any],
                   quality_policy: QualityPolicy | None) -> RecordChecks | None:
    """The record checks for this contract and suite; None when the suite holds a rule they do not handle, or
    the contract a date role typed otherwise than as a date."""
    types = contract.column_types()
    roles = contract.names_with_role("birth_date") + contract.names_with_role("event_date")
    if any(types[c] != "date" for c in roles):
        return None  # a timestamp birth or event date compares instant to instant: the pandas path
    rules = compile_rules(contract, suite)
    if rules is None:
        return None
    categories = {}
    for column, allowed in allowed_categories(suite).items():
        by_upper = {str(v).upper(): v for v in allowed}
        if types.get(column) == "text" and len(by_upper) == len(allowed):
            categories[column] = by_upper
    bounds = quality_policy.age_at_event_years if quality_policy else DEFAULT_AGE_AT_EVENT_YEARS
    return RecordChecks(contract, rules, categories, (float(bounds[0]), float(bounds[1])))


def rows_frame(rows: list[Row], contract: DatasetContract) -> pd.DataFrame:
    """Typed rows as one frame of the contract's columns and dtypes, as the pandas path's `normalised` holds them."""
    types = contract.column_types()
    data = {c: pd.array([r[c] for r in rows], dtype=DTYPES[types[c]]) for c in contract.columns()}
    return pd.DataFrame(data, index=range(len(rows)))
