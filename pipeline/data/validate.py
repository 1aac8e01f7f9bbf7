"""Validate: run the Great Expectations suite in `expectations/` against a snapshot."""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

SAMPLE_IDS = 20  # failing row ids kept per expectation in the summary (all are in `result`)
SAMPLE_ROWS_NAMED = 5  # failing rows an error line names, by their number in the snapshot (never by id)


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
    """One line per failed expectation: which rule, on which column(s), for how many rows or with what observed.
    Never the rows' ids: this line goes to the run's record, its note, the task log and alerts, none of them
    sealed at rest; the ids are in the quality report (sealed) and the quarantine."""
    text = f"{failure['expectation']} on {failure['column']}"
    if failure.get("unexpected_count"):
        rows = failure.get("sample_rows")
        text += (f": {failure['unexpected_count']} row(s)" + (f", e.g. row numbers {rows}" if rows else "")
                 + ", ids in the quality report")
    facts = []
    if failure.get("observed") is not None:
        facts.append(f"observed {failure['observed']!r}")
    if failure.get("mismatched"):
        facts.append(f"mismatched {failure['mismatched']}")
    if failure.get("bound"):
        facts.append("expected " + ", ".join(f"{k}={v!r}" for k, v in failure["bound"].items()))
    if failure.get("error"):
        facts.append(f"error {failure['error']}")
    return f"{text}: {'; '.join(facts)}" if facts else text


def domain_columns(expectation: str, kwargs: dict[str, Any]) -> list[str]:
    """The column(s) an expectation judges row by row; none for a table-level one."""
    if expectation.startswith("expect_table_"):
        return []
    if "column" in kwargs:
        return [str(kwargs["column"])]
    if "column_A" in kwargs:
        return [str(kwargs["column_A"]), str(kwargs["column_B"])]
    return [str(c) for c in kwargs.get("column_list") or []]


def column_of(expectation: str, kwargs: dict[str, Any]) -> str:
    """The column(s) as reported: 'A/B' for a pair, 'a+b+c' for a list, '(table)' for the table."""
    columns = domain_columns(expectation, kwargs)
    if not columns:
        return "(table)"
    return "/".join(columns) if "column_A" in kwargs else "+".join(columns)


def bound_of(expectation: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What the expectation asked for (min_value, value_set, column_set...): its arguments but the columns."""
    domain = set() if expectation.startswith("expect_table_") else {"column", "column_A", "column_B", "column_list"}
    return {k: v for k, v in kwargs.items() if k not in domain | {"batch_id"} and v is not None}


def exception_message(info: dict[str, Any]) -> str | None:
    """GX nests exception info by metric id; return the first message found."""
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    nested = (exception_message(v) for v in info.values() if isinstance(v, dict))
    return next((m for m in nested if m), None)


def batch_failure(entry: dict[str, Any]) -> dict[str, Any]:
    """A failed expectation that judges the whole batch: what it checked, what it saw, what it expected."""
    config, result = entry["expectation_config"], entry.get("result") or {}
    kind, kwargs = config["type"], config["kwargs"]
    return {"expectation": kind, "column": column_of(kind, kwargs), "unexpected_count": 0, "sample_ids": [],
            "observed": result.get("observed_value"),
            "mismatched": (result.get("details") or {}).get("mismatched"),
            "bound": bound_of(kind, kwargs), "error": exception_message(entry.get("exception_info") or {})}


def _failure(entry: dict[str, Any], id_column: str) -> dict[str, Any]:
    result = entry.get("result") or {}
    rows = result.get("unexpected_index_list") or []
    ids = sorted({row[id_column] for row in rows if isinstance(row, dict) and id_column in row})
    failure = batch_failure(entry)
    if rows:
        failure.update(unexpected_count=result.get("unexpected_count", 0), observed=None, bound={},
                       sample_ids=[int(i) for i in ids[:SAMPLE_IDS]])
    return failure


def check_expectations(suite: dict[str, Any]) -> None:
    """Refuse an expectation GX cannot build: GX itself would drop it from the suite with only a log line."""
    from great_expectations.exceptions.exceptions import GreatExpectationsError
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    for index, raw in enumerate(suite["expectations"]):
        try:
            ExpectationConfiguration(**raw).to_domain_obj()
        except (GreatExpectationsError, ValueError, TypeError) as exc:
            kind = raw.get("type") if isinstance(raw, dict) else raw
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"expectation {index} ({kind}) of suite '{suite['name']}' cannot run: {reason}; "
                             "fix it in the suite file") from exc


@functools.cache
def whole_frame_batches() -> Any:
    """A batch definition over whatever DataFrame a validation hands it, in one ephemeral context per process:
    a context costs a tenth of a second to make, and a chunked validation validates a batch per chunk."""
    # GX's own INFO lines (about 200 per run, most while it is first imported) bury the stage's summary in a
    # task log: only its warnings and errors are kept. Set when validating, never at import time.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx  # heavy: seconds to import, so only when validating
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)  # set INFO by GX
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context.data_sources.add_pandas("snapshot").add_dataframe_asset("rows").add_batch_definition_whole_dataframe(
        "all_rows")


def suite_validation(frame: pd.DataFrame, suite: dict[str, Any], id_column: str | None) -> Any:
    """Great Expectations' own result object of validating a DataFrame with the suite; failing rows are
    named by `id_column`, else by index. Without the query GX writes to select the failing rows: no caller
    reads it, and it spells out every failing row's index."""
    import great_expectations as gx

    check_expectations(suite)
    batch = whole_frame_batches().get_batch(batch_parameters={"dataframe": frame})
    options: dict[str, Any] = {"result_format": "COMPLETE", "return_unexpected_index_query": False}
    if id_column is not None:
        options["unexpected_index_column_names"] = [id_column]
    return batch.validate(gx.ExpectationSuite(**suite), result_format=options)


def run_suite(frame: pd.DataFrame, suite: dict[str, Any], id_column: str | None) -> dict[str, Any]:
    """Validate a DataFrame with Great Expectations, as JSON; failing rows are named by `id_column`, else by index."""
    as_json = suite_validation(frame, suite, id_column).to_json_dict()
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
