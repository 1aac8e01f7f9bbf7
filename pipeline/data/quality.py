"""Data quality: normalise what is safe, classify every row as valid or quarantined, with reasons.

The expectation suite stays the single statement of the contract: row-level verdicts come from
Great Expectations' own unexpected-row lists, mapped to reason codes here.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contract.ages import age_in_years
from pipeline.contract.config import DEFAULT_AGE_AT_EVENT_YEARS, DatasetContract, QualityPolicy
from pipeline.data import rowchecks
from pipeline.data.casting import cast_column, describe_cast, unreadable_reason
from pipeline.data.validate import (
    SAMPLE_IDS,
    SAMPLE_ROWS_NAMED,
    batch_failure,
    bound_of,
    column_of,
    describe_failure,
    domain_columns,
    exception_message,
    run_suite,
)

ROW_COLUMN = "__row__"  # position of a row in the snapshot: ids can repeat, positions cannot
ZONE_AHEAD = pd.Timedelta(hours=14)  # the furthest any time zone is ahead of UTC (Kiribati, UTC+14)

# Readable reason codes for the common row-level expectations; any other gets one from its name.
REASON_CODES = {
    "expect_column_values_to_not_be_null": "missing_required",
    "expect_column_values_to_be_between": "out_of_range",
    "expect_column_values_to_be_in_set": "unknown_category",
    "expect_column_values_to_not_be_in_set": "forbidden_value",
    "expect_column_values_to_be_unique": "duplicate_id",
    "expect_compound_columns_to_be_unique": "duplicate_record",
    "expect_column_pair_values_a_to_be_greater_than_b": "impossible_dates",
    "expect_column_values_to_be_in_type_list": "wrong_type",
    "expect_column_values_to_be_of_type": "wrong_type",
}
# Families of expectations sharing a reason, by a fragment of their name.
REASON_FAMILIES = (("match_regex", "bad_format"), ("like_pattern", "bad_format"), ("strftime_format", "bad_format"),
                   ("_parseable", "bad_format"), ("json_schema", "bad_format"), ("value_lengths_", "bad_length"))


class QualityError(RuntimeError):
    """The batch cannot be used: a schema problem, or too many rows quarantined."""


@dataclass
class QualityResult:
    rows_read: int
    valid: pd.DataFrame
    quarantined: pd.DataFrame  # original values, plus ROW_COLUMN
    reasons: dict[int, list[dict[str, Any]]]  # row position -> reasons
    normalisations: list[dict[str, Any]]
    gx_result: dict[str, Any]
    schema_failures: list[dict[str, Any]] = field(default_factory=list)
    # Every row read, normalised and cast (ROW_COLUMN = its position), faulty or not: what scoring scores.
    typed: pd.DataFrame | None = None
    # How many rows are valid when they were written out chunk by chunk (`pipeline.data.chunked_quality`) and
    # `valid` holds none of them; None: `valid` holds them all.
    valid_rows: int | None = None

    @property
    def valid_count(self) -> int:
        return len(self.valid) if self.valid_rows is None else self.valid_rows

    def reason_counts(self) -> dict[str, int]:
        """How many rows carry each reason code (a row with two reasons counts under both)."""
        counts: dict[str, int] = {}
        for reasons in self.reasons.values():
            for code in {r["code"] for r in reasons}:
                counts[code] = counts.get(code, 0) + 1
        return dict(sorted(counts.items()))

    def check_reconciles(self) -> None:
        """Every row read is either valid or quarantined, once."""
        if self.valid_count + len(self.quarantined) != self.rows_read:
            raise QualityError(
                f"row counts do not reconcile: read {self.rows_read}, valid {self.valid_count}, "
                f"quarantined {len(self.quarantined)}")


def allowed_categories(suite: dict[str, Any]) -> dict[str, list[str]]:
    """Columns whose values the suite restricts to a set, with that set."""
    return {
        e["kwargs"]["column"]: list(e["kwargs"]["value_set"])
        for e in suite["expectations"]
        if e["type"] == "expect_column_values_to_be_in_set"
    }


def source_id(value: Any) -> int | str | None:
    """A row id as JSON can hold it: an int when it is a whole number, else its text, None if missing."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, int | float | np.integer | np.floating) and float(value).is_integer():
        return int(value)
    return str(value)


def _record(column: str, rule: str, changed: pd.Series, ids: pd.Series) -> dict[str, Any]:
    return {"column": column, "rule": rule, "rows": int(changed.sum()),
            "sample_ids": [source_id(i) for i in ids[changed].head(SAMPLE_IDS)]}


def normalise(frame: pd.DataFrame, contract: DatasetContract, suite: dict[str, Any]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Strip spaces around text and fix the letter case of categories with one obvious match."""
    out, records = frame.copy(), []
    ids = frame[contract.id_column]
    allowed = allowed_categories(suite)
    for column in [c for c, kind in contract.column_types().items() if kind == "text"]:
        values = out[column].astype("string")
        stripped = values.str.strip()
        changed = (stripped != values).fillna(False).astype(bool)
        if changed.any():
            records.append(_record(column, "strip_spaces", changed, ids))
        if column in allowed:
            by_upper = {v.upper(): v for v in allowed[column]}
            if len(by_upper) == len(allowed[column]):  # case-insensitive matches are unambiguous
                fixed = stripped.str.upper().map(by_upper).astype("string").fillna(stripped)
                recased = (fixed != stripped).fillna(False).astype(bool)
                if recased.any():
                    records.append(_record(column, "letter_case", recased, ids))
                stripped = fixed
        out[column] = stripped
    return out, records


def coerce_types(frame: pd.DataFrame, contract: DatasetContract) -> tuple[pd.DataFrame, dict[int, list[dict[str, Any]]]]:
    """Cast each column to its contract type; a cell that will not cast becomes missing, with a reason."""
    out = frame.copy()
    reasons: dict[int, list[dict[str, Any]]] = {}
    formats = contract.column_formats()
    for column, kind in contract.column_types().items():
        before = out[column]
        out[column], failed = cast_column(before, kind, formats.get(column), column)
        rule = describe_cast(kind, formats.get(column))
        for position in out.index[failed]:
            value = before.at[position]
            code, why, text = unreadable_reason(value) or ("wrong_type", rule, str(value))
            reasons.setdefault(int(out.at[position, ROW_COLUMN]), []).append(
                {"code": code, "column": column, "rule": why, "value": text})
    return out, reasons


def _judged_pairs(reasons: dict[int, list[dict[str, Any]]]) -> set[tuple[int, frozenset[str]]]:
    """(row, column pair) a reason already names, e.g. the suite's visit-after-birth rule: not judged twice."""
    return {(p, frozenset(r["column"].split("/"))) for p, found in reasons.items() for r in found
            if r["column"].count("/") == 1}


def _after_recording(dates: pd.Series, recorded: pd.Series) -> pd.Series:
    """Which dates lie after their row's recording: a calendar date may be as late as the date anywhere
    on Earth at that instant (UTC+14); a date with a time zone is compared instant to instant."""
    if isinstance(dates.dtype, pd.DatetimeTZDtype):
        return (dates > recorded).fillna(False).astype(bool)
    latest_day = (recorded + ZONE_AHEAD).dt.tz_convert(None).dt.normalize()
    return (dates.dt.normalize() > latest_day).fillna(False).astype(bool)


Flag = tuple[list[str], pd.Series, str, str, pd.Series | None]  # columns, rows, code, rule, ages (if judged)


def _future_flags(typed: pd.DataFrame, contract: DatasetContract) -> list[Flag]:
    """Birth and event dates after the row was recorded: the recording is at most the run's watermark,
    so such a date has not happened yet (`future_date`)."""
    recorded = contract.timestamp_column
    return [([column, recorded], _after_recording(typed[column], typed[recorded]), "future_date",
             f"{column} not after {recorded}, the time the row was recorded", None)
            for column in contract.names_with_role("birth_date") + contract.names_with_role("event_date")]


def _age_flags(typed: pd.DataFrame, contract: DatasetContract, bounds: tuple[float, float],
               future: pd.Series) -> list[Flag]:
    """Ages at the event outside `bounds` (`implausible_age`); an age at an event still to come says nothing more."""
    birth, event = contract.names_with_role("birth_date"), contract.names_with_role("event_date")
    if not (birth and event):
        return []
    (low, high), ages = bounds, age_in_years(typed[birth[0]], typed[event[0]])
    outside = ((ages < low) | (ages > high)).fillna(False).astype(bool) & ~future
    rule = f"age at {event[0]} between {low:g} and {high:g} years (quality.age_at_event_years)"
    return [([birth[0], event[0]], outside, "implausible_age", rule, ages)]


def plausibility_reasons(typed: pd.DataFrame, contract: DatasetContract, bounds: tuple[float, float],
                         reasons: dict[int, list[dict[str, Any]]]) -> dict[int, list[dict[str, Any]]]:
    """Reasons the suite cannot give, found by contract role (so any table with the roles gets them):
    `future_date` and `implausible_age`. A column pair a reason already names for a row is not judged again."""
    found: dict[int, list[dict[str, Any]]] = {}
    judged = _judged_pairs(reasons)
    future_flags = _future_flags(typed, contract)
    future = pd.Series(False, index=typed.index)
    for flag in future_flags:
        future |= flag[1]
    for columns, rows, code, rule, ages in future_flags + _age_flags(typed, contract, bounds, future):
        for position in typed.index[rows]:
            row = int(typed.at[position, ROW_COLUMN])
            if (row, frozenset(columns)) in judged:
                continue
            value = _values(typed, position, columns)
            if ages is not None:
                value = f"age {ages.at[position]:.1f} years ({value})"
            found.setdefault(row, []).append({"code": code, "column": "/".join(columns), "rule": rule, "value": value})
    return found


def reason_code(expectation: str) -> str:
    """The reason code a failed row-level expectation gives its rows: readable, else from its name."""
    if expectation in REASON_CODES:
        return REASON_CODES[expectation]
    family = next((code for fragment, code in REASON_FAMILIES if fragment in expectation), None)
    return family or "not_" + expectation.removeprefix("expect_")


def _position(row: Any) -> int:
    """A failing row's position: GX names it by its index label, or by ROW_COLUMN when asked to."""
    return int(row[ROW_COLUMN] if isinstance(row, dict) else row)


def _row_reasons(entry: dict[str, Any]) -> tuple[list[int], dict[str, Any]] | None:
    """The rows one failed row-level expectation flags, and the reason it gives them; None if table-level."""
    config, result = entry["expectation_config"], entry.get("result") or {}
    rows = result.get("unexpected_index_list")
    if not rows or exception_message(entry.get("exception_info") or {}):  # an aggregate, or an error: the batch
        return None
    kind, kwargs = config["type"], config["kwargs"]
    reason = {"code": reason_code(kind), "column": column_of(kind, kwargs), "rule": kind}
    return [_position(r) for r in rows], reason


def _cell_text(value: Any) -> str | None:
    return None if pd.isna(value) else str(value)


def _values(typed: pd.DataFrame, position: int, columns: list[str]) -> str | None:
    """The value a reason quotes: the cell itself, or 'a=1, b=2' for an expectation on several columns."""
    present = [c for c in columns if c in typed]
    if len(present) == 1:
        return _cell_text(typed.at[position, present[0]])
    return ", ".join(f"{c}={_cell_text(typed.at[position, c]) or 'missing'}" for c in present) or None


def _suite_reasons(result: dict[str, Any], typed: pd.DataFrame, unreadable: set[tuple[int, str]]) -> tuple[
        dict[int, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Reasons per row from GX's row-level results, and the failures that judge the whole batch."""
    reasons: dict[int, list[dict[str, Any]]] = {}
    batch_failures = []
    for entry in (e for e in result["results"] if not e["success"]):
        flagged = _row_reasons(entry)
        if flagged is None:
            batch_failures.append(batch_failure(entry))
            continue
        positions, reason = flagged
        columns = domain_columns(reason["rule"], entry["expectation_config"]["kwargs"])
        if columns:  # GX saw a cell that would not cast as missing: its reason is wrong_type, already given
            positions = [p for p in positions if not all((p, c) in unreadable for c in columns)]
        for position, value in zip(positions, _values_at(typed, positions, columns), strict=True):
            reasons.setdefault(position, []).append({**reason, "value": value})
    return reasons, batch_failures


def _values_at(typed: pd.DataFrame, positions: list[int], columns: list[str]) -> list[str | None]:
    """`_values` of many rows at once: each column's cells are picked in one step, not one by one."""
    present = [c for c in columns if c in typed]
    cells = [list(typed[c].loc[positions].array) for c in present]
    if len(present) == 1:
        return [_cell_text(v) for v in cells[0]]
    return [", ".join(f"{c}={_cell_text(v) or 'missing'}" for c, v in zip(present, row, strict=True)) or None
            for row in zip(*cells, strict=True)] if present else [None] * len(positions)


def classify_rows(frame: pd.DataFrame, contract: DatasetContract, suite: dict[str, Any],
                  policy: QualityPolicy | None = None, fast: bool = False) -> QualityResult:
    """Normalise, cast and validate a raw batch (the suite, then the plausibility checks by role, with
    `policy`'s age bounds, by default any human age); split it into valid and quarantined rows. `fast`
    (scoring): the suite's rules through `pipeline.data.rowchecks` where it handles them all, else GX."""
    raw = frame.reset_index(drop=True)
    raw[ROW_COLUMN] = range(len(raw))
    normalised, normalisations = normalise(raw, contract, suite)
    typed, reasons = coerce_types(normalised, contract)
    # GX sees the batch's own columns only (a table-level rule may count them); it names rows by index = position.
    checked = typed.drop(columns=ROW_COLUMN)
    result = (rowchecks.suite_result(checked, suite) if fast else None) or run_suite(checked, suite, None)
    unreadable = {(p, r["column"]) for p, cast_reasons in reasons.items() for r in cast_reasons}
    suite_reasons, schema_failures = _suite_reasons(result, typed, unreadable)
    for position, found in suite_reasons.items():
        reasons.setdefault(position, []).extend(found)
    bounds = policy.age_at_event_years if policy else DEFAULT_AGE_AT_EVENT_YEARS
    for position, found in plausibility_reasons(typed, contract, bounds, reasons).items():
        reasons.setdefault(position, []).extend(found)
    bad = typed[ROW_COLUMN].isin(list(reasons))
    return QualityResult(
        rows_read=len(raw),
        valid=typed.loc[~bad, contract.columns()].reset_index(drop=True),
        quarantined=raw.loc[bad].reset_index(drop=True),
        reasons=reasons,
        normalisations=normalisations,
        gx_result=result,
        schema_failures=schema_failures,
        typed=typed,
    )


def _awaiting_faults(reasons: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    """A row awaiting its outcome is missing it by definition; its other faults stand."""
    return [r for r in reasons if not (r["code"] == "missing_required" and r["column"] == target)]


def classify_with_awaiting(labelled: pd.DataFrame, awaiting: pd.DataFrame | None, contract: DatasetContract,
                           suite: dict[str, Any], policy: QualityPolicy | None = None, fast: bool = False
                           ) -> tuple[QualityResult, QualityResult]:
    """Classify the labelled rows and, in the same pass (so a duplicate across the two is caught), the rows
    awaiting their outcome. The second result counts the awaiting rows and holds those with faults in
    `quarantined`, for a data steward; it keeps no valid rows, but all of them `typed`. Positions are each
    frame's own."""
    n = len(labelled)
    both = labelled if awaiting is None or awaiting.empty else pd.concat([labelled, awaiting], ignore_index=True)
    result = classify_rows(both, contract, suite, policy, fast)
    later = {p - n: _awaiting_faults(r, contract.target_column) for p, r in result.reasons.items() if p >= n}
    faulty = {p: r for p, r in later.items() if r}
    quarantined = result.quarantined[result.quarantined[ROW_COLUMN] >= n].copy()
    quarantined[ROW_COLUMN] -= n
    first_valid = n - sum(1 for p in result.reasons if p < n)  # valid rows keep the batch's order
    typed = result.typed.iloc[n:].reset_index(drop=True) if result.typed is not None else None
    if typed is not None:
        typed[ROW_COLUMN] -= n
    waiting = QualityResult(
        rows_read=len(both) - n, valid=result.valid.iloc[:0],  # awaiting rows are never trained on, so none kept
        quarantined=quarantined[quarantined[ROW_COLUMN].isin(list(faulty))].reset_index(drop=True),
        reasons=faulty, normalisations=[], gx_result={}, schema_failures=result.schema_failures, typed=typed)
    result.typed = None  # the labelled rows' valid ones are in `valid`; the rest need not stay in memory
    result.rows_read, result.valid = n, result.valid.iloc[:first_valid].reset_index(drop=True)
    result.quarantined = result.quarantined[result.quarantined[ROW_COLUMN] < n].reset_index(drop=True)
    result.reasons = {p: r for p, r in result.reasons.items() if p < n}
    return result, waiting


REPORT_STYLE = ("body{font-family:sans-serif;max-width:80em;margin:auto}td,th{padding:2px 8px;"
                "border-bottom:1px solid #ddd;text-align:left;vertical-align:top}table{border-collapse:collapse}"
                ".fail{background:#f8c0c0}.pass{background:#d8f0d0}")
QUARANTINE_ROWS_SHOWN = 200


def _html_table(headers: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    """A table of escaped cells; `classes` gives each row a CSS class."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join((f"<tr class='{html.escape(classes[i])}'>" if classes and classes[i] else "<tr>")
                   + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for i, r in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def share_verdict(result: QualityResult, policy: QualityPolicy | None) -> tuple[str, list[list[Any]]]:
    """The quarantined share of the labelled rows against `quality.max_quarantine_share`: a sentence and rows."""
    share = len(result.quarantined) / max(result.rows_read, 1)
    rows: list[list[Any]] = [["quarantined share", f"{share:.2%}"]]
    if result.schema_failures:
        return "The batch is not usable: a batch-level expectation failed (below).", rows
    if policy is None:
        return f"{share:.2%} of the labelled rows quarantined; no limit was given to this report.", rows
    limit = policy.max_quarantine_share
    rows.append(["limit (quality.max_quarantine_share)", f"{limit:.2%}"])
    if share > limit:
        return (f"{len(result.quarantined)} of {result.rows_read} labelled rows quarantined ({share:.2%}): over the "
                f"limit of {limit:.2%} (quality.max_quarantine_share), so the run stops.", rows)
    return (f"{len(result.quarantined)} of {result.rows_read} labelled rows quarantined ({share:.2%}): within the "
            f"limit of {limit:.2%} (quality.max_quarantine_share); the valid rows go on.", rows)


WORDED_BOUNDS = {"expect_column_values_to_not_be_null": "no missing value",
                 "expect_column_values_to_be_unique": "no value twice",
                 "expect_compound_columns_to_be_unique": "no combination twice"}


def _bound_text(kind: str, kwargs: dict[str, Any]) -> str:
    """What an expectation asks for, in its own terms: its arguments, or a phrase where they say nothing."""
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        ignored = kwargs.get("ignore_row_if", "both_values_are_missing")
        return f"{kwargs['column_A']} {'>=' if kwargs.get('or_equal') else '>'} {kwargs['column_B']} ({ignored})"
    bound = ", ".join(f"{k}={v}" for k, v in bound_of(kind, kwargs).items())
    return bound or WORDED_BOUNDS.get(kind, "—")


def _observed_text(outcome: dict[str, Any]) -> str:
    """GX's observed value, or for a row-level expectation examples of the unexpected values it saw."""
    if outcome.get("observed_value") is not None:
        return str(outcome["observed_value"])
    examples = outcome.get("partial_unexpected_list") or []
    if examples:
        return "unexpected, e.g. " + "; ".join(str(v) for v in examples[:5])
    return "—" if outcome.get("unexpected_count") is None else "no unexpected value"


def expectation_rows(gx_result: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    """One row per expectation of the suite, as GX Data Docs lists them: pass or fail, the column(s), the
    observed value, the unexpected rows and their share, and the bound; with each row's CSS class."""
    rows, classes = [], []
    for entry in gx_result.get("results") or []:
        config, outcome = entry["expectation_config"], entry.get("result") or {}
        kind, kwargs = config["type"], config.get("kwargs") or {}
        count, total = outcome.get("unexpected_count"), outcome.get("element_count")
        share = outcome.get("unexpected_percent")
        if share is None and count is not None and total:
            share = 100.0 * count / total
        error = exception_message(entry.get("exception_info") or {})
        rows.append(["pass" if entry["success"] else "FAIL", kind, column_of(kind, kwargs),
                     f"error: {error}" if error else _observed_text(outcome),
                     "—" if count is None else f"{count} of {total}",
                     "—" if share is None else f"{share:.2f}%", _bound_text(kind, kwargs)])
        classes.append("pass" if entry["success"] else "fail")
    return rows, classes


def expectations_html(gx_result: dict[str, Any], with_awaiting: bool = False) -> str:
    """The suite's verdict: its statistics, then every expectation."""
    if not gx_result.get("results"):
        return "<p>No expectation results were recorded.</p>"
    stats = gx_result.get("statistics") or {}
    rows, classes = expectation_rows(gx_result)
    counted = max((r.get("result") or {}).get("element_count") or 0 for r in gx_result["results"])
    checker = gx_result.get("checked_by", "Great Expectations")
    rows_checked = f"{counted} rows" + (" (the labelled rows and those awaiting their outcome, in one pass)"
                                        if with_awaiting else "")
    summary = (f"Suite '{gx_result.get('suite_name') or '(unnamed)'}', checked by {checker} on {rows_checked}: "
               f"{stats.get('evaluated_expectations', len(rows))} expectations, "
               f"{stats.get('successful_expectations', classes.count('pass'))} passed, "
               f"{stats.get('unsuccessful_expectations', classes.count('fail'))} failed. A row-level expectation "
               "that fails quarantines its unexpected rows; a table-level one stops the batch.")
    return f"<p>{html.escape(summary)}</p>" + _html_table(
        ["result", "expectation", "column(s)", "observed value", "unexpected rows", "unexpected share", "bound"],
        rows, classes)


def _named_columns(reason: dict[str, Any], row: dict[str, Any]) -> list[str]:
    return [c for c in reason["column"].replace("+", "/").split("/") if c in row]


def _original_text(row: dict[str, Any], columns: list[str]) -> str:
    return ", ".join(f"{c}={'missing' if _missing(row[c]) else row[c]}" for c in columns)


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _reason_text(reason: dict[str, Any], row: dict[str, Any]) -> str:
    """'code(column=value)'; a reason without a value of its own quotes the original cells it names."""
    value = reason.get("value")
    if value is None:
        columns = _named_columns(reason, row)
        if len(columns) > 1:
            value = _original_text(row, columns)
        else:
            value = "missing" if not columns or _missing(row[columns[0]]) else row[columns[0]]
    return f"{reason['code']}({reason['column']}={value})"


def quarantine_rows(result: QualityResult, id_column: str, prefix: str = "") -> list[list[Any]]:
    """The first QUARANTINE_ROWS_SHOWN quarantined rows: id, reasons, and the original values (as the source
    held them, before normalising or casting) of every column a reason names."""
    rows = []
    for row in result.quarantined.head(QUARANTINE_ROWS_SHOWN).to_dict("records"):
        reasons = result.reasons[row[ROW_COLUMN]]
        columns = list(dict.fromkeys(c for r in reasons for c in _named_columns(r, row)))
        rows.append([row[id_column], prefix + "; ".join(_reason_text(r, row) for r in reasons),
                     _original_text(row, columns)])
    return rows


def render_report(result: QualityResult, contract: DatasetContract, title: str,
                  awaiting: QualityResult | None = None, policy: QualityPolicy | None = None) -> str:
    """A self-contained page: the verdict against `quality.max_quarantine_share`, every expectation of the
    suite, the reasons, the normalisations and the quarantined rows with their original values."""
    verdict, share_rows = share_verdict(result, policy)
    counts: list[list[Any]] = [["rows read", result.rows_read], ["valid", result.valid_count],
                               ["quarantined", len(result.quarantined)], *share_rows]
    reason_rows = [[code, n] for code, n in result.reason_counts().items()]
    norm_rows = [[n["column"], n["rule"], n["rows"], n["sample_ids"]] for n in result.normalisations]
    id_col = contract.id_column
    quarantined = quarantine_rows(result, id_col)
    if awaiting is not None:
        counts += [["awaiting their outcome (not trained on)", awaiting.rows_read],
                   ["  of which with other faults", len(awaiting.quarantined)]]
        quarantined += quarantine_rows(awaiting, id_col, "awaiting outcome; ")
    schema_rows = [[describe_failure(f)] for f in result.schema_failures]
    schema_head = ["expectation, column(s), observed, expected"]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{REPORT_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class='verdict'>{html.escape(verdict)}</p>"
        f"<h2>Rows</h2>{_html_table(['', 'count'], counts)}"
        f"<h2 id='expectations'>Expectations</h2>{expectations_html(result.gx_result, awaiting is not None)}"
        f"<h2>Quarantined by reason</h2>{_html_table(['reason', 'rows'], reason_rows)}"
        f"<h2>Normalised</h2>{_html_table(['column', 'rule', 'rows', 'example ids'], norm_rows)}"
        f"<h2>Batch-level failures (the batch is not usable)</h2>{_html_table(schema_head, schema_rows)}"
        f"<h2 id='quarantined'>Quarantined rows (first {QUARANTINE_ROWS_SHOWN} of each part), "
        "with their original values</h2>"
        f"{_html_table([id_col, 'reasons', 'original values'], quarantined)}"
        "</body></html>"
    )


def failure_summary(result: QualityResult, id_column: str) -> list[dict[str, Any]]:
    """One entry per (rule, column): how many rows broke it, with example source ids (kept sealed with the
    validation result) and the same rows' numbers in the snapshot (`sample_rows`, the quarantine's row_number:
    what an error line names, since it is not sealed)."""
    ids = result.quarantined.set_index(ROW_COLUMN)[id_column]
    groups: dict[tuple[str, str], list[int]] = {}
    for position, reasons in sorted(result.reasons.items()):
        for reason in reasons:
            groups.setdefault((reason["rule"], reason["column"]), []).append(position)
    summary = [dict(f) for f in result.schema_failures]
    for (rule, column), positions in groups.items():
        summary.append({"expectation": rule, "column": column, "unexpected_count": len(positions),
                        "sample_ids": [source_id(ids.get(p)) for p in positions[:SAMPLE_IDS]],
                        "sample_rows": [int(p) for p in positions[:SAMPLE_ROWS_NAMED]],
                        "observed": None, "mismatched": None, "bound": {}, "error": None})
    return summary


def quarantine_records(result: QualityResult, id_column: str) -> list[dict[str, Any]]:
    """Rows for the quarantine table: source id, reasons, and the original values."""
    records = []
    for row in result.quarantined.to_dict("records"):
        position = int(row.pop(ROW_COLUMN))
        original = {k: (None if pd.isna(v) else str(v) if not isinstance(v, int | float | str) else v)
                    for k, v in row.items()}
        identity = source_id(row[id_column])
        records.append({"row_number": position, "source_id": None if identity is None else str(identity),
                        "reasons": result.reasons[position], "original": original})
    return records
