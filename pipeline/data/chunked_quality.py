"""Validation chunk by chunk: the verdicts of `quality.classify_with_awaiting`, in memory bounded by a chunk.

The whole-frame classification holds every row several times over (raw, normalised, typed, Great
Expectations' copies, the valid rows). Here the rows come in chunks, read again for each pass:

1. each chunk is normalised, cast and judged (the suite by Great Expectations, the plausibility rules);
   what is kept is small: the rows anything flagged (raw and typed), GX's counts, the normalisations,
   a hash of each row's key for every rule that compares rows with each other (unique ids, unique
   records: not row-local), and the batch fingerprint GX records;
2. rows whose key repeats somewhere are fetched too (only when some do);
3. Great Expectations judges the kept rows once, and the counts that depend on the batch's size are
   set back to the whole batch's, so the stored result, every reason and every verdict are those of
   the whole-frame classification (`tests/unit/test_chunked_quality.py` holds it to them);
4. each chunk is cast again and its valid labelled rows go to the clean snapshot's Parquet writer,
   row group by row group, giving the bytes `ingest.snapshot_bytes` gives the whole valid frame.

A suite with a rule this cannot merge (an aggregate such as a mean, `mostly`, a row order rule) is
not streamable: the caller classifies the whole frame instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.core.dtypes.cast import find_common_type

from pipeline.contract.config import DEFAULT_AGE_AT_EVENT_YEARS, DatasetContract, QualityPolicy
from pipeline.data import ingest
from pipeline.data.quality import (
    ROW_COLUMN,
    QualityResult,
    _awaiting_faults,
    _suite_reasons,
    coerce_types,
    normalise,
    plausibility_reasons,
)
from pipeline.data.validate import SAMPLE_IDS, exception_message, run_suite, suite_validation
from pipeline.runtime import memory
from pipeline.store import crypto
from pipeline.store.crypto import Keyring

CHUNK_ROWS = 1 << 17  # rows per chunk: about 30 MB of raw rows, whatever the snapshot's size
# pyarrow's own row group size (parquet's DEFAULT_MAX_ROW_GROUP_LENGTH), which `snapshot_bytes` leaves as is
CLEAN_ROW_GROUP_ROWS = 1024 * 1024
# Rules judging each row on its own values: a chunk's verdict on a row is the whole batch's.
ROW_LOCAL_RULES = frozenset({
    "expect_column_values_to_not_be_null", "expect_column_values_to_be_null",
    "expect_column_values_to_be_in_set", "expect_column_values_to_not_be_in_set",
    "expect_column_values_to_be_between", "expect_column_values_to_be_in_type_list",
    "expect_column_values_to_be_of_type", "expect_column_pair_values_a_to_be_greater_than_b",
    "expect_column_pair_values_to_be_equal", "expect_column_values_to_match_regex",
    "expect_column_values_to_not_match_regex", "expect_column_values_to_match_regex_list",
    "expect_column_values_to_not_match_regex_list", "expect_column_values_to_match_like_pattern",
    "expect_column_values_to_not_match_like_pattern", "expect_column_values_to_match_strftime_format",
    "expect_column_values_to_be_dateutil_parseable", "expect_column_values_to_be_json_parseable",
    "expect_column_value_lengths_to_be_between", "expect_column_value_lengths_to_equal",
    "expect_select_column_values_to_be_unique_within_record", "expect_multicolumn_sum_to_equal",
})
# Rules comparing rows with each other, with the columns a row's key is made of.
COMPARING_RULES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "expect_column_values_to_be_unique": lambda kwargs: [str(kwargs["column"])],
    "expect_compound_columns_to_be_unique": lambda kwargs: [str(c) for c in kwargs["column_list"]],
}
# Rules on the table's columns alone: every chunk has the batch's columns, so the verdict is the batch's.
COLUMN_SET_RULES = frozenset({
    "expect_table_columns_to_match_set", "expect_table_columns_to_match_ordered_list",
    "expect_column_to_exist", "expect_table_column_count_to_equal",
})
UNMERGEABLE_ARGUMENTS = frozenset({"mostly", "row_condition", "condition_parser"})
# The counts of a map expectation's result that depend on the batch's size, set back to the whole batch's.
BATCH_COUNTS = ("element_count", "unexpected_count", "unexpected_percent", "missing_count", "missing_percent",
                "unexpected_percent_total", "unexpected_percent_nonmissing")



class NotStreamable(RuntimeError):
    """The chunks cannot give the whole-frame result (an expectation errored, a value GX cannot hash)."""


def streamable(suite: dict[str, Any]) -> bool:
    """Whether every expectation of the suite can be judged chunk by chunk and merged exactly."""
    for expectation in suite.get("expectations") or []:
        kind, kwargs = expectation.get("type"), expectation.get("kwargs") or {}
        if kind not in ROW_LOCAL_RULES | COLUMN_SET_RULES | set(COMPARING_RULES) or UNMERGEABLE_ARGUMENTS & set(kwargs):
            return False
    return True


def give_back_memory() -> None:
    """Return the memory a chunk freed to the system: Arrow's pool and glibc's heap keep freed memory for
    reuse otherwise, and the process's resident size then grows with the chunks it has seen."""
    pa.default_memory_pool().release_unused()
    memory.trim()


# --- chunk sources ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Chunks:
    """Raw rows chunk by chunk, indexed by position: each call reads them again. `dtypes` are the whole
    batch's (as their concatenation has them). A chunk has them already, but where they are objects: such a
    column keeps its own dtype in the chunk, and only the rows kept are made objects (`conform`). Casting
    gives such a column the same values either way, and a datetime column made objects cost more than the
    rest of a chunk's checks."""

    read: Callable[[], Iterator[pd.DataFrame]]
    dtypes: dict[str, Any]

    def __call__(self) -> Iterator[pd.DataFrame]:
        return self.read()

    def conform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Rows of a chunk with the whole batch's dtypes, objects too."""
        return _conformed(frame, self.dtypes)

    def cast_by(self, contract: DatasetContract) -> Chunks:
        """These chunks, with the columns the contract does not cast made objects in full as well."""
        others = {c: d for c, d in self.dtypes.items() if pd.api.types.is_object_dtype(d) and c not in contract.column_types()}
        if not others:
            return self
        read = self.read
        return Chunks(lambda: (_conformed(chunk, others) for chunk in read()), self.dtypes)


def _cheaply_conformed(frame: pd.DataFrame, dtypes: dict[str, Any]) -> pd.DataFrame:
    return _conformed(frame, {c: d for c, d in dtypes.items() if not pd.api.types.is_object_dtype(d)})


def frame_chunks(frames: list[pd.DataFrame], chunk_rows: int) -> Chunks:
    """Frames already in memory, one after the other, as chunks with the dtypes their concatenation has."""
    dtypes = _common_dtypes([frame.dtypes.to_dict() for frame in frames if len(frame)])

    def chunks() -> Iterator[pd.DataFrame]:
        offset = 0
        for frame in frames:
            for start in range(0, len(frame), chunk_rows):
                chunk = frame.iloc[start:start + chunk_rows]
                yield _positioned(_cheaply_conformed(chunk, dtypes), offset)
                offset += len(chunk)
    return Chunks(chunks, dtypes)


def parquet_chunks(paths: list[Path], chunk_rows: int, keys: Keyring | None = None) -> Chunks:
    """Snapshot files (already checked against their hashes), one after the other, read `chunk_rows` at a
    time, with the dtypes `ingest.load_snapshot` and their concatenation give the whole frame."""
    dtypes = _common_dtypes([_batch_dtypes(batch) for path in paths for batch in _batches(path, chunk_rows, keys)])
    give_back_memory()

    def chunks() -> Iterator[pd.DataFrame]:
        offset = 0
        for path in paths:
            for batch in _batches(path, chunk_rows, keys):
                if batch.num_rows:
                    frame = _cheaply_conformed(ingest.arrow_to_frame(batch), dtypes)
                    yield _positioned(frame, offset)
                    offset += len(frame)
    return Chunks(chunks, dtypes)


def _batches(path: Path, chunk_rows: int, keys: Keyring | None = None) -> Iterator[pa.Table]:
    with crypto.open_plain(path, keys) as handle, pq.ParquetFile(handle, pre_buffer=False) as file:  # pre-buffering
        for batch in file.iter_batches(batch_size=chunk_rows):  # would read every row group up front
            yield pa.Table.from_batches([batch])


def _batch_dtypes(table: pa.Table) -> dict[str, Any]:
    """The dtypes `ingest.arrow_to_frame` gives these rows, found without converting them: an integer column
    with a missing value becomes float64, a column with an Unreadable cell objects."""
    dtypes: dict[str, Any] = dict(ingest.arrow_to_frame(table.slice(0, 0)).dtypes.items())
    for name, column in zip(table.column_names, table.columns, strict=True):
        if ingest._out_of_range_texts(column) or ingest._nan_texts(column):
            dtypes[name] = np.dtype(object)
        elif column.null_count and (pa.types.is_integer(column.type) or pa.types.is_boolean(column.type)):
            dtypes[name] = ingest.arrow_to_frame(pa.table({name: pa.nulls(1, column.type)}))[name].dtype
    return dtypes


def _common_dtypes(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Each column's dtype once the parts are concatenated (as `pd.concat` finds it)."""
    columns = list(dict.fromkeys(c for part in parts for c in part))
    return {c: find_common_type([part[c] for part in parts if c in part]) for c in columns}


def _conformed(frame: pd.DataFrame, dtypes: dict[str, Any]) -> pd.DataFrame:
    changed = {c: dtypes[c] for c in frame.columns if c in dtypes and frame[c].dtype != dtypes[c]}
    return frame.astype(changed) if changed else frame


def _positioned(frame: pd.DataFrame, offset: int) -> pd.DataFrame:
    frame = frame.copy()
    frame.index = pd.RangeIndex(offset, offset + len(frame))
    frame[ROW_COLUMN] = frame.index
    return frame


# --- what pass 1 keeps -----------------------------------------------------------------------------------

@dataclass
class Evidence:
    """What the chunks left: everything the whole-frame classification needs, but the unflagged rows."""

    rows: int = 0
    raw: list[pd.DataFrame] = field(default_factory=list)  # the kept rows, original values
    typed: list[pd.DataFrame] = field(default_factory=list)  # the kept rows, normalised and cast
    kept: set[int] = field(default_factory=set)
    cast_reasons: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    normalisations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    element_counts: list[int] = field(default_factory=list)  # per GX result entry
    missing_counts: list[int | None] = field(default_factory=list)
    keys: list[list[np.ndarray]] = field(default_factory=list)  # per comparing rule, per chunk
    fingerprint: Any = field(default_factory=lambda: hashlib.md5(usedforsecurity=False))
    conform: Callable[[pd.DataFrame], pd.DataFrame] = lambda frame: frame  # raw rows to the batch's dtypes

    def keep(self, raw: pd.DataFrame, typed: pd.DataFrame, positions: set[int]) -> None:
        chosen = sorted(positions - self.kept)
        if chosen:
            self.raw.append(self.conform(raw.loc[chosen]))
            self.typed.append(typed.loc[chosen])
            self.kept.update(chosen)


def _prepared(raw: pd.DataFrame, contract: DatasetContract, suite: dict[str, Any]) -> tuple[
        pd.DataFrame, list[dict[str, Any]], pd.DataFrame, dict[int, list[dict[str, Any]]]]:
    normalised, records = normalise(raw, contract, suite)
    typed, reasons = coerce_types(normalised, contract)
    return normalised, records, typed, reasons


def _comparing(suite: dict[str, Any]) -> list[list[str]]:
    return [COMPARING_RULES[e["type"]](e.get("kwargs") or {}) for e in suite["expectations"]
            if e["type"] in COMPARING_RULES]


def _check_chunk(raw: pd.DataFrame, contract: DatasetContract, suite: dict[str, Any], bounds: tuple[float, float],
                 evidence: Evidence) -> None:
    """Pass 1 on one chunk: judge it, keep what is flagged, count, hash the keys of the comparing rules."""
    _, records, typed, cast_reasons = _prepared(raw, contract, suite)
    checked = typed.drop(columns=ROW_COLUMN)
    results = suite_validation(checked, suite, None).results  # GX's objects: only counts and row indices are read
    flagged = set(cast_reasons) | set(plausibility_reasons(typed, contract, bounds, {}))
    if not evidence.element_counts:
        evidence.element_counts = [0] * len(results)
        evidence.missing_counts = [0] * len(results)
        flagged.add(int(typed.index[0]))  # never an empty batch for GX to judge at the end
    for i, entry in enumerate(results):
        kind = entry.expectation_config.type
        if exception_message(entry.exception_info or {}):
            raise NotStreamable(f"{kind} raised on a chunk")
        outcome = entry.result or {}
        evidence.element_counts[i] += int(outcome.get("element_count") or 0)
        missing = evidence.missing_counts[i]
        evidence.missing_counts[i] = None if missing is None or "missing_count" not in outcome else (
            missing + int(outcome["missing_count"]))
        if kind not in COMPARING_RULES:
            flagged.update(int(p) for p in outcome.get("unexpected_index_list") or [])
    evidence.keep(raw, typed, flagged)
    evidence.cast_reasons.update(cast_reasons)
    _merge_normalisations(evidence.normalisations, records)
    for rule, columns in enumerate(_comparing(suite)):
        if len(evidence.keys) <= rule:
            evidence.keys.append([])
        evidence.keys[rule].append(row_keys(typed, columns))
    try:
        evidence.fingerprint.update(pd.util.hash_pandas_object(checked, index=True).values)
    except TypeError as exc:  # GX pickles such a frame for its fingerprint: no chunk can give that
        raise NotStreamable(f"a value GX cannot hash: {exc}") from exc
    evidence.rows += len(raw)


def _merge_normalisations(merged: dict[tuple[str, str], dict[str, Any]], records: list[dict[str, Any]]) -> None:
    for record in records:
        known = merged.setdefault((record["column"], record["rule"]), {**record, "rows": 0, "sample_ids": []})
        known["rows"] += record["rows"]
        known["sample_ids"] = (known["sample_ids"] + record["sample_ids"])[:SAMPLE_IDS]


def _ordered_normalisations(merged: dict[tuple[str, str], dict[str, Any]], contract: DatasetContract) -> list[
        dict[str, Any]]:
    """In the whole frame's order: column by column, spaces stripped before letter case fixed."""
    texts = [c for c, kind in contract.column_types().items() if kind == "text"]
    return [merged[key] for key in sorted(merged, key=lambda k: (texts.index(k[0]), k[1] != "strip_spaces"))]


# --- keys of the comparing rules ------------------------------------------------------------------------

MIX = np.uint64(0x9E3779B97F4A7C15)


def row_keys(typed: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """A 64-bit hash of each row's values in `columns`: rows pandas finds equal (as `duplicated` does: NaN
    equals NaN, -0.0 equals 0.0) get the same key; rows with the same key are compared value by value."""
    key = np.zeros(len(typed), dtype=np.uint64)
    for column in columns:
        values = typed[column]
        missing = values.isna().to_numpy(dtype=bool)
        if pd.api.types.is_float_dtype(values.dtype):
            numbers = values.to_numpy(dtype="float64", na_value=np.nan) + 0.0
            canonical = pd.util.hash_array(np.where(missing, 0.0, numbers))
        elif pd.api.types.is_datetime64_any_dtype(values.dtype):
            canonical = pd.util.hash_array(np.asarray(values.array.asi8))
        elif pd.api.types.is_integer_dtype(values.dtype):
            canonical = pd.util.hash_array(values.to_numpy(dtype="int64", na_value=0))
        else:
            canonical = pd.util.hash_array(np.asarray(values.astype(object).where(~missing, "").astype(str),
                                                      dtype=object))
        with np.errstate(over="ignore"):
            key = (key ^ np.where(missing, MIX, canonical)) * MIX + np.uint64(1)
    return key


def repeated_positions(keys: list[np.ndarray]) -> np.ndarray:
    """Positions whose key some other position shares (the pieces are consumed: the list is emptied)."""
    every = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
    keys.clear()
    ordered = np.sort(every)
    same = ordered[1:] == ordered[:-1]
    shared = np.unique(ordered[1:][same])
    del ordered, same
    return np.flatnonzero(np.isin(every, shared))


# --- the merge ------------------------------------------------------------------------------------------

def _batch_counts(entry: dict[str, Any], elements: int, missing: int | None) -> dict[str, Any]:
    """The size-dependent counts of a map expectation's result for the whole batch, as GX computes them."""
    from great_expectations.expectations.expectation import _format_map_output

    outcome = entry["result"]
    formatted = _format_map_output(
        {"result_format": "BASIC", "partial_unexpected_count": 0, "include_unexpected_rows": False},
        entry["success"], element_count=elements, nonnull_count=None if missing is None else elements - missing,
        unexpected_count=outcome.get("unexpected_count"))["result"]
    return {k: formatted[k] for k in BATCH_COUNTS if k in outcome and k in formatted}


def judged_result(evidence: Evidence, checked: pd.DataFrame, suite: dict[str, Any]) -> dict[str, Any]:
    """GX's result on the kept rows, with the counts and the fingerprint of the whole batch."""
    result = run_suite(checked, suite, None)
    if len(result["results"]) != len(evidence.element_counts):
        raise NotStreamable("GX gave the kept rows a different number of results than the chunks")
    for i, entry in enumerate(result["results"]):
        if exception_message(entry.get("exception_info") or {}):
            raise NotStreamable(f"{entry['expectation_config']['type']} raised on the kept rows")
        if "element_count" in (entry.get("result") or {}):
            entry["result"].update(_batch_counts(entry, evidence.element_counts[i], evidence.missing_counts[i]))
    markers = (result.get("meta") or {}).get("batch_markers")
    if isinstance(markers, dict) and "pandas_data_fingerprint" in markers:
        markers["pandas_data_fingerprint"] = evidence.fingerprint.hexdigest()
    return result


def _cast_order(reasons: dict[int, list[dict[str, Any]]], contract: DatasetContract) -> dict[int, list[dict[str, Any]]]:
    """Cast reasons in the order the whole frame's cast gives them: column by column, then by row."""
    columns = list(contract.column_types())
    return {p: reasons[p] for p in sorted(reasons, key=lambda p: (columns.index(reasons[p][0]["column"]), p))}


def _verdicts(evidence: Evidence, contract: DatasetContract, suite: dict[str, Any], bounds: tuple[float, float]
              ) -> tuple[dict[int, list[dict[str, Any]]], dict[str, Any], list[dict[str, Any]], pd.DataFrame,
                         pd.DataFrame]:
    """Every row's reasons, the suite's result and the batch failures, from the kept rows alone."""
    typed = pd.concat(evidence.typed).sort_index()
    raw = pd.concat(evidence.raw).sort_index()
    result = judged_result(evidence, typed.drop(columns=ROW_COLUMN), suite)
    reasons = {p: list(r) for p, r in _cast_order(evidence.cast_reasons, contract).items()}
    unreadable = {(p, r["column"]) for p, cast_reasons in reasons.items() for r in cast_reasons}
    suite_reasons, schema_failures = _suite_reasons(result, typed, unreadable)
    for position, found in suite_reasons.items():
        reasons.setdefault(position, []).extend(found)
    for position, found in plausibility_reasons(typed, contract, bounds, reasons).items():
        reasons.setdefault(position, []).extend(found)
    return reasons, result, schema_failures, raw, typed


def _fetch_repeated(chunks: Chunks, evidence: Evidence, contract: DatasetContract, suite: dict[str, Any]) -> None:
    """Pass 2: the rows whose key repeats and that no rule flagged yet, kept for GX to compare."""
    wanted: set[int] = set()
    for keys in evidence.keys:
        wanted.update(int(p) for p in repeated_positions(keys))
    evidence.keys = []
    give_back_memory()
    wanted -= evidence.kept
    if not wanted:
        return
    for raw in chunks():
        here = wanted.intersection(range(raw.index.start, raw.index.stop))
        if here:
            _, _, typed, _ = _prepared(raw, contract, suite)
            evidence.keep(raw, typed, here)
        give_back_memory()


# --- the clean snapshot ---------------------------------------------------------------------------------

class CleanWriter:
    """The valid rows to Parquet, in row groups of CLEAN_ROW_GROUP_ROWS: `ingest.snapshot_bytes`' bytes."""

    def __init__(self) -> None:
        self.sink = pa.BufferOutputStream()
        self.writer: pq.ParquetWriter | None = None
        self.held: list[pa.Table] = []
        self.held_rows = 0
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.sink, table.schema, compression="zstd")
            self.empty = table.slice(0, 0)
        if table.num_rows:
            self.held.append(table)
            self.held_rows += table.num_rows
        while self.held_rows >= CLEAN_ROW_GROUP_ROWS:
            self._flush(CLEAN_ROW_GROUP_ROWS)

    def _flush(self, rows: int) -> None:
        assert self.writer is not None
        table = pa.concat_tables(self.held)
        self.writer.write_table(table.slice(0, rows).combine_chunks(), row_group_size=CLEAN_ROW_GROUP_ROWS)
        rest = table.slice(rows).combine_chunks()  # a copy: the written rows are not kept alive by it
        self.held, self.held_rows = ([rest] if rest.num_rows else []), rest.num_rows
        self.rows += rows
        del table

    def close(self) -> memoryview:
        assert self.writer is not None
        if self.held_rows:
            self._flush(self.held_rows)
        elif self.rows == 0:
            self.writer.write_table(self.empty, row_group_size=CLEAN_ROW_GROUP_ROWS)  # as write_table does
        self.writer.close()
        return memoryview(self.sink.getvalue())


def _write_clean(chunks: Chunks, labelled: int, bad: set[int], contract: DatasetContract,
                 suite: dict[str, Any]) -> tuple[memoryview, int]:
    """Pass 3: each chunk's valid labelled rows, cast again, to the clean snapshot."""
    writer = CleanWriter()
    for raw in chunks():
        if raw.index.start >= labelled:
            break
        _, _, typed, _ = _prepared(raw, contract, suite)
        valid = typed.loc[(typed.index < labelled) & ~typed.index.isin(list(bad)), contract.columns()]
        writer.write(valid.reset_index(drop=True))
        del raw, typed, valid
        give_back_memory()
    return writer.close(), writer.rows


# --- the whole --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Classified:
    """The labelled rows' result, the awaiting rows' one (as `classify_with_awaiting` gives them, but with
    no valid rows held: they are in `clean`), and the clean snapshot's bytes."""

    result: QualityResult
    awaiting: QualityResult
    clean: memoryview


def classify_chunks(chunks: Chunks, labelled: int, contract: DatasetContract, suite: dict[str, Any],
                    policy: QualityPolicy | None = None) -> Classified:
    """`quality.classify_with_awaiting` on chunked rows (the first `labelled` are labelled, the rest await
    their outcome), with the clean snapshot written as the chunks go. NotStreamable when it cannot."""
    if not streamable(suite) or labelled == 0:
        raise NotStreamable("the suite has a rule that needs the whole batch at once" if labelled else "no rows")
    bounds = policy.age_at_event_years if policy else DEFAULT_AGE_AT_EVENT_YEARS
    chunks = chunks.cast_by(contract)
    evidence = Evidence(conform=chunks.conform)
    for raw in chunks():
        _check_chunk(raw, contract, suite, bounds, evidence)
        give_back_memory()
    _fetch_repeated(chunks, evidence, contract, suite)
    reasons, gx_result, schema_failures, raw, typed = _verdicts(evidence, contract, suite, bounds)
    clean, valid_rows = _write_clean(chunks, labelled, set(reasons), contract, suite)
    quarantined = raw.loc[raw.index.isin(list(reasons))].reset_index(drop=True)
    no_rows = typed[contract.columns()].iloc[:0].reset_index(drop=True)
    later = {p - labelled: _awaiting_faults(r, contract.target_column) for p, r in reasons.items() if p >= labelled}
    faulty = {p: r for p, r in later.items() if r}
    waiting_quarantined = quarantined[quarantined[ROW_COLUMN] >= labelled].copy()
    waiting_quarantined[ROW_COLUMN] -= labelled
    awaiting = QualityResult(
        rows_read=evidence.rows - labelled, valid=no_rows,
        quarantined=waiting_quarantined[waiting_quarantined[ROW_COLUMN].isin(list(faulty))].reset_index(drop=True),
        reasons=faulty, normalisations=[], gx_result={}, schema_failures=schema_failures, typed=None)
    result = QualityResult(
        rows_read=labelled, valid=no_rows,
        quarantined=quarantined[quarantined[ROW_COLUMN] < labelled].reset_index(drop=True),
        reasons={p: r for p, r in reasons.items() if p < labelled},
        normalisations=_ordered_normalisations(evidence.normalisations, contract), gx_result=gx_result,
        schema_failures=schema_failures, valid_rows=valid_rows)
    return Classified(result, awaiting, clean)


def classify_snapshots(paths: list[Path], contract: DatasetContract, suite: dict[str, Any],
                       policy: QualityPolicy | None = None, chunk_rows: int = CHUNK_ROWS,
                       keys: Keyring | None = None) -> Classified:
    """`classify_chunks` on snapshot files checked against their hashes: the labelled rows', then (if
    any) those awaiting their outcome."""
    with crypto.open_plain(paths[0], keys) as handle:
        labelled = pq.read_metadata(handle).num_rows
    return classify_chunks(parquet_chunks(paths, chunk_rows, keys), labelled, contract, suite, policy)
