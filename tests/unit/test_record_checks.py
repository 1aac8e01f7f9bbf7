"""The compiled record checks give the pandas path's verdicts: same error items, same typed values.

The pandas path is the reference (`rest.records_frame`, `rest.judge` through `quality`, `rest.bounded`); generated
requests cover every field with valid values, values at and across each suite bound, nulls, missing fields,
wrong JSON types, NotFinite, padded and re-cased categories, impossible and future dates, implausible ages,
duplicate ids and records, unknown fields and non-objects.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.contract.config import PipelineConfig, load_config
from pipeline.contract.settings import PROJECT_ROOT
from pipeline.data.validate import load_suite
from pipeline.model.features import model_inputs
from pipeline.model.intervals import input_hashes, row_hashes
from pipeline.serving import rest
from pipeline.serving.records import RecordChecks, compile_checks, rows_frame

CONFIG = load_config(PROJECT_ROOT / "pipeline.yaml")
CONTRACT = CONFIG.dataset
SUITE = load_suite(CONTRACT.expectation_suite)
NOW = datetime(2026, 12, 7, 13, 0, 30, 250000, tzinfo=UTC)


@dataclass(frozen=True)
class Workspace:
    """What `rest.judge` reaches of a workspace: its config."""

    config: PipelineConfig


def _bounds() -> dict[str, tuple[float, float]]:
    return {e["kwargs"]["column"]: (e["kwargs"]["min_value"], e["kwargs"]["max_value"]) for e in SUITE["expectations"]
            if e["type"] == "expect_column_values_to_be_between"}


BOUNDS = _bounds()
ODD = st.sampled_from([None, True, False, "12", "", " ", "abc", [1], {"a": 1}, rest.NotFinite("NaN"),
                       rest.NotFinite("-Infinity"), rest.NotFinite("1e999")])


def number(column: str) -> st.SearchStrategy[Any]:
    """At, just inside and just across each bound, in range, whole and fractional, or an odd JSON value."""
    low, high = BOUNDS[column]
    edges = [low, high, float(low), float(high), low - 1e-9, high + 1e-9, low + 1e-9, high - 1e-9, int(low) - 1,
             int(high) + 1, -0.0, 0, 10**20, 1e300]
    return st.one_of(st.sampled_from(edges), st.floats(low, high), st.integers(int(low), int(high)), ODD)


DAYS = st.dates(datetime(1890, 1, 1).date(), datetime(2028, 12, 31).date())
DATE = st.one_of(DAYS.map(lambda d: d.isoformat()), DAYS.map(lambda d: f" {d.isoformat()}\t"),
                 st.sampled_from(["2020-02-30", "2020-13-01", "2026-12-08", "2026-12-09", "2026-12-07", "1908-12-07",
                                  "1908-12-08", "2008-12-07", "2008-12-08", "9999-12-31", "0001-01-01", "20200101",
                                  "not a date", "2020-1-1", "0000-01-01", "07/12/2020"]), ODD)
STAMP = st.one_of(st.datetimes(datetime(1990, 1, 1), datetime(2030, 1, 1), timezones=st.just(UTC)).map(
    lambda t: t.isoformat()), st.sampled_from(["2026-12-07T13:00:00Z", "2026-12-07T10:00:00-11:00",
                                               "2026-12-06T23:59:59+14:00", "2026-12-07", "2026-12-07T13:00:00",
                                               "0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00",
                                               "2026-12-07T13:00:00.123456+00:00"]), ODD)
SEX = st.one_of(st.sampled_from(["F", "M", "f", " m ", "\tF\n", "Male", "x", "", " ", "ß", "f\x1f", "\u00a0M"]), ODD)
ID = st.one_of(st.integers(-3, 5), st.sampled_from([2**53 + 1, 2**63, 3.0, 3.5, -1]), ODD)


def field_value(column: str) -> st.SearchStrategy[Any]:
    """A value for one field of a record."""
    if column == CONTRACT.id_column:
        return ID
    if column in ("birth_date", "visit_date"):
        return DATE
    if column == CONTRACT.timestamp_column:
        return STAMP
    if column == "sex":
        return SEX
    return number(column)


VALID = {"patient_id": 1, "birth_date": "1960-05-01", "visit_date": "2020-06-01", "sex": "F", "bmi": 25.0,
         "bp_mean": 90.0, "tc": 190.0, "ldl": 110.0, "hdl": 50.0, "tch": 4.0, "ltg": 4.6, "glucose": 95.0,
         "recorded_at": "2020-06-02T09:00:00Z"}


@st.composite
def valid_record(draw: st.DrawFn) -> dict[str, Any]:
    """A record the contract accepts, its own id and measurements drawn inside the bounds."""
    out: dict[str, Any] = {**VALID, "patient_id": draw(st.integers(100, 10**6))}
    for column, (low, high) in BOUNDS.items():
        if column in out:
            out[column] = draw(st.one_of(st.floats(low, high), st.integers(int(low) + 1, int(high))))
    return out


@st.composite
def record(draw: st.DrawFn) -> Any:
    """A record: mostly valid, a few fields changed, dropped or added; sometimes not an object."""
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from([None, 5, "a record", [1, 2]]))
    out = draw(st.one_of(st.just(dict(VALID)), valid_record()))
    for column in draw(st.lists(st.sampled_from(sorted(VALID)), max_size=4, unique=True)):
        action = draw(st.integers(0, 5))
        if action == 0:
            del out[column]
        else:
            out[column] = draw(field_value(column))
    if draw(st.integers(0, 10)) == 0:
        out[draw(st.sampled_from(["progression_12m", "label_recorded_at", "colour", "age"]))] = draw(
            st.one_of(st.just(1.5), STAMP))
    if draw(st.integers(0, 20)) == 0:  # past MAX_ERRORS_PER_RECORD: the rest said to be left out
        out.update({f"extra_{k}": k for k in range(draw(st.integers(15, 25)))})
    return out


@st.composite
def request(draw: st.DrawFn) -> list[Any]:
    """One to six records, with now and then a copy of an earlier one or of its id."""
    records = draw(st.lists(record(), min_size=1, max_size=6))
    for _ in range(draw(st.integers(0, 2))):
        source = copy.deepcopy(draw(st.sampled_from(records)))
        if isinstance(source, dict) and draw(st.booleans()):
            source["patient_id"] = draw(ID)
        records.append(source)
    return records


CHECKS = compile_checks(CONTRACT, SUITE, CONFIG.quality)


def pandas_path(records: list[Any]) -> tuple[pd.DataFrame, dict[int, list[dict[str, Any]]]]:
    frame, cast_errors = rest.records_frame(records, CONTRACT, NOW)
    normalised, errors = rest.judge(frame, CONTRACT, SUITE, Workspace(CONFIG), cast_errors)  # type: ignore[arg-type]
    return normalised, rest.bounded(errors)


def assert_same(checks: RecordChecks, records: list[Any]) -> bool:
    """The compiled verdict equals the pandas path's; False when the compiled checks left it to pandas."""
    compiled = checks.judge(copy.deepcopy(records), NOW)
    normalised, errors = pandas_path(records)
    if compiled is None:
        return False
    rows, found = compiled
    assert found == errors
    valid = [i for i in range(len(records)) if i not in errors]
    expected = normalised.iloc[valid].reset_index(drop=True)
    got = rows_frame([rows[i] for i in valid], CONTRACT)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    if valid:  # what the model scores and the prediction log hashes: the same for any model
        pd.testing.assert_frame_equal(model_inputs(got, CONTRACT), model_inputs(expected.reset_index(drop=True),
                                                                                CONTRACT), check_exact=True)
        assert input_hashes(got, CONTRACT) == input_hashes(expected, CONTRACT)
        assert row_hashes([rows[i] for i in valid], CONTRACT) == input_hashes(expected, CONTRACT)  # no frame
    return True


def test_the_shipped_suite_compiles() -> None:
    assert CHECKS is not None


@settings(derandomize=True, max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(request())
def test_compiled_checks_give_the_pandas_verdicts(records: list[Any]) -> None:
    assert CHECKS is not None
    event("decided by the compiled checks" if assert_same(CHECKS, records) else "left to pandas")


def test_most_requests_are_decided_without_pandas() -> None:
    assert CHECKS is not None
    assert assert_same(CHECKS, [dict(VALID)])
    assert assert_same(CHECKS, [dict(VALID), {**VALID, "bmi": 70, "sex": " m "}, {**VALID, "bmi": 70.0000001},
                                {**VALID, "patient_id": 2}, {**VALID, "birth_date": "2020-06-01"}, 5])


@pytest.mark.parametrize("value", ["0000-01-01", "2020-1-1", "\u00a0M"])
def test_values_pandas_reads_its_own_way_are_left_to_it(value: str) -> None:
    assert CHECKS is not None
    column = "sex" if value.endswith("M") else "birth_date"
    assert CHECKS.judge([{**VALID, column: value}], NOW) is None


@pytest.mark.parametrize("expectation", [
    {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "sex", "regex": "^[FM]$"}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "bmi", "min_value": 12, "mostly": 0.9}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "visit_date", "min_value": "2000-01-01"}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "sex", "value_set": [1, 2]}},
])
def test_a_suite_with_an_unhandled_rule_does_not_compile(expectation: dict[str, Any]) -> None:
    suite = {**SUITE, "expectations": [*SUITE["expectations"], expectation]}
    assert compile_checks(CONTRACT, suite, CONFIG.quality) is None


def test_rows_hash_as_their_frame_hashes() -> None:
    """What the API hashes with no frame (`row_hashes`) is what the frame path and batch scoring hash: missing
    values of every type, floats Arrow writes its own way, whole floats, non-ASCII text, dates at the edges."""
    assert CHECKS is not None
    judged = CHECKS.judge([dict(VALID)], NOW)
    assert judged is not None
    base = judged[0][0]
    features = CONTRACT.feature_names()
    rows = [base, {**base, **{c: None for c in features}}]
    for value in (0.1, 1e20, 1e-7, 123456789.123, 2.0, 5e-324, 1.7976931348623157e308, 33.333333333333336):
        rows.append({**base, "bmi": value, "glucose": -value})
    rows += [{**base, "sex": "ß\u00e9 \x1f="}, {**base, "birth_date": datetime(1, 1, 1), "visit_date": datetime(9999, 12, 31)}]
    assert row_hashes(rows, CONTRACT) == input_hashes(rows_frame(rows, CONTRACT), CONTRACT)
    assert len(set(row_hashes(rows, CONTRACT))) == len(rows)
