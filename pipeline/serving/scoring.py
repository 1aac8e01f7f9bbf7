"""Batch scoring: the champion's forecast, with its interval, for every record that needs one.

Which records is `serving.score_records`: those awaiting their outcome (target NULL), or all. They
are read over COPY as Arrow, `serving.batch_rows` at a time (never the whole table in memory), in
id order; a chunk never splits rows sharing an id, so a duplicate id is judged within one chunk.
Each chunk is checked against the data contract by the code training uses (`quality`): the valid
rows, normalised and typed as validation makes them, are scored by the champion
(`intervals.forecast`); the others go to `pipeline.scoring_refusals` with their reasons.

Each version in the model's shadow set (`pipeline.shadows`, see `pipeline.champion`) scores the same
records as the champion, chunk by chunk, into `pipeline.predictions` with source 'shadow', which the
CRM's view never shows. A shadow that cannot be loaded (its artifact fails the hash check) or cannot
score a chunk is stopped for the run, its rows of the run taken back, the reason logged and recorded
with the run: the champion's forecasts go on regardless.

A run's rows are written with COPY in one transaction that first deletes what the same run id wrote
before (batch and shadow alike): re-running a run replaces its rows, never duplicates them, and a
reader never sees half a run. `pipeline.scoring_runs` says what the run selected, scored and refused
(and, per shadow, scored or why it stopped), or why it failed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import sqlalchemy as sa

from pipeline.contract.config import DatasetContract, QualityPolicy, suite_columns
from pipeline.data import ingest, quality, tombstones, validate
from pipeline.model import intervals
from pipeline.registry import records, runs
from pipeline.registry.runs import error_line
from pipeline.runtime import threads
from pipeline.store import binary_copy, crypto

if TYPE_CHECKING:
    from pipeline.workspace import Workspace

log = logging.getLogger(__name__)

_SCORING_LOCK_ID = 72_410_008  # pg_advisory_xact_lock(key, hashtext(run_id)): one writer per scoring run
PREDICTION_COLUMNS = ("model", "version", "source_id", "prediction", "lower", "upper", "coverage", "run_id",
                      "source", "input_hash")  # what a writer gives; the database adds prediction_id and made_at
PREDICTIONS = sa.table("predictions", *(sa.column(c) for c in ("prediction_id", *PREDICTION_COLUMNS, "made_at")),
                       schema="pipeline")  # every forecast made (sql/008_serving.sql), for queries and inserts
NOT_FINITE_FORECAST = {"code": "not_finite_forecast", "column": "prediction",
                       "rule": "the champion's forecast is a finite number"}


class NoChampion(LookupError):
    """The model has no champion to score with."""


class ContractUnusable(ValueError):
    """A chunk broke a table-level expectation: its rows cannot be judged one by one."""


def selection_query(contract: DatasetContract, score_records: str) -> sa.Select[Any]:
    """The records to score: those awaiting their outcome, or all; in id order (see `chunks`)."""
    table = ingest.source_table(contract)
    query = sa.select(*table.c)
    if score_records == "awaiting_outcome":
        query = query.where(table.c[contract.target_column].is_(None))
    elif score_records != "all":
        raise ValueError(f"serving.score_records must be 'awaiting_outcome' or 'all', got {score_records!r}")
    return query.order_by(table.c[contract.id_column])


def _clean_cut(ids: pa.ChunkedArray, at: int) -> int | None:
    """The first position from `at` on where the id changes from the row before; None if it never does."""
    changed = pc.fill_null(pc.not_equal(ids.slice(at - 1, len(ids) - at), ids.slice(at)), False)
    flags = changed.to_numpy(zero_copy_only=False)
    return at + int(np.argmax(flags)) if flags.any() else None


def chunks(batches: Iterator[pa.RecordBatch], schema: pa.Schema, rows: int, id_column: str) -> Iterator[pa.Table]:
    """The rows (ordered by id) re-cut into tables of `rows` rows, longer only where rows share an id."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        while count > rows:  # a row beyond the cut tells whether the cut splits an id
            table = pa.Table.from_batches(held, schema)
            cut = _clean_cut(table.column(id_column), rows)
            if cut is None:
                break  # the same id runs to the end of what is read: read more
            yield table.slice(0, cut)
            rest = table.slice(cut)
            held, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(held, schema)


def _names_target(reason: dict[str, Any], target: str) -> bool:
    return target in str(reason.get("column") or "").split("/")


def scoring_suite(suite: dict[str, Any], contract: DatasetContract) -> dict[str, Any]:
    """The suite without the expectations on the target alone: a forecast never reads the target, so its
    faults refuse nothing (`judge`), and checking a missing outcome on every record awaiting one only costs."""
    kept = [e for e in suite["expectations"] if suite_columns(e) != [contract.target_column]]
    return {**suite, "expectations": kept}


def judge(frame: pd.DataFrame, contract: DatasetContract, suite: dict[str, Any], policy: QualityPolicy
          ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The chunk's rows fit to score (normalised and typed as validation makes them, index = position in
    the chunk) and its refused rows with their reasons. Every row is checked as a record awaiting its
    outcome, and a fault of the target alone refuses nothing: the forecast does not read the target."""
    _, verdicts = quality.classify_with_awaiting(frame.iloc[:0], frame, contract, suite, policy, fast=True)
    if verdicts.schema_failures:
        raise ContractUnusable("\n".join(
            [f"the records to score broke a table-level expectation of suite '{suite['name']}' (not scored):"]
            + [f"  - {validate.describe_failure(f)}" for f in verdicts.schema_failures]))
    refusals = []
    for record in quality.quarantine_records(verdicts, contract.id_column):
        faults = [r for r in record["reasons"] if not _names_target(r, contract.target_column)]
        if faults:
            refusals.append({"row": record["row_number"], "source_id": record["source_id"], "reasons": faults})
    typed = verdicts.typed
    assert typed is not None  # classify_with_awaiting keeps every awaiting row typed
    refused = [r["row"] for r in refusals]
    return typed.loc[~typed[quality.ROW_COLUMN].isin(refused), contract.columns()], refusals


def _id_texts(ids: pd.Series) -> list[str] | pa.Array:
    """Source ids as the predictions table holds them (text): 17, not 17.0; whole numbers cast by Arrow at once."""
    if pd.api.types.is_integer_dtype(ids.dtype) and not ids.hasnans:
        return pa.array(ids.to_numpy(dtype="int64")).cast(pa.string())
    if pd.api.types.is_integer_dtype(ids.dtype) or pd.api.types.is_string_dtype(ids.dtype):
        texts: list[str] = ids.astype(str).tolist()
        return texts
    return [str(quality.source_id(v)) for v in ids]


FORECAST_TYPES = {"model": "text", "version": "int4", "prediction": "float8", "lower": "float8", "upper": "float8",
                  "coverage": "float8", "run_id": "text", "source": "text", "input_hash": "text", "source_id": "text"}


def copy_forecasts(cursor: Any, table: str, values: dict[str, Any], rows: int) -> int:
    """COPY forecasts (each of PREDICTION_COLUMNS: an array, a list, or one value for every row) into `table`
    with binary COPY: the numbers arrive exactly as computed, no text parsed. The columns of one width for every
    row go first (`FORECAST_TYPES`' order), laid out by numpy; the source ids, of any length, last."""
    columns = [binary_copy.Column(name, kind, values[name]) for name, kind in FORECAST_TYPES.items()]
    return binary_copy.copy_in(cursor, table, columns, rows)


PIECES = 4  # a chunk's forecasts go out in this many COPYs: the server stores one while the next is hashed
PIECE_ROWS = 2_500  # the smallest piece worth its own COPY


def _copy(cursor: Any, table: str, frame: pd.DataFrame) -> None:
    """Bulk-load a frame into `table` with COPY (CSV written by Arrow); NaN and infinities as PostgreSQL
    reads them ('nan', 'inf'), a missing value as an empty field, text always quoted."""
    buffer = pa.BufferOutputStream()
    pa_csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), buffer,
                     pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
    binary_copy.send(cursor, f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN WITH (FORMAT csv)",
                     buffer.getvalue().to_pybytes())


@dataclass
class Shadow:
    """A version scored in shadow during one run: its model and interval, its tally, or why it stopped."""

    version: int
    model: Any = None
    interval: intervals.Interval | None = None
    scored: int = 0
    not_finite: int = 0
    failure: str | None = None

    def record(self) -> dict[str, Any]:
        return {"version": self.version, "status": "failed" if self.failure else "done", "rows_scored": self.scored,
                "rows_not_finite": self.not_finite, "reason": self.failure}


class _Writer:
    """Writes one chunk's forecasts and refusals on the run's transaction, and keeps the tally. A COPY of
    forecasts runs on a thread of its own (psycopg2 waits for the server without the GIL): the server stores
    one piece while this process hashes and encodes the next, or reads and judges the next chunk. One
    statement at a time on the connection: every other use waits for the COPY in flight (`execute`, `drain`)."""

    def __init__(self, cursor: Any, run_id: str, model: str, interval: intervals.Interval,
                 new_sealer: Callable[[], crypto.ValueSealer] | None = None) -> None:
        self.cursor, self.run_id, self.model, self.interval = cursor, run_id, model, interval
        self._new_sealer = new_sealer  # encryption at rest: the run's refusals share one data key, made when needed
        self._sealer: Future[crypto.ValueSealer] | None = None
        self.selected = self.scored = self.refused = 0
        self.reason_counts: Counter[str] = Counter()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"copy-{run_id}")
        self._in_flight: Future[object] | None = None

    def drain(self) -> None:
        """Wait for the COPY in flight; its error, if any, is raised here."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def execute(self, sql: str, parameters: tuple[Any, ...] = ()) -> None:
        self.drain()
        self.cursor.execute(sql, parameters)

    def settle(self) -> None:
        """Wait for the COPY in flight, whatever its outcome: what failed is rolled back next."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.exception()

    def close(self) -> None:
        """Settle the COPY in flight and stop the thread; a data key being made is waited for, whatever its outcome."""
        self.settle()
        self._thread.shutdown(wait=True)
        if self._sealer is not None:
            self._sealer.exception()

    def make_sealer(self) -> None:
        """Start making the run's data key for its refusals (a round trip to record it, the master key wrapping it)
        on a thread of its own, once the run has a refusal: the chunk's forecasts are made and written meanwhile."""
        if self._new_sealer is not None and self._sealer is None:
            self._sealer = threads.in_background(f"data-key-{self.run_id}", self._new_sealer)

    def _send(self, copy: Callable[[], object]) -> None:
        self.drain()
        self._in_flight = self._thread.submit(copy)

    def _copy_forecasts(self, valid: pd.DataFrame, forecast: pd.DataFrame, hashes: np.ndarray, id_column: str,
                        interval: intervals.Interval, source: str) -> int:
        values = {"model": self.model, "version": interval.version, "source_id": _id_texts(valid[id_column]),
                  "prediction": forecast["prediction"].to_numpy(dtype="float64"),
                  "lower": forecast["lower"].to_numpy(dtype="float64"),
                  "upper": forecast["upper"].to_numpy(dtype="float64"), "coverage": interval.coverage,
                  "run_id": self.run_id, "source": source, "input_hash": hashes}
        columns = [binary_copy.Column(name, kind, values[name]) for name, kind in FORECAST_TYPES.items()]
        payload, sql = binary_copy.encode(columns, len(valid)), binary_copy.statement("pipeline.predictions", columns)
        self._send(lambda: binary_copy.send(self.cursor, sql, payload))
        return len(valid)

    def forecasts(self, valid: pd.DataFrame, forecast: pd.DataFrame, hashes: np.ndarray, id_column: str) -> None:
        self.scored += self._copy_forecasts(valid, forecast, hashes, id_column, self.interval, "batch")

    def shadow_forecasts(self, shadow: Shadow, valid: pd.DataFrame, forecast: pd.DataFrame, hashes: np.ndarray,
                         id_column: str) -> None:
        assert shadow.interval is not None  # a shadow scores only once loaded
        shadow.scored += self._copy_forecasts(valid, forecast, hashes, id_column, shadow.interval, "shadow")

    def refusals(self, refusals: list[dict[str, Any]], first_row: int) -> None:
        """Refused rows, one line per source id (copies of one id share it; a missing id gets its row)."""
        merged: dict[str, list[dict[str, Any]]] = {}
        for refusal in refusals:
            key = refusal["source_id"] or f"(no id: record {first_row + refusal['row'] + 1} of the selection)"
            found = merged.setdefault(key, [])
            found += [r for r in refusal["reasons"] if r not in found]
            self.reason_counts.update({r["code"] for r in refusal["reasons"]})
        frame = self._refusal_rows(merged)
        if len(frame):  # on the COPY thread too, after the forecasts in flight: the next chunk is read meanwhile
            self._send(lambda: _copy(self.cursor, "pipeline.scoring_refusals", frame))
        self.refused += len(refusals)

    def _refusal_rows(self, merged: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
        """The refusals as pipeline.scoring_refusals rows; with encryption at rest, the values that broke the
        contract sealed under the run's data key (made at its first refusal), their codes and rules plain."""
        if self._new_sealer is None or not merged:
            return pd.DataFrame({"run_id": self.run_id, "source_id": list(merged),
                                 "reasons": [json.dumps(r, default=str) for r in merged.values()]})
        self.make_sealer()
        assert self._sealer is not None  # made above
        sealer = self._sealer.result()
        rows = [records.seal_refusal(self.run_id, source_id, reasons, sealer) for source_id, reasons in merged.items()]
        return pd.DataFrame({"run_id": self.run_id, "source_id": list(merged),
                             "reasons": [json.dumps(r["reasons"], default=str) for r in rows],
                             "key_ref": sealer.ref, "sealed": ["\\x" + r["sealed"].hex() for r in rows]})


def _finite(forecast: pd.DataFrame) -> np.ndarray:
    """Which forecasts are a finite number with bounds (a bound is NaN, infinite, with too few residuals)."""
    bounds = forecast[["lower", "upper"]].notna().all(axis=1).to_numpy(dtype=bool)
    return np.asarray(np.isfinite(forecast["prediction"].to_numpy(dtype="float64")) & bounds, dtype=bool)


def _score_chunk(table: pa.Table, writer: _Writer, model: Any, contract: DatasetContract, suite: dict[str, Any],
                 policy: QualityPolicy, shadows: list[Shadow]) -> None:
    frame = ingest.arrow_to_frame(ingest._with_null_columns(table))
    valid, refusals = judge(frame, contract, suite, policy)
    if refusals:
        writer.make_sealer()
    forecast = intervals.forecast(model, valid, contract, writer.interval) if len(valid) else None
    if forecast is not None:
        finite = _finite(forecast)
        for position in valid.index[~finite]:  # no NaN forecast reaches the CRM
            value = str(forecast.at[position, "prediction"])
            refusals.append({"row": int(position), "source_id": str(quality.source_id(valid.at[position,
                                                                                             contract.id_column])),
                             "reasons": [{**NOT_FINITE_FORECAST, "value": value}]})
        valid, forecast = valid.loc[finite], forecast.loc[finite]
        hashes = _write_pieces(writer, valid, forecast, contract)
        for shadow in shadows:  # the records the champion scored, and only those
            if shadow.failure is None:
                _shadow_chunk(writer, shadow, valid, hashes, contract)
    writer.refusals(refusals, writer.selected)
    writer.selected += len(frame)


def _write_pieces(writer: _Writer, valid: pd.DataFrame, forecast: pd.DataFrame, contract: DatasetContract
                  ) -> np.ndarray:
    """Hash and write the chunk's forecasts in pieces (PIECES), each COPY under way while the next is hashed;
    the input hashes of every row, as hex texts (S64)."""
    step = max(PIECE_ROWS, -(-len(valid) // PIECES))
    hashes = []
    for start in range(0, len(valid), step):
        part = valid.iloc[start:start + step]
        hashes.append(intervals.input_digests(part, contract))  # written by the COPY as they are
        writer.forecasts(part, forecast.iloc[start:start + step], hashes[-1], contract.id_column)
    return np.concatenate(hashes) if hashes else np.empty(0, dtype="S64")


def _stop_shadow(writer: _Writer, shadow: Shadow, reason: str) -> None:
    """Stop a shadow for the rest of the run: its rows of the run taken back, the reason logged and kept."""
    writer.execute("DELETE FROM pipeline.predictions WHERE run_id = %s AND model = %s AND version = %s "
                          "AND source = 'shadow'", (writer.run_id, writer.model, shadow.version))
    shadow.failure, shadow.scored, shadow.not_finite = reason, 0, 0
    log.warning("scoring run %s: shadow version %s of %s stopped, the champion's forecasts go on: %s",
                writer.run_id, shadow.version, writer.model, reason)


def _shadow_chunk(writer: _Writer, shadow: Shadow, valid: pd.DataFrame, hashes: np.ndarray,
                  contract: DatasetContract) -> None:
    """The shadow's forecasts of the chunk's scored records, inside a savepoint: a failure takes back only its own."""
    writer.execute("SAVEPOINT shadow_chunk")
    try:
        assert shadow.interval is not None
        forecast = intervals.forecast(shadow.model, valid, contract, shadow.interval)
        finite = _finite(forecast)
        shadow.not_finite += int((~finite).sum())
        writer.shadow_forecasts(shadow, valid.loc[finite], forecast.loc[finite],
                                hashes[finite], contract.id_column)
        writer.drain()
    except Exception as exc:  # noqa: BLE001 - a shadow never breaks the champion's batch; the reason is kept
        writer.settle()
        writer.cursor.execute("ROLLBACK TO SAVEPOINT shadow_chunk")
        first_line = (str(exc).strip().splitlines() or [""])[0]
        _stop_shadow(writer, shadow, f"could not score the chunk from record {writer.selected + 1} of the selection: "
                                     f"{type(exc).__name__}: {first_line}")
    else:
        writer.execute("RELEASE SAVEPOINT shadow_chunk")


def start_run(ws: Workspace, run_id: str) -> None:
    """Record the scoring run as running; the same id again starts it over. An id of another model is refused."""
    with ws.engine.begin() as conn:
        started = conn.execute(sa.text("""
            INSERT INTO pipeline.scoring_runs (run_id, model, status) VALUES (:run_id, :model, 'running')
            ON CONFLICT (run_id) DO UPDATE
               SET status = 'running', reason = NULL, version = NULL, rows_selected = NULL, rows_scored = NULL,
                   rows_refused = NULL, reason_counts = NULL, shadows = NULL, started_at = now(), finished_at = NULL
             WHERE pipeline.scoring_runs.model = EXCLUDED.model
            RETURNING run_id
        """), {"run_id": run_id, "model": ws.model}).scalar()
        if started is None:
            owner = conn.scalar(sa.text("SELECT model FROM pipeline.scoring_runs WHERE run_id = :r"), {"r": run_id})
            raise ValueError(f"scoring run id {run_id!r} is already a run of model {owner!r}, not {ws.model!r}; "
                             "use another run id")


def _fail_run(ws: Workspace, run_id: str, reason: str) -> None:
    try:
        with ws.engine.begin() as conn:
            conn.execute(sa.text("""
                UPDATE pipeline.scoring_runs SET status = 'failed', reason = :reason, finished_at = now()
                 WHERE run_id = :run_id AND model = :model
            """), {"run_id": run_id, "model": ws.model, "reason": reason})
    except sa.exc.DBAPIError:  # the database is gone: the error that got us here says so, the next command reaps
        log.debug("scoring run %s could not be marked failed (the database is unreachable)", run_id)


def _champion(ws: Workspace) -> dict[str, Any]:
    with ws.engine.connect() as conn:
        champion = records.current_champion(conn, ws.model)
    if champion is None:
        raise NoChampion(f"model {ws.model!r} has no champion to score with: promote one first "
                         "(python -m pipeline retrain, or the retrain DAG)")
    return champion


def load_shadows(ws: Workspace, champion_version: int) -> list[Shadow]:
    """The model's shadow versions, each loaded (hash-checked) with its interval, or with why it could not be."""
    with ws.engine.connect() as conn:
        versions = [v for v in records.shadow_versions(conn, ws.model) if v != champion_version]
    shadows = []
    for version in versions:
        shadow = Shadow(version)
        try:
            with ws.engine.connect() as conn:
                row = records.get_model(conn, version, ws.model)
            shadow.model = ws.load_model(row["artifact_hash"])
            shadow.interval = intervals.for_version(ws, version)
        except Exception as exc:  # noqa: BLE001 - a shadow never breaks the champion's batch; the reason is kept
            shadow.failure = f"could not be loaded: {error_line(exc, ws.settings)}"
            log.warning("shadow version %s of %s not scored, the champion's forecasts go on: %s", version, ws.model,
                        shadow.failure)
        shadows.append(shadow)
    return shadows


def _write_run(ws: Workspace, run_id: str, champion: dict[str, Any], early: ingest.EarlyRead) -> dict[str, Any]:
    """Score every selected record on one transaction: the run's earlier rows deleted, the new ones copied. `early`:
    the selection's rows, their first chunk read meanwhile."""
    contract, serving = ws.config.dataset, ws.config.serving
    raw, writer = None, None
    try:
        suite = scoring_suite(validate.load_suite(contract.expectation_suite), contract)
        from pipeline.model import compiled  # ONNX Runtime and skl2onnx load where a batch scores, not on import

        model = compiled.for_version(ws, ws.load_model(champion["artifact_hash"]), champion["version"])  # hashed
        interval = intervals.for_version(ws, champion["version"])
        shadows = load_shadows(ws, champion["version"])
        raw = ws.engine.raw_connection()
        cursor = raw.cursor()
        cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_SCORING_LOCK_ID, run_id))
        cursor.execute("DELETE FROM pipeline.predictions WHERE run_id = %s AND model = %s "
                       "AND source IN ('batch', 'shadow')", (run_id, ws.model))
        cursor.execute("DELETE FROM pipeline.scoring_refusals WHERE run_id = %s", (run_id,))
        writer = _Writer(cursor, run_id, ws.model, interval,
                         ws.keyring.sealer if ws.store.encrypt else None)
        erased = tombstones.refuser(ws.engine, ws.settings.erasure_key_file)
        refusal = ingest.Refusal(contract.id_column, erased) if erased else None
        schema, batches = early.batches()
        if refusal is not None:  # an erased patient the source still holds is never forecast again
            batches = refusal.kept(batches)
        for table in chunks(batches, schema, serving.batch_rows, contract.id_column):
            _score_chunk(table, writer, model, contract, suite, ws.config.quality, shadows)
        writer.drain()
        if writer.selected != writer.scored + writer.refused:
            raise RuntimeError(f"scoring run {run_id}: {writer.selected} records selected, but {writer.scored} "
                               f"scored and {writer.refused} refused")
        summary = {"run_id": run_id, "model": ws.model, "version": champion["version"],
                   "coverage": interval.coverage, "half_width": interval.half_width,
                   "score_records": serving.score_records, "rows_selected": writer.selected,
                   "rows_scored": writer.scored, "rows_refused": writer.refused,
                   "reason_counts": dict(sorted(writer.reason_counts.items())),
                   "shadows": [s.record() for s in shadows], "rows_erased": refusal.rows if refusal else 0}
        cursor.execute("""
            UPDATE pipeline.scoring_runs
               SET status = 'done', version = %s, rows_selected = %s, rows_scored = %s, rows_refused = %s,
                   reason_counts = %s::jsonb, shadows = %s::jsonb, finished_at = now()
             WHERE run_id = %s
        """, (champion["version"], writer.selected, writer.scored, writer.refused,
              json.dumps(summary["reason_counts"]), json.dumps(summary["shadows"]), run_id))
        raw.commit()
    except BaseException:
        if writer is not None:
            writer.close()  # no COPY in flight while the run is taken back
        if raw is not None:
            _roll_back(raw, run_id)
        raise
    finally:
        if writer is not None:
            writer.close()
        if raw is not None:
            raw.close()
    return summary


def _roll_back(raw: Any, run_id: str) -> None:
    """Take back the run's writes. A lost connection has taken them back already, and its error, not the
    rollback's 'connection already closed', is the one to tell: the connection is discarded, not pooled."""
    try:
        raw.rollback()
    except Exception:  # noqa: BLE001 - the server rolled back with the connection; the first error is raised
        log.debug("scoring run %s: rollback on a lost connection", run_id, exc_info=True)
        raw.invalidate()


def score_batch(ws: Workspace, run_id: str) -> dict[str, Any]:
    """Forecast every record `serving.score_records` selects with the model's champion; refuse, with
    reasons, the records that break the data contract. Re-running a run id replaces its rows."""
    contract, serving = ws.config.dataset, ws.config.serving  # the first chunk is read while the champion loads
    early = ingest.EarlyRead(ws.engine, contract, selection_query(contract, serving.score_records), serving.batch_rows)
    try:
        with runs.running(ws.engine, ws.settings, run_id, "score"):  # a killed run is marked abandoned by the next
            start_run(ws, run_id)
            try:
                summary = _write_run(ws, run_id, _champion(ws), early)
            except BaseException as exc:
                _fail_run(ws, run_id, error_line(exc, ws.settings))
                raise
    finally:
        early.close()
    log.info("scoring run %s: %d records selected (%s), %d scored by version %d of %s, %d refused %s",
             run_id, summary["rows_selected"], summary["score_records"], summary["rows_scored"], summary["version"],
             ws.model, summary["rows_refused"], summary["reason_counts"])
    for shadow in summary["shadows"]:
        log.info("scoring run %s: shadow version %d %s", run_id, shadow["version"],
                 f"scored {shadow['rows_scored']}" if shadow["status"] == "done" else f"stopped: {shadow['reason']}")
    return summary
