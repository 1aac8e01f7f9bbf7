"""The params of a retrain: one definition for the DAG's `Param`s (the Trigger form, the REST API) and the CLI.

Every value is checked, never clamped or rescaled: a margin of 5 is refused, not read as 0.5, and a
key no param has (a typo such as `marin`) is refused by name. `as_of` asks for a past data cut-off;
without it a manual run reads the rows recorded up to its trigger time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_MARGIN = 0.5


class ParamsRefused(ValueError):
    """A trigger's conf or a CLI argument that no param accepts."""


@dataclass(frozen=True)
class ParamSpec:
    """One param: its JSON-schema type, bounds and the words the Trigger form shows."""

    name: str
    default: Any
    kind: str  # "number", "boolean" or "timestamp"; each may be null only when its default is
    title: str
    description: str
    minimum: float | None = None
    maximum: float | None = None


SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("margin", None, "number", "Promotion margin",
              f"Relative RMSE improvement the candidate needs over the champion, from 0 to {MAX_MARGIN} "
              "(0.01 = 1 %). Empty: the value in the model's config.", minimum=0.0, maximum=MAX_MARGIN),
    ParamSpec("dry_run", False, "boolean", "Dry run", "Train and evaluate, record the decision, but never promote."),
    ParamSpec("force", False, "boolean", "Force",
              "Retrain even when no labelled rows arrived since the newest model's snapshot."),
    ParamSpec("as_of", None, "timestamp", "As of (past data cut-off)",
              "ISO timestamp, e.g. 2026-03-01T00:00:00+00:00 (UTC when no offset): train and judge on the rows "
              "recorded up to then, as a dry run that never promotes. Empty: the rows recorded up to the "
              "trigger time."),
)
BY_NAME = {spec.name: spec for spec in SPECS}


def json_schema(spec: ParamSpec) -> dict[str, Any]:
    """The keyword arguments of the Airflow `Param` for `spec`.

    The bounds sit inside `allOf`: the server validates them (a trigger out of range gets a 400), while the
    Trigger form's number field, which reads only a top-level `minimum`/`maximum`, no longer clamps a
    typed 5 to 0.5 on leaving the field.
    """
    types = {"number": "number", "boolean": "boolean", "timestamp": "string"}[spec.kind]
    schema: dict[str, Any] = {"type": ["null", types] if spec.default is None else types,
                              "title": spec.title, "description": spec.description}
    if spec.kind == "timestamp":
        schema["format"] = "date-time"
    bounds = {k: v for k, v in (("minimum", spec.minimum), ("maximum", spec.maximum)) if v is not None}
    if bounds:
        schema["allOf"] = [bounds]
    return {"default": spec.default, **schema}


def _range_text(spec: ParamSpec) -> str:
    return f"[{spec.minimum:g}, {spec.maximum:g}]" + (" (0.01 means 1 %)" if spec.name == "margin" else "")


def check_number(name: str, value: Any) -> float:
    """A number param's value, refused when it is no number or outside its range (NaN included)."""
    spec = BY_NAME[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParamsRefused(f"{value!r} is not a number")
    if not (math.isfinite(value) and (spec.minimum is None or value >= spec.minimum)
            and (spec.maximum is None or value <= spec.maximum)):
        raise ParamsRefused(f"{value} is outside {_range_text(spec)}")
    return float(value)


def parse_number(name: str, text: str) -> float:
    """A number param typed as text (the CLI), checked as the DAG checks it."""
    try:
        value = float(text)
    except ValueError:
        raise ParamsRefused(f"{text!r} is not a number") from None
    try:
        return check_number(name, value)
    except ParamsRefused:
        raise ParamsRefused(f"{text} is outside {_range_text(BY_NAME[name])}") from None


def parse_timestamp(text: str, now: datetime) -> datetime:
    """An ISO timestamp (UTC when it names no offset), refused when it is after `now`."""
    try:
        stamp = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ParamsRefused(f"{text!r} is not an ISO timestamp, e.g. 2026-07-01T00:00:00+00:00") from None
    stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    if stamp > now:
        raise ParamsRefused(f"{text} is in the future (after {now.isoformat()}): a run reads rows recorded up to its "
                            "cut-off, and rows not recorded yet cannot be read")
    return stamp


def in_the_form(spec: ParamSpec) -> str:
    """A param as the Trigger form shows it, its conf key beside: 'Promotion margin (margin)'."""
    return f"{spec.title} ({spec.name})"


def check_conf(conf: dict[str, Any] | None, trigger_time: datetime) -> dict[str, Any]:
    """A trigger's conf as checked params (defaults filled in); refuses an unknown key by name, a value of the
    wrong type, out of range, or an `as_of` after `trigger_time`, naming the field as the Trigger form shows it."""
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(BY_NAME))
    if unknown:
        raise ParamsRefused(f"unknown param {', '.join(map(repr, unknown))}: the retrain params are "
                            f"{', '.join(map(in_the_form, SPECS))} (a typo?)")
    checked = {spec.name: conf.get(spec.name, spec.default) for spec in SPECS}
    for spec in SPECS:
        value = checked[spec.name]
        if value is None and spec.default is None:
            continue
        try:
            if spec.kind == "number":
                check_number(spec.name, value)
            elif spec.kind == "boolean" and not isinstance(value, bool):
                raise ParamsRefused(f"{value!r} is not true or false")
            elif spec.kind == "timestamp":
                parse_timestamp(value if isinstance(value, str) else repr(value), trigger_time)
        except ParamsRefused as exc:
            raise ParamsRefused(f"param {in_the_form(spec)}: {exc}") from None
    return checked


def as_of(checked: dict[str, Any], trigger_time: datetime) -> datetime | None:
    """The past cut-off a run's checked params ask for, or None."""
    value = checked.get("as_of")
    return parse_timestamp(value, trigger_time) if value else None


def check_trigger(conf: dict[str, Any] | None, trigger_time: datetime) -> dict[str, Any]:
    """`check_conf` for a DAG run's conf: a refusal says that the trigger's params were refused and nothing ran."""
    try:
        return check_conf(conf, trigger_time)
    except ParamsRefused as exc:
        raise ParamsRefused(f"trigger params refused, nothing ran: {exc}") from None
