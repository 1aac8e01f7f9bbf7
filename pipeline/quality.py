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

from pipeline.config import DatasetContract
from pipeline.validate import SAMPLE_IDS, run_suite

ROW_COLUMN = "__row__"  # position of a row in the snapshot: ids can repeat, positions cannot

REASON_CODES = {
    "expect_column_values_to_not_be_null": "missing_required",
    "expect_column_values_to_be_between": "out_of_range",
    "expect_column_values_to_be_in_set": "unknown_category",
    "expect_column_values_to_be_unique": "duplicate_id",
    "expect_column_pair_values_a_to_be_greater_than_b": "impossible_dates",
    "expect_column_values_to_be_in_type_list": "wrong_type",
}


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

    def reason_counts(self) -> dict[str, int]:
        """How many rows carry each reason code (a row with two reasons counts under both)."""
        counts: dict[str, int] = {}
        for reasons in self.reasons.values():
            for code in {r["code"] for r in reasons}:
                counts[code] = counts.get(code, 0) + 1
        return dict(sorted(counts.items()))

    def check_reconciles(self) -> None:
        """Every row read is either valid or quarantined, once."""
        if len(self.valid) + len(self.quarantined) != self.rows_read:
            raise QualityError(
                f"row counts do not reconcile: read {self.rows_read}, valid {len(self.valid)}, "
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
    for column, kind in contract.column_types().items():
        before = out[column]
        if kind == "float":
            after = pd.to_numeric(before, errors="coerce").astype("float64")
        elif kind == "integer":  # a fraction or a number past int64 is not an integer: wrong_type
            number = pd.to_numeric(before, errors="coerce").astype("float64")
            whole = (number == number.round()) & (number.abs() < 2.0**63)
            after = number.where(whole).astype("Int64")
        elif kind == "date":
            after = pd.to_datetime(before, errors="coerce").astype("datetime64[us]")
        elif kind == "timestamp":
            after = pd.to_datetime(before, errors="coerce", utc=True).astype("datetime64[us, UTC]")
        else:
            after = before.astype("string")
        failed = before.notna() & after.isna()
        for position in out.index[failed]:
            reasons.setdefault(int(out.at[position, ROW_COLUMN]), []).append(
                {"code": "wrong_type", "column": column, "rule": f"cast to {kind}",
                 "value": str(before.at[position])})
        out[column] = after
    return out, reasons


def _row_reasons(entry: dict[str, Any]) -> tuple[list[int], dict[str, Any]] | None:
    """The rows one failed row-level expectation flags, and the reason it gives them."""
    config = entry["expectation_config"]
    code = REASON_CODES.get(config["type"])
    rows = (entry.get("result") or {}).get("unexpected_index_list")
    if code is None or rows is None:
        return None
    kwargs = config["kwargs"]
    column = kwargs.get("column") or f"{kwargs.get('column_A')}/{kwargs.get('column_B')}"
    positions = [int(r[ROW_COLUMN]) for r in rows if isinstance(r, dict) and ROW_COLUMN in r]
    return positions, {"code": code, "column": column, "rule": config["type"]}


def classify_rows(frame: pd.DataFrame, contract: DatasetContract, suite: dict[str, Any]) -> QualityResult:
    """Normalise, cast and validate a raw batch; split it into valid and quarantined rows."""
    raw = frame.reset_index(drop=True)
    raw[ROW_COLUMN] = range(len(raw))
    normalised, normalisations = normalise(raw, contract, suite)
    typed, reasons = coerce_types(normalised, contract)
    result = run_suite(typed, suite, ROW_COLUMN)
    schema_failures = []
    for entry in result["results"]:
        if entry["success"]:
            continue
        flagged = _row_reasons(entry)
        if flagged is None:  # a table-level or erroring expectation: not a row's fault
            schema_failures.append({"expectation": entry["expectation_config"]["type"],
                                    "kwargs": entry["expectation_config"]["kwargs"],
                                    "observed": (entry.get("result") or {}).get("details")
                                    or (entry.get("result") or {}).get("observed_value")})
            continue
        positions, reason = flagged
        for position in positions:
            value = typed.at[position, reason["column"]] if reason["column"] in typed else None
            reasons.setdefault(position, []).append({**reason, "value": None if pd.isna(value) else str(value)})
    bad = typed[ROW_COLUMN].isin(list(reasons))
    return QualityResult(
        rows_read=len(raw),
        valid=typed.loc[~bad, contract.columns()].reset_index(drop=True),
        quarantined=raw.loc[bad].reset_index(drop=True),
        reasons=reasons,
        normalisations=normalisations,
        gx_result=result,
        schema_failures=schema_failures,
    )


def render_report(result: QualityResult, contract: DatasetContract, title: str) -> str:
    """A human-readable page: counts, reasons, normalisations and the quarantined rows."""
    def table(headers: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    counts = [["rows read", result.rows_read], ["valid", len(result.valid)],
              ["quarantined", len(result.quarantined)]]
    reason_rows = [[code, n] for code, n in result.reason_counts().items()]
    norm_rows = [[n["column"], n["rule"], n["rows"], n["sample_ids"]] for n in result.normalisations]
    id_col = contract.id_column
    quarantine_rows = [
        [row[id_col], "; ".join(f"{r['code']}({r['column']}={r.get('value')})" for r in result.reasons[row[ROW_COLUMN]])]
        for row in result.quarantined.head(200).to_dict("records")
    ]
    schema_rows = [[f["expectation"], f["kwargs"], f["observed"]] for f in result.schema_failures]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>"
        f"<h2>Rows</h2>{table(['', 'count'], counts)}"
        f"<h2>Quarantined by reason</h2>{table(['reason', 'rows'], reason_rows)}"
        f"<h2>Normalised</h2>{table(['column', 'rule', 'rows', 'example ids'], norm_rows)}"
        f"<h2>Schema problems</h2>{table(['expectation', 'arguments', 'observed'], schema_rows)}"
        f"<h2>Quarantined rows (first 200)</h2>{table([id_col, 'reasons'], quarantine_rows)}"
        "</body></html>"
    )


def failure_summary(result: QualityResult, id_column: str) -> list[dict[str, Any]]:
    """One entry per (rule, column): how many rows broke it, with example source ids."""
    ids = result.quarantined.set_index(ROW_COLUMN)[id_column]
    groups: dict[tuple[str, str], list[int]] = {}
    for position, reasons in sorted(result.reasons.items()):
        for reason in reasons:
            groups.setdefault((reason["rule"], reason["column"]), []).append(position)
    summary = [{"expectation": f["expectation"], "column": str(f["kwargs"].get("column") or "(table)"),
                "unexpected_count": 0, "sample_ids": [], "observed": f["observed"], "error": None}
               for f in result.schema_failures]
    for (rule, column), positions in groups.items():
        summary.append({"expectation": rule, "column": column, "unexpected_count": len(positions),
                        "sample_ids": [source_id(ids.get(p)) for p in positions[:SAMPLE_IDS]],
                        "observed": None, "error": None})
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
