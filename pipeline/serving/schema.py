"""The REST API's typed contract: pydantic models of a record, built from the data contract and its expectation
suite, and of every answer, assembled into the service's OpenAPI 3.1 document.

The record model documents what `pipeline.serving.rest` checks (each field's JSON type, date format, allowed
categories, bounds where the suite states them, required fields, no unknown fields). It is not what validates
a request: each record of a list is judged on its own, so one bad record never refuses the others.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from fastapi.openapi.utils import get_openapi
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from pipeline.contract.config import DatasetContract

INT64 = (-(2**63), 2**63 - 1)
API_ERROR_CODES = ["missing_required", "out_of_range", "unknown_category", "wrong_type", "not_finite",
                   "impossible_dates", "future_date", "implausible_age", "duplicate_id", "duplicate_record",
                   "unknown_field", "not_an_object", "too_many_errors"]


class ErrorItem(BaseModel):
    """One reason a record was refused: the field, the code and the contract's rule it broke."""

    field: str | None = Field(description="the record's field (two joined by '/' for a pair rule), or null")
    code: str = Field(description=f"what is wrong, e.g. {', '.join(API_ERROR_CODES)}")
    rule: str = Field(description="the contract's rule, with the expectation's bounds")
    value: str | float | int | bool | None = Field(
        default=None, description="the value as sent (text cut to 64 characters; a JSON array or object, NaN, "
                                  "Infinity or an overflowing number as text)")


class Interval(BaseModel):
    lower: float | None = Field(description="lower bound (null when the interval has no finite bound)")
    upper: float | None
    coverage: float = Field(description="the share of outcomes the interval should hold")


class Forecast(BaseModel):
    """One record's forecast (a request of one record, answered 200)."""

    request_id: str
    model: str
    model_version: int
    id: int | str | None = Field(description="the record's id, as sent (null when it gave none)")
    prediction: float
    interval: Interval


class RecordResult(BaseModel):
    """One record of a list: its forecast (status 200) or its errors (status 422)."""

    index: int = Field(description="the record's position in the request")
    id: int | str | None
    status: Literal[200, 422]
    prediction: float | None = None
    interval: Interval | None = None
    model_version: int | None = None
    errors: list[ErrorItem] | None = None


class Forecasts(BaseModel):
    """A list of records, answered 200 whatever the mix: one result per record, in order."""

    request_id: str
    model: str
    model_version: int
    records: int
    scored: int
    refused: int
    results: list[RecordResult]


class Refused(BaseModel):
    """A request of one record, refused (422): the record's errors."""

    request_id: str
    model: str
    model_version: int
    detail: list[ErrorItem]


class Problem(BaseModel):
    """A request refused as a whole, or a service that cannot answer now."""

    detail: str | list[ErrorItem]
    request_id: str | None = None


class IntervalSummary(BaseModel):
    coverage: float
    half_width: float | None
    method: str
    guarantee: str | None = Field(default=None, description="what the interval's method guarantees, in words")
    conditional_on: str | None = Field(default=None, description="the slice it is calibrated within, if any")
    group_half_widths: dict[str, float | None] | None = None


class ModelSummary(BaseModel):
    """The served champion."""

    model: str
    version: int
    family: str
    holdout_metrics: dict[str, float | int | None] | None
    promoted_at: str | None
    interval: IntervalSummary
    scoring: dict[str, Any] | None = Field(description="how the model scores: 'onnx' (ONNX Runtime, checked "
                                           "on the version's holdout) or 'pipeline' (scikit-learn), and why")
    artifact_hash: str
    trained_on_snapshot: str
    model_card: dict[str, str] | None
    champion_not_loaded: dict[str, Any] | None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    model: str | None = None
    version: int | None = None
    reason: str | None = None


def _bounds(suite: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per column, what the suite states of its values: min/max, the allowed set, whether it may be null."""
    found: dict[str, dict[str, Any]] = {}
    for expectation in suite["expectations"]:
        kind, kwargs = expectation["type"], expectation.get("kwargs") or {}
        column = kwargs.get("column")
        if not column:
            continue
        if kind == "expect_column_values_to_be_between":
            found.setdefault(column, {}).update(ge=kwargs.get("min_value"), le=kwargs.get("max_value"))
        elif kind == "expect_column_values_to_be_in_set":
            found.setdefault(column, {})["value_set"] = list(kwargs["value_set"])
        elif kind == "expect_column_values_to_not_be_null":
            found.setdefault(column, {})["required"] = True
    return found


def _any_case(value: str) -> str:
    """A regular expression matching `value` in any letter case (JSON Schema patterns have no flags)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in value)


def _field_type(kind: str, stated: dict[str, Any]) -> Any:
    """The pydantic type of one field of the kind the contract declares, with the suite's bounds."""
    limits = {k: stated[k] for k in ("ge", "le") if stated.get(k) is not None}
    if kind == "float":
        return Annotated[float, Field(allow_inf_nan=False, **limits)]
    if kind == "integer":
        low, high = INT64
        return Annotated[int, Field(ge=max(low, limits.get("ge", low)), le=min(high, limits.get("le", high)))]
    if kind == "date":
        return date
    if kind == "timestamp":
        return AwareDatetime
    if stated.get("value_set"):
        allowed = "|".join(_any_case(str(v)) for v in stated["value_set"])
        return Annotated[str, Field(pattern=rf"^\s*({allowed})\s*$")]
    return str


def _description(column: str, kind: str, stated: dict[str, Any], contract: DatasetContract) -> str:
    parts = {"date": ["a date, YYYY-MM-DD"], "timestamp": ["a timestamp with a zone, e.g. 2025-03-02T09:00:00Z"],
             "float": ["a JSON number"], "integer": ["a whole JSON number"], "text": ["a JSON string"]}[kind]
    if stated.get("value_set"):
        parts.append(f"one of {stated['value_set']} (letter case and surrounding spaces ignored)")
    if column == contract.id_column:
        parts.append("optional: echoed back and recorded with the forecast")
    elif column == contract.timestamp_column:
        parts.append("optional: when the record was made (default: now)")
    elif kind == "float" and not stated.get("required"):
        parts.append("missing or null: imputed by the model, as in training")
    return "; ".join(parts)


def record_model(contract: DatasetContract, suite: dict[str, Any], model: str) -> type[BaseModel]:
    """The pydantic model of one record of `model`: the contract's fields with the suite's bounds."""
    stated, types, fields = _bounds(suite), contract.column_types(), {}
    optional = {contract.id_column, contract.timestamp_column}
    for column in [contract.id_column, *contract.feature_names(), contract.timestamp_column]:
        facts = stated.get(column, {})
        kind = types[column]
        annotation = _field_type(kind, facts)
        described = Field(description=_description(column, kind, facts, contract))
        if facts.get("required") and column not in optional:
            fields[column] = (annotation, described)
        else:
            fields[column] = (annotation | None, Field(default=None, description=described.description))
    title = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", model) if part) + "Record"
    return create_model(title, __config__=ConfigDict(extra="forbid", title=title), **fields)  # type: ignore[call-overload, no-any-return]


def _schemas(record: type[BaseModel]) -> dict[str, Any]:
    """Every model's JSON schema, referenced as OpenAPI components."""
    schemas: dict[str, Any] = {}
    for each in (record, ErrorItem, Interval, Forecast, RecordResult, Forecasts, Refused, Problem, IntervalSummary,
                 ModelSummary, Health, Readiness):
        schema = each.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[schema.get("title", each.__name__)] = schema
    return schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: dict[str, Any], retry: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if retry:
        answer["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return answer


PROBLEMS = {
    "401": "no valid bearer token (Authorization: Bearer <token>)",
    "404": "no such model is served here",
    "503": "no champion loaded yet, or forecasts cannot be recorded now (the database): try again after Retry-After",
}


def _predict_operation(record_title: str) -> dict[str, Any]:
    """What the predict operation takes and answers."""
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
            _ref(record_title),
            {"type": "array", "minItems": 1, "items": {"type": "object"},
             "description": f"records, each judged on its own against {record_title}: a list answers 200"}]}}}},
        "responses": {
            "200": _answer("the record's forecast, or one result per record of a list",
                           {"anyOf": [_ref("Forecast"), _ref("Forecasts")]}),
            "401": _answer(PROBLEMS["401"], _ref("Problem")),
            "404": _answer(PROBLEMS["404"], _ref("Problem")),
            "413": _answer("a body over serving.max_request_bytes, or more than serving.max_request_records records",
                           _ref("Problem")),
            "415": _answer("the body is not application/json", _ref("Problem")),
            "422": _answer("the one record is refused (its errors), or the body is not a record or list of them",
                           {"anyOf": [_ref("Refused"), _ref("Problem")]}),
            "503": _answer(PROBLEMS["503"], _ref("Problem"), retry=True),
        },
    }


def _document_paths(paths: dict[str, Any], record_title: str) -> None:
    """Every operation's answers, each with its schema."""
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path.endswith("/predict") and method == "post":
                operation.update(_predict_operation(record_title))
                continue
            responses = operation["responses"] = {}
            if path == "/healthz":
                responses["200"] = _answer("the process is up", _ref("Health"))
            elif path == "/readyz":
                responses["200"] = _answer("a hash-verified champion is loaded and forecasts can be recorded",
                                           _ref("Readiness"))
                responses["503"] = _answer("not ready: the reason says why", _ref("Readiness"), retry=True)
            else:
                responses["200"] = (_answer("the served champion", _ref("ModelSummary")) if path.endswith("}")
                                    else {"description": "the model card", "content": {"text/html": {
                                        "schema": {"type": "string"}}}})
                for status in ("401", "404", "503"):
                    responses[status] = _answer(PROBLEMS[status], _ref("Problem"), retry=status == "503")


def openapi_document(app: Any, contract: DatasetContract, suite: dict[str, Any], model: str) -> dict[str, Any]:
    """The service's OpenAPI 3.1 document: the routes FastAPI knows, with the typed contract of every request
    and answer."""
    record = record_model(contract, suite, model)
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = document.setdefault("components", {})
    components["schemas"] = _schemas(record)
    _document_paths(document["paths"], str(record.model_config.get("title")))
    return document
