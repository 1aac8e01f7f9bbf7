"""Validate: run the Great Expectations suite in `expectations/` against a snapshot."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

SAMPLE_IDS = 20  # failing row ids kept per expectation in the summary (all are in `result`)


class ValidationFailed(RuntimeError):
    """The snapshot broke the data contract; the message names each failed expectation."""

    def __init__(self, suite_name: str, failures: list[dict[str, Any]], headline: str | None = None) -> None:
        self.failures = failures
        lines = [headline or f"snapshot failed {len(failures)} expectation(s) of suite '{suite_name}':"]
        lines += [f"  - {describe_failure(f)}" for f in failures]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ValidationReport:
    suite_name: str
    success: bool
    statistics: dict[str, Any]
    failures: list[dict[str, Any]]
    result: dict[str, Any]


def load_suite(path: Path) -> dict[str, Any]:
    """Read an expectation suite file, naming the file when it is unreadable."""
    try:
        suite = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read expectation suite {path}: {exc}") from exc
    if not isinstance(suite, dict) or not suite.get("name") or not isinstance(suite.get("expectations"), list):
        raise ValueError(f"expectation suite {path} needs a 'name' and a list of 'expectations'")
    return dict(suite)


def describe_failure(failure: dict[str, Any]) -> str:
    """One line per failed expectation: which rule, on which column, for which rows."""
    text = f"{failure['expectation']} on {failure['column']}"
    if failure.get("unexpected_count"):
        text += f": {failure['unexpected_count']} row(s), e.g. ids {failure['sample_ids']}"
    if failure.get("observed"):
        text += f": observed {failure['observed']}"
    if failure.get("error"):
        text += f": error {failure['error']}"
    return text


def _column_of(kwargs: dict[str, Any]) -> str:
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_A" in kwargs:
        return f"{kwargs['column_A']}/{kwargs['column_B']}"
    return "(table)"


def _exception_message(info: dict[str, Any]) -> str | None:
    """GX nests exception info by metric id; return the first message found."""
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    nested = (_exception_message(v) for v in info.values() if isinstance(v, dict))
    return next((m for m in nested if m), None)


def _failure(entry: dict[str, Any], id_column: str) -> dict[str, Any]:
    config, result = entry["expectation_config"], entry.get("result") or {}
    rows = result.get("unexpected_index_list") or []
    ids = sorted({row[id_column] for row in rows if isinstance(row, dict) and id_column in row})
    details = result.get("details") or {}
    return {
        "expectation": config["type"],
        "column": _column_of(config["kwargs"]),
        "unexpected_count": result.get("unexpected_count", 0),
        "sample_ids": [int(i) for i in ids[:SAMPLE_IDS]],
        "observed": details.get("mismatched") or None,
        "error": _exception_message(entry.get("exception_info") or {}),
    }


def run_suite(frame: pd.DataFrame, suite: dict[str, Any], id_column: str) -> dict[str, Any]:
    """Validate a DataFrame with Great Expectations and return the JSON result."""
    import great_expectations as gx  # heavy: seconds to import, so only when validating
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (
        context.data_sources.add_pandas("snapshot")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all_rows")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    result = batch.validate(
        gx.ExpectationSuite(**suite),
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]},
    )
    as_json = result.to_json_dict()  # type: ignore[no-untyped-call]
    return dict(json.loads(json.dumps(as_json, default=str)))


def validate_frame(frame: pd.DataFrame, suite: dict[str, Any], id_column: str) -> ValidationReport:
    """Run the suite and summarise which expectations failed for which rows."""
    result = run_suite(frame, suite, id_column)
    failures = [_failure(e, id_column) for e in result["results"] if not e["success"]]
    return ValidationReport(
        suite_name=suite["name"],
        success=bool(result["success"]),
        statistics=result["statistics"],
        failures=failures,
        result=result,
    )
