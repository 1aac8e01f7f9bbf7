"""The suite's common row-level rules, evaluated with pandas in milliseconds, for scoring.

A forecast request carries one record, or a hundred; Great Expectations spends about 0.3 s of CPU
on any batch, whatever its size, before it judges a row. Scoring (the batch table and the REST API)
therefore judges records here, with the same rules read from the same suite, and gives its result
in the shape of Great Expectations' own (`results`, each with `unexpected_index_list`), so the same
code turns either into reasons. Training keeps Great Expectations: it is the reference, and
`tests/integration/test_rowchecks.py` holds this module to its verdicts, row for row.

A suite with any rule, argument or column type not handled here (`mostly`, a date range, a regex,
...) is judged by Great Expectations: `suite_result` then returns None.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

Check = Callable[[pd.DataFrame, dict[str, Any]], "np.ndarray | None"]  # the rows a rule flags, None: not handled


def _mask(flags: Any) -> np.ndarray:
    return np.asarray(flags, dtype=bool)


def _numeric(series: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))


def _not_null(frame: pd.DataFrame, kwargs: dict[str, Any]) -> np.ndarray:
    return _mask(frame[kwargs["column"]].isna())


def _in_set(frame: pd.DataFrame, kwargs: dict[str, Any]) -> np.ndarray | None:
    values = frame[kwargs["column"]]
    if _numeric(values) != all(isinstance(v, int | float) and not isinstance(v, bool) for v in kwargs["value_set"]):
        return None  # numbers against text (or the reverse): GX's own coercions decide
    return _mask(values.notna() & ~values.isin(list(kwargs["value_set"])))


def _between(frame: pd.DataFrame, kwargs: dict[str, Any]) -> np.ndarray | None:
    values = frame[kwargs["column"]]
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if not _numeric(values) or any(b is not None and not isinstance(b, int | float) for b in (low, high)):
        return None  # dates and parameters ($PARAMETER): GX
    below = np.zeros(len(values), dtype=bool) if low is None else (
        (values <= low) if kwargs.get("strict_min") else (values < low)).to_numpy(dtype=bool, na_value=False)
    above = np.zeros(len(values), dtype=bool) if high is None else (
        (values >= high) if kwargs.get("strict_max") else (values > high)).to_numpy(dtype=bool, na_value=False)
    return _mask(below | above)


def _unique(frame: pd.DataFrame, kwargs: dict[str, Any]) -> np.ndarray:
    values = frame[kwargs["column"]]
    return _mask(values.notna() & values.duplicated(keep=False))


def _compound_unique(frame: pd.DataFrame, kwargs: dict[str, Any]) -> np.ndarray | None:
    columns = list(kwargs["column_list"])
    missing = frame[columns].isna()
    ignore = kwargs.get("ignore_row_if", "all_values_are_missing")
    if ignore == "all_values_are_missing":
        ignored = missing.all(axis=1)
    elif ignore == "any_value_is_missing":
        ignored = missing.any(axis=1)
    elif ignore == "never":
        ignored = pd.Series(False, index=frame.index)
    else:
        return None
    considered = frame.loc[~ignored, columns]
    flagged = pd.Series(False, index=frame.index)
    flagged[considered.index] = considered.duplicated(keep=False)
    return _mask(flagged)


def _a_greater_than_b(frame: pd.DataFrame, kwargs: dict[str, Any]) -> np.ndarray | None:
    a, b = frame[kwargs["column_A"]], frame[kwargs["column_B"]]
    if pd.api.types.is_object_dtype(a) or pd.api.types.is_object_dtype(b):
        if not (_all_dates(a) and _all_dates(b)):
            return None
        a, b = pd.to_datetime(a), pd.to_datetime(b)
    elif not (_numeric(a) and _numeric(b)) and a.dtype != b.dtype:
        return None
    ignore = kwargs.get("ignore_row_if", "both_values_are_missing")
    if ignore == "either_value_is_missing":
        ignored = a.isna() | b.isna()
    elif ignore == "both_values_are_missing":
        ignored = a.isna() & b.isna()
    elif ignore == "neither":
        ignored = pd.Series(False, index=frame.index)
    else:
        return None
    holds = (a >= b) if kwargs.get("or_equal") else (a > b)
    return _mask(~ignored & ~holds.fillna(False).astype(bool))


def _all_dates(values: pd.Series) -> bool:
    return all(type(v) is datetime.date for v in values.dropna())  # plain dates, as the contract's date columns hold them


def _type_list(frame: pd.DataFrame, kwargs: dict[str, Any]) -> np.ndarray | None:
    if str(frame[kwargs["column"]].dtype) in kwargs["type_list"]:
        return np.zeros(len(frame), dtype=bool)
    return None  # GX then checks value by value


ROW_RULES: dict[str, Check] = {
    "expect_column_values_to_not_be_null": _not_null,
    "expect_column_values_to_be_in_set": _in_set,
    "expect_column_values_to_be_between": _between,
    "expect_column_values_to_be_unique": _unique,
    "expect_compound_columns_to_be_unique": _compound_unique,
    "expect_column_pair_values_a_to_be_greater_than_b": _a_greater_than_b,
    "expect_column_values_to_be_in_type_list": _type_list,
}
HANDLED_ARGUMENTS = {"column", "column_A", "column_B", "column_list", "value_set", "min_value", "max_value",
                     "strict_min", "strict_max", "or_equal", "ignore_row_if", "type_list", "column_set",
                     "exact_match"}


def _columns_match(frame: pd.DataFrame, kwargs: dict[str, Any]) -> bool | None:
    """expect_table_columns_to_match_set, when the table has exactly the set's columns (else GX decides)."""
    return True if set(frame.columns) == set(kwargs["column_set"]) else None


def suite_result(frame: pd.DataFrame, suite: dict[str, Any]) -> dict[str, Any] | None:
    """The suite's verdict on `frame` (rows named by index), shaped as Great Expectations gives it; None
    when some rule is not handled here."""
    results = []
    for expectation in suite.get("expectations") or []:
        kind, kwargs = expectation["type"], dict(expectation.get("kwargs") or {})
        if set(kwargs) - HANDLED_ARGUMENTS or any(c not in frame.columns for c in _named_columns(kwargs)):
            return None
        config = {"type": kind, "kwargs": kwargs}
        if kind == "expect_table_columns_to_match_set":
            if _columns_match(frame, kwargs) is None:
                return None
            results.append({"success": True, "expectation_config": config, "result": {}, "exception_info": {}})
            continue
        rule = ROW_RULES.get(kind)
        flagged = rule(frame, kwargs) if rule is not None else None
        if flagged is None:
            return None
        rows = [int(i) for i in frame.index[flagged]]
        results.append({"success": not rows, "expectation_config": config,
                        "result": {"unexpected_index_list": rows, "unexpected_count": len(rows),
                                   "element_count": len(frame)}, "exception_info": {}})
    passed = sum(bool(r["success"]) for r in results)
    return {"success": passed == len(results), "results": results, "checked_by": "pipeline.data.rowchecks",
            "statistics": {"evaluated_expectations": len(results), "successful_expectations": passed,
                           "unsuccessful_expectations": len(results) - passed,
                           "success_percent": 100.0 * passed / len(results) if results else 100.0}}


def _named_columns(kwargs: dict[str, Any]) -> list[str]:
    named = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    return [str(c) for c in named + list(kwargs.get("column_list") or [])]
