"""The REST API's parsing and typed contract, without a server: nesting found before parsing, numbers JSON
cannot carry kept apart, echoes and error lists bounded, and the record schema built from the contract."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.contract.config import PipelineConfig
from pipeline.data import validate
from pipeline.serving import rest, schema


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet="[]{}\"\\ab,:"),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=20))
def test_nesting_depth_is_the_json_depth_whatever_the_strings_hold(value: object) -> None:
    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0
    assert rest.nesting_depth(json.dumps(value).encode()) == depth(value)


@pytest.mark.parametrize(("text", "kind"), [("NaN", "constant"), ("Infinity", "constant"), ("-Infinity", "constant"),
                                            ("1e400", "float"), ("-1e400", "float"), ("1" * 400, "integer")])
def test_numbers_json_cannot_carry_parse_as_not_finite_keeping_what_was_written(text: str, kind: str) -> None:
    [record], single = rest.parse_records(f'{{"bmi": {text}}}'.encode(), 10)
    assert single and isinstance(record["bmi"], rest.NotFinite) and record["bmi"] == text


def test_finite_numbers_parse_as_numbers() -> None:
    [record], _ = rest.parse_records(b'{"bmi": 31.5, "id": 7, "small": 1e-300}', 10)
    assert record == {"bmi": 31.5, "id": 7, "small": 1e-300}


@pytest.mark.parametrize("body", [b"[" * 3 + b"]" * 3, b'[{"a": {"b": 1}}]', b'[{"a": [1]}]'])
def test_anything_deeper_than_a_list_of_flat_records_is_refused(body: bytes) -> None:
    with pytest.raises(rest.RequestProblem, match="nests") as refused:
        rest.parse_records(body, 10)
    assert refused.value.status == 422


def test_a_value_of_one_record_may_be_an_array_or_object_and_is_refused_by_field_later() -> None:
    assert rest.parse_records(b'{"a": {"b": 1}, "c": [2]}', 10) == ([{"a": {"b": 1}, "c": [2]}], True)


def test_echo_is_always_short_json() -> None:
    values = [rest.NotFinite("NaN"), math.inf, -math.inf, math.nan, "x" * 1000, 10**40, [1, 2], {"a": 1}, None, True, 3]
    echoed = [rest.echo(v) for v in values]
    assert echoed[:4] == ["NaN", "inf", "-inf", "nan"]
    assert echoed[4] == "x" * rest.MAX_ECHO and echoed[5] == str(10**40)
    assert echoed[6:] == ["a JSON array", "a JSON object", None, True, 3]
    json.dumps(echoed, allow_nan=False)


def test_error_lists_are_bounded_per_record_and_per_answer() -> None:
    errors = {i: [rest._error("f", "unknown_field", "r") for _ in range(50)] for i in range(500)}
    kept = rest.bounded(errors)
    assert set(kept) == set(errors)  # every refused record keeps a reason
    assert max(len(found) for found in kept.values()) == rest.MAX_ERRORS_PER_RECORD + 1
    assert kept[0][-1]["code"] == "too_many_errors" and "30 more" in kept[0][-1]["rule"]
    listed = sum(len([e for e in found if e["code"] != "too_many_errors"]) for found in kept.values())
    assert listed <= rest.MAX_ERRORS + len(errors)


def test_the_record_schema_states_the_contract(config: PipelineConfig) -> None:
    suite = validate.load_suite(config.dataset.expectation_suite)
    model = schema.record_model(config.dataset, suite, config.model)
    document = model.model_json_schema()
    assert document["title"] == "DiabetesProgressionRecord" and document["additionalProperties"] is False
    assert set(document["required"]) == {"birth_date", "visit_date", "sex"}
    assert set(document["properties"]) == {config.dataset.id_column, *config.dataset.feature_names(),
                                           config.dataset.timestamp_column}
    glucose = next(s for s in document["properties"]["glucose"]["anyOf"] if s.get("type") == "number")
    assert (glucose["minimum"], glucose["maximum"]) == (30, 600)
    import re

    pattern = re.compile(document["properties"]["sex"]["pattern"])
    assert all(pattern.search(v) for v in ("F", "m", " f ", "M"))
    assert not any(pattern.search(v) for v in ("U", "Male", "", "FM"))
    assert model.model_validate({"birth_date": "1961-04-23", "visit_date": "2025-03-02", "sex": "F"})
