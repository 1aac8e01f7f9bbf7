"""What the REST API serves with: tokens, the hot-swapped champion, the prediction log, and records in and out.

`pipeline.serving.app` builds the FastAPI app and `pipeline.serving.routes` its routes from these. A record is judged by the same contract
as training (types by `pipeline.data.casting`, then the suite's rules, by `pipeline.data.rowchecks` where it
handles them all and else by Great Expectations, and the plausibility checks, through
`quality.classify_with_awaiting`) and scored by the champion's own artifact, loaded
through `Workspace.load_model` (hash-checked). A background thread looks for a new champion every
`serving.reload_seconds` and swaps it in with one reference assignment; another writes every forecast
to `pipeline.predictions` (source 'api') in batches, off the request path. Logs carry counts,
versions and request ids, never a patient's values.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import sqlalchemy as sa
from fastapi import Request
from fastapi.security import HTTPBearer
from sqlalchemy.engine import Engine

from pipeline.contract.config import DatasetContract
from pipeline.data import quality, validate
from pipeline.data.casting import NOT_FINITE, cast_column
from pipeline.model import intervals
from pipeline.registry.records import current_champion, get_evaluation, get_model
from pipeline.registry.runs import error_line
from pipeline.serving.scoring import PREDICTIONS
from pipeline.store import accesslog
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)

ENV_API_TOKEN_FILE = "PIPELINE_API_TOKEN_FILE"
# JSON has no date type: the API reads dates and timestamps as text by these formats, whatever the table holds.
API_FORMATS = {"date": "%Y-%m-%d"}
API_RULES = {"date": "a date as a JSON string YYYY-MM-DD",
             "timestamp": "a timestamp as a JSON string, RFC 3339 with a zone (YYYY-MM-DDTHH:MM:SS[.fff]Z or +HH:MM)",
             "float": "a JSON number", "integer": "a whole JSON number", "text": "a JSON string"}
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
WRITER_BATCH_ROWS = 500
WRITER_SECONDS = 0.5
# Module-level: FastAPI resolves a dependency's annotations in the module's namespace.
BEARER = HTTPBearer(auto_error=False, description=f"a token from the file {ENV_API_TOKEN_FILE} names")
REQUEST_IDS = random.Random()  # seeded from os.urandom once, in the process that serves
os.register_at_fork(after_in_child=REQUEST_IDS.seed)  # a forked worker draws ids of its own
WRITER_CAPACITY = 100_000  # forecasts waiting for the database (serving.max_pending_forecasts)

class ServingError(RuntimeError):
    """The service cannot start as configured (no tokens, an unreadable token file)."""


class RequestProblem(Exception):
    """A request refused as a whole, with its HTTP status and a message for the caller."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status, self.detail = status, detail


# --- tokens --------------------------------------------------------------------------------------


class Token(str):
    """An API token (the secret itself, as a str) with the name its principal is logged under: the name given
    before it on its line of the token file (`crm-prod <token>`), or `token:<first 8 hex of its SHA-256>`."""

    principal: str

    def __new__(cls, secret: str, principal: str | None = None) -> Token:
        token = super().__new__(cls, secret)
        token.principal = principal or f"token:{hashlib.sha256(secret.encode()).hexdigest()[:8]}"
        return token


def read_tokens(path: Path) -> tuple[str, ...]:
    """The tokens in a file, one a line (`NAME TOKEN`, or the token alone); blank lines and lines starting with
    # are ignored. The name is who the access log says read patient data (pipeline.access_log)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ServingError(f"cannot read the API token file {path} ({ENV_API_TOKEN_FILE}): {exc.strerror}") from None
    fields = [line.split() for line in (raw.strip() for raw in lines) if line and not line.startswith("#")]
    for number, words in enumerate(fields, 1):
        if len(words) > 2:
            raise ServingError(f"API token file {path}: entry {number} has {len(words)} fields; write NAME TOKEN "
                               "or the token alone")
    return tuple(Token(words[-1], words[0] if len(words) == 2 else None) for words in fields)


def tokens_from_environment(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The tokens of the file `PIPELINE_API_TOKEN_FILE` names; none when it is unset."""
    path = environ.get(ENV_API_TOKEN_FILE)
    return read_tokens(Path(path)) if path else ()


def token_matches(presented: str, tokens: Sequence[str]) -> bool:
    """Whether `presented` is one of `tokens`, compared in constant time against every one."""
    return principal_of(presented, tokens) is not None


def principal_of(presented: str, tokens: Sequence[str]) -> str | None:
    """The principal name of the token `presented` is (compared in constant time against every one), or None."""
    given, found = presented.encode(), None
    for token in tokens:
        if hmac.compare_digest(given, token.encode()) and found is None:
            found = token.principal if isinstance(token, Token) else Token(token).principal
    return found


def check_tokens(tokens: Sequence[str], insecure_local: bool) -> None:
    """Refuse to serve without tokens unless told it is a local, unprotected service; say so loudly then."""
    if tokens:
        return
    if not insecure_local:
        raise ServingError(f"no API tokens configured: set {ENV_API_TOKEN_FILE} to a file holding one token a line "
                           "(or pass --insecure-local to serve without authentication on this machine only)")
    log.warning("*** INSECURE: --insecure-local given, the REST API serves patient forecasts WITHOUT "
                "authentication; never expose this port beyond this machine ***")


# --- the champion, hot-swapped -------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """What one request is scored with: a version, its model and its interval, swapped as one reference."""

    version: int
    model: Any
    interval: intervals.Interval
    artifact_hash: str
    family: str
    summary: dict[str, Any] = field(default_factory=dict)  # what GET /v1/models/{model} answers, read at load


class Champion:
    """The served champion; `refresh` loads a new one (hash-checked) and swaps it in, or keeps the old."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.current: Served | None = None
        self.refused: dict[str, Any] | None = None  # the registry's champion that could not be loaded, and why

    def refresh(self) -> None:
        """Load the registry's champion when it differs from the served one; on failure keep serving the old."""
        with self.ws.engine.connect() as conn:
            row = current_champion(conn, self.ws.model)
        served = self.current
        if row is None or (served and (served.version, served.artifact_hash) == (row["version"], row["artifact_hash"])):
            self.refused = None
            return
        from pipeline.model import compiled  # ONNX Runtime loads with the first champion, not on import

        try:
            model = compiled.for_version(self.ws, self.ws.load_model(row["artifact_hash"]), int(row["version"]))
            loaded = Served(int(row["version"]), model, intervals.for_version(self.ws, int(row["version"])),
                            str(row["artifact_hash"]), str(row["model_family"]))
            loaded = replace(loaded, summary=model_summary(self.ws, loaded))
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old model; the reason names no patient
            reason = error_line(exc, self.ws.settings)
            if self.refused is None or self.refused["version"] != row["version"]:
                log.warning("champion version %s of %s not loaded (%s): still serving %s", row["version"],
                            self.ws.model, reason, f"version {served.version}" if served else "nothing")
            self.refused = {"version": int(row["version"]), "reason": reason}
            return
        self.current, self.refused = loaded, None
        log.info("serving version %s of %s (%s; interval ±%.3g at coverage %s)%s", row["version"], self.ws.model,
                 row["model_family"], loaded.interval.half_width, loaded.interval.coverage,
                 f", replacing version {served.version}" if served else "")

    def poll(self, stop: threading.Event, seconds: float) -> None:
        """Refresh every `seconds` until `stop` is set; a database outage is logged when it starts and ends."""
        failing = False
        while not stop.wait(seconds):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the poller must outlive a database outage
                if not failing:
                    log.warning("could not look for a new champion (will keep trying, still serving %s): %s",
                                f"version {self.current.version}" if self.current else "nothing",
                                error_line(exc, self.ws.settings))
                failing = True
                continue
            if failing:
                log.info("looking for a new champion again")
            failing = False


# --- the prediction log --------------------------------------------------------------------------


class PredictionLog:
    """Forecasts written to `pipeline.predictions` in batches by one thread, off the request path. A request
    first `admit`s its records: room is kept for at most `capacity` forecasts not yet written, so while the
    database is slow or down the service refuses new requests (503) instead of dropping what it answered.
    A failed write is retried with back-off; `close` flushes."""

    def __init__(self, engine: Engine, capacity: int = WRITER_CAPACITY, batch_rows: int = WRITER_BATCH_ROWS,
                 seconds: float = WRITER_SECONDS) -> None:
        self.engine, self.capacity, self.batch_rows, self.seconds = engine, capacity, batch_rows, seconds
        self._rows: collections.deque[dict[str, Any]] = collections.deque()
        self._reads: list[accesslog.Access] = []  # who read which forecasts: written with the next batch
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reserved = self.written = self.failures = 0
        self.failing: str | None = None  # why the last write failed, until one succeeds

    def admit(self, rows: int) -> bool:
        """Keep room for `rows` forecasts; False when the log cannot hold them."""
        with self._ready:
            if len(self._rows) + self.reserved + rows > self.capacity:
                return False
            self.reserved += rows
            return True

    def release(self, rows: int) -> None:
        """Give back room kept for forecasts that will not be recorded."""
        with self._ready:
            self.reserved -= rows

    def put(self, rows: list[dict[str, Any]], read: accesslog.Access | None = None) -> None:
        """Queue forecasts whose room was kept, and the access-log row of the request that read them."""
        with self._ready:
            self.reserved -= len(rows)
            self._rows.extend(rows)
            if read is not None:
                self._reads.append(read)
            if len(self._rows) >= self.batch_rows:
                self._ready.notify()

    def trouble(self) -> str | None:
        """Why forecasts cannot be recorded now (the database failing, the log full), or None."""
        pending = len(self._rows) + self.reserved
        if self.failing:
            return f"{pending} forecasts wait for the database: {self.failing}"
        if pending >= self.capacity:
            return f"{pending} forecasts wait to be recorded (serving.max_pending_forecasts {self.capacity})"
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def _take(self) -> list[dict[str, Any]]:
        with self._ready:
            if len(self._rows) < self.batch_rows and not self._stop.is_set():
                self._ready.wait(self.seconds)
            return [self._rows.popleft() for _ in range(min(self.batch_rows, len(self._rows)))]

    def _take_reads(self) -> list[accesslog.Access]:
        with self._ready:
            reads, self._reads = self._reads, []
        return reads

    def _write(self, batch: list[dict[str, Any]]) -> bool:
        reads = self._take_reads()
        try:
            with self.engine.begin() as conn:
                if batch:
                    conn.execute(sa.insert(PREDICTIONS), batch)
                accesslog.record(conn, reads)
        except Exception as exc:  # noqa: BLE001 - a database hiccup never fails a response: retry later
            self.failures += 1
            self.failing = f"{type(exc).__name__} writing to pipeline.predictions"
            log.warning("could not record %d forecasts (attempt %d failed, will retry): %s", len(batch),
                        self.failures, type(exc).__name__)
            with self._ready:
                self._rows.extendleft(reversed(batch))
                self._reads[:0] = reads
            return False
        if self.failing:
            log.info("recording forecasts again after %d failed attempts", self.failures)
        self.written, self.failing = self.written + len(batch), None
        return True

    def _run(self) -> None:
        backoff = self.seconds
        while not self._stop.is_set():
            batch = self._take()
            if (batch or self._reads) and not self._write(batch):
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            elif batch:
                backoff = self.seconds

    def close(self, timeout: float = 10.0) -> None:
        """Stop the writer and flush what waits, trying for up to `timeout` seconds."""
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while (self._rows or self._reads) and time.monotonic() < deadline:
            batch = [self._rows.popleft() for _ in range(min(self.batch_rows, len(self._rows)))]
            if not self._write(batch):
                time.sleep(0.5)
        if self._rows:
            log.warning("%d forecasts could not be recorded before shutdown", len(self._rows))
        log.info("prediction log closed: %d forecasts recorded", self.written)


# --- records: from JSON to judged, typed rows ----------------------------------------------------


MAX_DEPTH = 2  # a list of records whose values are scalars: nothing deeper is ever a valid request
MAX_ERRORS_PER_RECORD = 20
MAX_ERRORS = 2000  # error items in one answer, every record together
MAX_ECHO = 64  # characters of a refused value echoed back
JSON_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


class NotFinite(str):
    """A number JSON cannot carry, as the client wrote it: NaN, Infinity, -Infinity, or one past float's range."""


def _json_number(text: str) -> float | NotFinite:
    value = float(text)
    return value if math.isfinite(value) else NotFinite(text)


def _json_integer(text: str) -> int | NotFinite:
    return NotFinite(text) if len(text.lstrip("-")) > 300 else int(text)  # past float's range, and past int64


def nesting_depth(body: bytes) -> int:
    """How deep arrays and objects nest in a JSON text, strings skipped: one linear pass, no recursion."""
    skeleton = np.frombuffer(JSON_STRINGS.sub(b'""', body), dtype=np.uint8)
    steps = (np.isin(skeleton, (ord("["), ord("{"))).astype(np.int32)
             - np.isin(skeleton, (ord("]"), ord("}"))).astype(np.int32))
    return int(np.cumsum(steps).max(initial=0))


def parse_records(body: bytes, max_records: int) -> tuple[list[Any], bool]:
    """The body's records and whether it was a single object; a body that is neither is refused. Nesting is
    bounded before parsing; NaN, Infinity and overflowing numbers parse as `NotFinite`, refused per record."""
    if nesting_depth(body) > MAX_DEPTH:
        raise RequestProblem(422, f"the body nests arrays or objects deeper than {MAX_DEPTH} levels: it must be one "
                                  "record (a JSON object of values) or a list of records")
    try:
        parsed = json.loads(body, parse_constant=NotFinite, parse_float=_json_number, parse_int=_json_integer)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestProblem(422, f"the body is not JSON: {exc.__class__.__name__} at position "
                                  f"{getattr(exc, 'pos', '?')}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise RequestProblem(422, f"the body is not JSON this service reads: {str(exc)[:120]}") from None
    if not _unicode(parsed):
        raise RequestProblem(422, "the body holds a string that is not Unicode text (a lone surrogate such as "
                                  "\\ud800): send UTF-8 text")
    if isinstance(parsed, dict):
        return [parsed], True
    if not isinstance(parsed, list) or not parsed:
        raise RequestProblem(422, "the body must be one record (a JSON object) or a non-empty list of records")
    if len(parsed) > max_records:
        raise RequestProblem(413, f"{len(parsed)} records in one request; at most {max_records} "
                                  "(serving.max_request_records): split the list")
    return parsed, False


def _unicode(parsed: Any) -> bool:
    """Whether every string of a parsed body (keys too, at most two levels deep) encodes as UTF-8."""
    if isinstance(parsed, str):
        try:
            parsed.encode()
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(parsed, dict):
        return all(_unicode(k) and _unicode(v) for k, v in parsed.items())
    if isinstance(parsed, list):
        return all(_unicode(v) for v in parsed)
    return True


def echo(value: Any) -> str | float | int | bool | None:
    """A refused value as the answer may carry it: JSON-compliant, short, never an array or object."""
    if isinstance(value, NotFinite):
        return str(value)[:MAX_ECHO]
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or abs(value) < 2**63 else str(value)[:MAX_ECHO]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | dict):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    return str(value)[:MAX_ECHO]


def bounded(errors: dict[int, list[dict[str, Any]]]) -> dict[int, list[dict[str, Any]]]:
    """At most MAX_ERRORS_PER_RECORD errors a record and MAX_ERRORS in all, the rest said to be left out; a
    record keeps at least one, so it is still refused with a reason."""
    kept, total = {}, 0
    for i in sorted(errors):
        found = errors[i]
        room = max(1, min(MAX_ERRORS_PER_RECORD, MAX_ERRORS - total))
        kept[i] = found[:room]
        if len(found) > room:
            kept[i].append(_error(None, "too_many_errors", f"{len(found) - room} more errors of this record are "
                                  f"not listed (at most {MAX_ERRORS_PER_RECORD} a record, {MAX_ERRORS} an answer)"))
        total += len(kept[i])
    return kept


def api_fields(contract: DatasetContract) -> list[str]:
    """The fields a record may carry: the features, the id and the timestamp (the last two optional)."""
    return [contract.id_column, *contract.feature_names(), contract.timestamp_column]


def _error(field: str | None, code: str, rule: str, value: Any = None) -> dict[str, Any]:
    return {"field": field, "code": code, "rule": rule, "value": echo(value)}


def _shape_errors(records: list[Any], fields: list[str]) -> dict[int, list[dict[str, Any]]]:
    """Records that are not objects, and fields the contract does not have."""
    errors: dict[int, list[dict[str, Any]]] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            errors[i] = [_error(None, "not_an_object", "a record is a JSON object of the contract's fields")]
            continue
        for key in sorted(record.keys() - set(fields)):
            errors.setdefault(i, []).append(_error(str(key)[:MAX_ECHO], "unknown_field",
                                                   "a field of the contract (the request schema's properties)"))
    return errors


def _cast(values: pd.Series, kind: str, column: str) -> tuple[pd.Series, pd.Series]:
    """A column cast by the API's JSON rules: dates as text in API_FORMATS, numbers as JSON numbers only."""
    if kind in ("float", "integer"):
        not_number = values.map(lambda v: isinstance(v, str | bool)).astype(bool)
        cast, failed = cast_column(values.where(~not_number), kind, None, column)
        return cast, failed | not_number
    if kind == "text":
        not_text = values.map(lambda v: v is not None and not isinstance(v, str)).astype(bool)
        cast, failed = cast_column(values.where(~not_text), kind, None, column)
        return cast, failed | not_text
    if kind == "timestamp":
        return _timestamps(values)
    return cast_column(values, kind, API_FORMATS.get(kind), column)


def _timestamp(value: Any) -> pd.Timestamp | None:
    """An RFC 3339 timestamp with its zone ('Z', fractions of a second allowed) in UTC; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        return pd.Timestamp(parsed).tz_convert("UTC") if parsed.tzinfo is not None else None
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return None


def _timestamps(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """A timestamp column cast by `_timestamp`, and which cells held a value that did not cast."""
    cast = pd.Series(pd.to_datetime([_timestamp(v) for v in values], utc=True), index=values.index,
                     dtype="datetime64[us, UTC]")
    return cast, (values.notna() & cast.isna()).astype(bool)


def records_frame(records: list[Any], contract: DatasetContract, now: datetime) -> tuple[
        pd.DataFrame, dict[int, list[dict[str, Any]]]]:
    """The records as a frame of the contract's columns and types, and each record's shape and type errors.
    A record without an id gets one no other record has; without a timestamp, `now`."""
    errors = _shape_errors(records, api_fields(contract))
    objects = [r if isinstance(r, dict) else {} for r in records]
    types = contract.column_types()
    frame = pd.DataFrame(index=range(len(records)))
    for column in contract.columns():
        raw = pd.Series([r.get(column) for r in objects], dtype=object)
        if column == contract.target_column:
            frame[column] = np.full(len(records), np.nan)
            continue
        not_finite = raw.map(lambda v: isinstance(v, NotFinite)).astype(bool)
        for i in np.flatnonzero(not_finite.to_numpy()):
            errors.setdefault(int(i), []).append(_error(column, NOT_FINITE, "a finite JSON number (no NaN, "
                                                        "Infinity, or number past the float range)", raw.iloc[i]))
        raw = raw.where(~not_finite, None)
        cast, failed = _cast(raw, types[column], column)
        for i in np.flatnonzero(failed.to_numpy()):
            errors.setdefault(int(i), []).append(_error(column, "wrong_type", API_RULES[types[column]], raw.iloc[i]))
        frame[column] = cast
    _fill_defaults(frame, objects, contract, now)
    return frame, errors


def _fill_defaults(frame: pd.DataFrame, objects: list[dict[str, Any]], contract: DatasetContract,
                   now: datetime) -> None:
    """An id for each record that gave none (unique in the request), and `now` as its timestamp."""
    no_id = [i for i, r in enumerate(objects) if r.get(contract.id_column) is None]
    if no_id:
        ids = frame[contract.id_column]
        if contract.id_type == "text":
            frame.loc[no_id, contract.id_column] = [f"\x00record-{i}" for i in no_id]
        else:
            low = min([0, *(int(v) for v in ids.dropna())]) - 1
            frame.loc[no_id, contract.id_column] = [low - i for i in no_id]
    stamp = contract.timestamp_column
    no_stamp = [i for i, r in enumerate(objects) if r.get(stamp) is None]
    frame.loc[no_stamp, stamp] = pd.Timestamp(now).tz_convert("UTC")


def describe_rule(reason: dict[str, Any], suite: dict[str, Any]) -> str:
    """The rule a reason names, with the expectation's own bounds from the suite (min, max, value set, ...)."""
    rule = str(reason["rule"])
    for expectation in suite["expectations"]:
        kind, kwargs = expectation["type"], expectation.get("kwargs") or {}
        if kind == rule and validate.column_of(kind, kwargs) == reason["column"]:
            bounds = validate.bound_of(kind, kwargs)
            return f"{rule}({', '.join(f'{k}={v!r}' for k, v in bounds.items())})" if bounds else rule
    return rule


def judge(frame: pd.DataFrame, contract: DatasetContract, suite: dict[str, Any], ws: Workspace,
          cast_errors: dict[int, list[dict[str, Any]]]) -> tuple[pd.DataFrame, dict[int, list[dict[str, Any]]]]:
    """The records normalised as training normalises them, and every record's errors: its shape and type
    errors, then the suite's and the plausibility checks' reasons (the records await their outcome)."""
    _, awaiting = quality.classify_with_awaiting(frame.iloc[:0], frame, contract, suite, ws.config.quality, fast=True)
    assert awaiting.typed is not None  # classify_with_awaiting keeps every awaiting row typed
    normalised = awaiting.typed.drop(columns=quality.ROW_COLUMN)
    errors = {i: list(found) for i, found in cast_errors.items()}
    for i, reasons in awaiting.reasons.items():
        unreadable = {e["field"] for e in errors.get(i, [])}
        for reason in reasons:
            if set(str(reason["column"]).split("/")) <= unreadable:
                continue  # a cell that did not cast is missing to the suite: its reason is wrong_type, given already
            errors.setdefault(i, []).append(_error(reason["column"], reason["code"], describe_rule(reason, suite),
                                                   reason.get("value")))
    return normalised, errors


# --- scoring -------------------------------------------------------------------------------------


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _record_id(record: Any, contract: DatasetContract) -> Any:
    return record.get(contract.id_column) if isinstance(record, dict) else None


@dataclass
class Scored:
    results: list[dict[str, Any]]
    log_rows: list[dict[str, Any]]


class RecordChecks(Protocol):
    """Record checks compiled from the contract and suite (`pipeline.serving.records`), which builds on this module."""

    def judge(self, records: list[Any], now: datetime) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]] | None:
        """Every record's typed values as a plain dict, and every record's errors; None: left to the pandas path."""

    def valid_rows(self, records: list[Any], now: datetime) -> tuple[pd.DataFrame, dict[int, list[dict[str, Any]]]] | None:
        """The valid records' typed rows and every record's errors; None: left to the pandas path."""


def judged_rows(records: list[Any], ws: Workspace, suite: dict[str, Any], judging: threading.Lock,
                checks: RecordChecks | None = None) -> tuple[pd.DataFrame, dict[int, list[dict[str, Any]]]]:
    """The valid records' typed rows and every record's errors: by the compiled `checks` when they decide
    the request, else through pandas (`records_frame`, `judge`)."""
    contract, now = ws.config.dataset, datetime.now(UTC)
    compiled = checks.valid_rows(records, now) if checks is not None else None
    if compiled is not None:
        return compiled
    frame, cast_errors = records_frame(records, contract, now)
    with judging:  # Great Expectations (a suite the fast checks do not cover) keeps state: one at a time
        normalised, found = judge(frame, contract, suite, ws, cast_errors)
    errors = bounded(found)
    return normalised.iloc[[i for i in range(len(records)) if i not in errors]], errors


def score_records(records: list[Any], served: Served, ws: Workspace, suite: dict[str, Any], request_id: str,
                  judging: threading.Lock, checks: RecordChecks | None = None, plain: bool = True) -> Scored:
    """Judge the records by the contract (through the compiled `checks` where given) and score the valid
    ones with the served version: with no frame where `score_plain` can (unless `plain` is False: the caller
    tried it), else through pandas."""
    quick = score_plain(records, served, ws, request_id, checks) if plain else None
    if quick is not None:
        return quick
    contract = ws.config.dataset
    rows, errors = judged_rows(records, ws, suite, judging, checks)
    valid = [i for i in range(len(records)) if i not in errors]
    forecasts = intervals.forecast(served.model, rows, contract, served.interval) if valid else pd.DataFrame(
        {"prediction": [], "lower": [], "upper": []}, dtype="float64")
    hashes = intervals.input_hashes(rows, contract) if valid else []
    return scored(records, errors, served, ws, request_id, (forecasts["prediction"].to_numpy(),
                  forecasts["lower"].to_numpy(), forecasts["upper"].to_numpy(), hashes))


def score_plain(records: list[Any], served: Served, ws: Workspace, request_id: str,
                checks: RecordChecks | None) -> Scored | None:
    """`score_records` with no frame at all: records judged by the compiled `checks` into plain rows, fed to
    the ONNX graph as arrays, hashed through Arrow. About a millisecond for a record, so the API runs it for a
    small request on the event loop itself. None when a step needs pandas (the checks leave a value to it, the
    model scores through its Pipeline, the interval is per group): the caller then takes the frame path."""
    if checks is None or not intervals.scores_rows(served.model, served.interval):
        return None
    judged = checks.judge(records, datetime.now(UTC))
    if judged is None:
        return None
    rows, errors = judged
    typed = [rows[i] for i in range(len(records)) if i not in errors]
    if not typed:
        return scored(records, errors, served, ws, request_id, (np.empty(0), np.empty(0), np.empty(0), []))
    forecasts = intervals.forecast_rows(served.model, typed, served.interval)
    if forecasts is None:
        return None
    return scored(records, errors, served, ws, request_id, (*forecasts, intervals.row_hashes(typed, ws.config.dataset)))


def scored(records: list[Any], errors: dict[int, list[dict[str, Any]]], served: Served, ws: Workspace,
           request_id: str, forecasts: tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]) -> Scored:
    """Every record's result (its forecast, or its errors) and the valid ones' log rows, from the valid
    records' predictions, bounds and input hashes in order."""
    contract = ws.config.dataset
    predictions, lowers, uppers, hashes = forecasts
    valid = [i for i in range(len(records)) if i not in errors]
    results: list[dict[str, Any]] = [{} for _ in records]
    log_rows = []
    for i in errors:
        results[i] = {"index": i, "id": _record_id(records[i], contract), "status": 422, "errors": errors[i]}
    for n, i in enumerate(valid):
        prediction, lower, upper = float(predictions[n]), float(lowers[n]), float(uppers[n])
        record_id = _record_id(records[i], contract)
        results[i] = {"index": i, "id": record_id, "status": 200, "prediction": prediction,
                      "interval": {"lower": _finite(lower), "upper": _finite(upper),
                                   "coverage": served.interval.coverage},
                      "model_version": served.version}
        log_rows.append({"model": ws.model, "version": served.version,
                         "source_id": "" if record_id is None else str(record_id), "prediction": prediction,
                         "lower": lower, "upper": upper, "coverage": served.interval.coverage, "run_id": request_id,
                         "source": "api", "input_hash": hashes[n]})
    return Scored(results, log_rows)


def model_summary(ws: Workspace, served: Served) -> dict[str, Any]:
    """The served version: family, holdout metrics, when it became champion, its interval and model card."""
    with ws.engine.connect() as conn:
        model = get_model(conn, served.version, ws.model)
        try:
            metrics = get_evaluation(conn, model["run_id"])["candidate_metrics"]
        except LookupError:
            metrics = None
        promoted_at = conn.scalar(sa.text(
            "SELECT max(at) FROM pipeline.promotion_events WHERE model = :m AND to_version = :v"),
            {"m": ws.model, "v": served.version})
        card = conn.scalar(sa.text("SELECT path FROM pipeline.model_cards WHERE version = :v AND kind = 'card' "
                                   "ORDER BY created_at DESC LIMIT 1"), {"v": served.version})
    return {"model": ws.model, "version": served.version, "family": served.family, "holdout_metrics": metrics,
            "promoted_at": promoted_at.isoformat() if promoted_at else None,
            "interval": {"coverage": served.interval.coverage, "half_width": _finite(served.interval.half_width),
                         "method": served.interval.method, "guarantee": served.interval.guarantee,
                         "conditional_on": served.interval.conditional_on.name if served.interval.conditional_on
                         else None,
                         "group_half_widths": {g: _finite(w) for g, w in (served.interval.group_half_widths or {}).items()}
                         or None},
            "scoring": served.model.describe() if hasattr(served.model, "describe") else None,
            "artifact_hash": served.artifact_hash, "trained_on_snapshot": model["snapshot_hash"],
            "model_card": None if card is None else {"path": ws.relative(card),
                                                     "url": f"/v1/models/{ws.model}/card"}}


# --- the app -------------------------------------------------------------------------------------


def request_id_of(header: str | None) -> str:
    """The caller's X-Request-ID when it is a plain short token, else a new one: a random version-4 UUID, drawn
    from a generator seeded once from the system (`uuid4` reads os.urandom for each, a system call that gives
    up the GIL and waits to take it back behind every busy thread; an id that names a request is no secret)."""
    if header and REQUEST_ID.fullmatch(header):
        return header
    return uuid.UUID(int=REQUEST_IDS.getrandbits(128), version=4).hex


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is over `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestProblem(413, f"body of {declared} bytes; at most {limit} (serving.max_request_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestProblem(413, f"body over {limit} bytes (serving.max_request_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)
