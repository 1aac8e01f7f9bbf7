"""One definition of the retrain params: the Airflow Params and the CLI check values the same way, never clamping."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from pipeline.contract import params

NOW = datetime(2026, 7, 1, 12, tzinfo=UTC)


def test_the_defaults_fill_an_empty_conf() -> None:
    assert params.check_conf({}, NOW) == {"margin": None, "dry_run": False, "force": False, "as_of": None}


def test_an_unknown_key_is_refused_by_name_listing_the_form_fields() -> None:
    with pytest.raises(params.ParamsRefused, match=re.escape(
            "unknown param 'marin': the retrain params are Promotion margin (margin), Dry run (dry_run), Force (force), "
            "As of (past data cut-off) (as_of) (a typo?)")):
        params.check_conf({"marin": 5}, NOW)


def test_a_refused_trigger_says_that_nothing_ran() -> None:
    with pytest.raises(params.ParamsRefused, match=re.escape(
            "trigger params refused, nothing ran: param Dry run (dry_run): 'yes' is not true or false")):
        params.check_trigger({"dry_run": "yes"}, NOW)
    assert params.check_trigger({"force": True}, NOW)["force"] is True


@pytest.mark.parametrize("margin", [5, -0.01, 0.51, float("nan"), float("inf")])
def test_a_margin_out_of_range_is_refused_not_clamped(margin: float) -> None:
    with pytest.raises(params.ParamsRefused, match=r"param Promotion margin \(margin\): .* is outside \[0, 0.5\] \(0.01 means 1 %\)"):
        params.check_conf({"margin": margin}, NOW)


@pytest.mark.parametrize("margin", [0, 0.02, 0.5])
def test_a_margin_in_range_is_kept_as_given(margin: float) -> None:
    assert params.check_conf({"margin": margin}, NOW)["margin"] == margin


@pytest.mark.parametrize(("conf", "message"), [
    ({"margin": "0.1"}, "param Promotion margin (margin): '0.1' is not a number"),
    ({"margin": True}, "param Promotion margin (margin): True is not a number"),
    ({"dry_run": "yes"}, "param Dry run (dry_run): 'yes' is not true or false"),
    ({"as_of": "last tuesday"}, "param As of (past data cut-off) (as_of): 'last tuesday' is not an ISO timestamp"),
    ({"as_of": "2026-07-02T00:00:00+00:00"},
     "param As of (past data cut-off) (as_of): 2026-07-02T00:00:00+00:00 is in the future"),
])
def test_a_value_of_the_wrong_kind_is_refused(conf: dict[str, object], message: str) -> None:
    with pytest.raises(params.ParamsRefused, match=re.escape(message)):
        params.check_conf(conf, NOW)


def test_as_of_is_a_past_cut_off_utc_when_it_names_no_offset() -> None:
    checked = params.check_conf({"as_of": "2026-03-01T00:00:00"}, NOW)
    assert params.as_of(checked, NOW) == datetime(2026, 3, 1, tzinfo=UTC)
    assert params.as_of(params.check_conf({}, NOW), NOW) is None


def test_the_cli_reads_a_typed_number_by_the_same_rule() -> None:
    assert params.parse_number("margin", "0.02") == 0.02
    with pytest.raises(params.ParamsRefused, match=r"^5 is outside \[0, 0.5\]"):
        params.parse_number("margin", "5")
    with pytest.raises(params.ParamsRefused, match=r"^'lots' is not a number$"):
        params.parse_number("margin", "lots")


def test_the_airflow_schema_keeps_its_bounds_out_of_the_forms_reach() -> None:
    """The Trigger form's number field clamps to a top-level maximum (5 became 0.5): the bounds sit in allOf,
    where the server's validation still applies them."""
    schema = params.json_schema(params.BY_NAME["margin"])
    assert "maximum" not in schema and "minimum" not in schema
    assert schema["allOf"] == [{"minimum": 0.0, "maximum": 0.5}]
    assert schema["type"] == ["null", "number"] and schema["default"] is None
    assert params.json_schema(params.BY_NAME["dry_run"])["type"] == "boolean"
    assert params.json_schema(params.BY_NAME["as_of"])["format"] == "date-time"


def test_airflow_refuses_an_out_of_range_margin_with_this_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = {k: v for k, v in params.json_schema(params.BY_NAME["margin"]).items() if k != "default"}
    with pytest.raises(jsonschema.ValidationError, match="5 is greater than the maximum of 0.5"):
        jsonschema.validate(5, schema)
    jsonschema.validate(None, schema)
