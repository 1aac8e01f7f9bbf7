"""Ingest: labelled rows up to a watermark, frozen into a content-addressed snapshot.

SQLAlchemy names the database, checks the table and builds the query; the rows themselves come
over PostgreSQL's binary COPY protocol as Arrow (the ADBC driver) and go to Parquet as Arrow,
never as Python objects. Values keep the shape `pandas.read_sql` gives them (see `arrow_to_frame`).
"""

from __future__ import annotations

import io
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from pipeline.contract.config import ConfigError, DatasetContract
from pipeline.data.casting import NOT_FINITE, OUT_OF_RANGE_DATE, Unreadable, cast_column, cast_strict
from pipeline.runtime import threads
from pipeline.store.artifacts import ArtifactStore, open_verified, store_bytes
from pipeline.store.crypto import Keyring

# Python's dates and times (years 1 to 9999), as days and as microseconds since 1970-01-01.
FIRST_DAY, LAST_DAY = -719_162, 2_932_896
FIRST_MICROSECOND, LAST_MICROSECOND = -62_135_596_800_000_000, 253_402_300_799_999_999
# PostgreSQL's infinities: its own sentinels, and those shifted from its 2000 epoch (wrapping around) as the
# ADBC driver hands them on; both are far outside years 1 to 9999 whichever way it goes.
_I32, _I64 = 2**31, 2**63
DAY_INFINITIES = {_I32 - 1: "infinity", -_I32: "-infinity",
                  _I32 - 1 + 10_957 - 2 * _I32: "infinity", -_I32 + 10_957: "-infinity"}
MICROSECOND_INFINITIES = {_I64 - 1: "infinity", -_I64: "-infinity",
                          _I64 - 1 + 946_684_800_000_000 - 2 * _I64: "infinity",
                          -_I64 + 946_684_800_000_000: "-infinity"}
ROW_GROUP_ROWS = 1 << 17  # fixed, so a snapshot's bytes never depend on how the driver batched the rows
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd"}


class SchemaError(ValueError):
    """The source table lacks a contract column, or holds a value of the wrong type."""


@dataclass(frozen=True)
class Snapshot:
    snapshot_hash: str
    path: str
    row_count: int
    watermark: str
    source_table: str
    query: str
    unlabelled_rows: int = 0  # recorded up to the watermark, outcome not known yet: left out of training
    unlabelled_hash: str | None = None  # those rows, frozen beside the snapshot so validation can check them
    unlabelled_path: str | None = None
    unlabelled_query: str | None = None
    erased_rows: int = 0  # source rows refused because their id was erased (a tombstone names it), never stored

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_table(contract: DatasetContract) -> sa.TableClause:
    """The source table as SQLAlchemy sees it, with the contract's columns."""
    schema, _, name = contract.table.rpartition(".")
    return sa.table(name, *(sa.column(c) for c in contract.columns()), schema=schema or None)


def labelled_rows_query(contract: DatasetContract, watermark: datetime) -> sa.Select[Any]:
    """Rows recorded up to the watermark whose label was known by then, oldest first."""
    return recorded_rows_query(contract, watermark, labelled_only=True)


def labelled_at(contract: DatasetContract, table: sa.TableClause) -> sa.ColumnElement[Any]:
    """When a row's label became known, in SQL: its label time (a row labelled but never stamped counts as
    labelled when recorded), or its record time when the contract has no label time."""
    ts = table.c[contract.timestamp_column]
    if not contract.label_timestamp_column:
        return ts
    return sa.func.coalesce(table.c[contract.label_timestamp_column], ts)


def label_known(contract: DatasetContract, table: sa.TableClause, at: Any) -> sa.ColumnElement[bool]:
    """A row's label was known at `at`: it has one and, with a label time in the contract, got it by then."""
    target = table.c[contract.target_column]
    if not contract.label_timestamp_column:
        return target.is_not(None)
    return sa.and_(target.is_not(None), labelled_at(contract, table) <= at)


def _columns_as_known(contract: DatasetContract, table: sa.TableClause, known: sa.ColumnElement[bool]) -> list[Any]:
    """The contract's columns, the label and its time blanked where they were not known yet: an outcome
    filled in after the watermark never changes what a read as of the watermark gives."""
    if not contract.label_timestamp_column:
        return list(table.c)
    hidden = {contract.target_column, contract.label_timestamp_column}
    return [sa.case((known, column), else_=None).label(column.name) if column.name in hidden else column
            for column in table.c]


def recorded_rows_query(contract: DatasetContract, until: datetime, since: datetime | None = None,
                        labelled_only: bool = False, unlabelled_only: bool = False) -> sa.Select[Any]:
    """Rows recorded in (since, until] as known at `until`, oldest first; only those whose label was
    (or was not) known by then if asked."""
    table = source_table(contract)
    ts, watermark = table.c[contract.timestamp_column], sa.bindparam("watermark", until, type_=sa.DateTime)
    known = label_known(contract, table, watermark)
    query = sa.select(*_columns_as_known(contract, table, known)).where(ts <= watermark)
    if since is not None:
        query = query.where(ts > sa.bindparam("since", since))
    if labelled_only:
        query = query.where(known)
    if unlabelled_only:
        query = query.where(sa.not_(known))
    return query.order_by(ts, table.c[contract.id_column])


def unlabelled_rows_query(contract: DatasetContract, watermark: datetime) -> sa.Select[Any]:
    """Rows recorded up to the watermark whose outcome was not known by then, oldest first."""
    return recorded_rows_query(contract, watermark, unlabelled_only=True)


def source_column_types(engine: Engine, contract: DatasetContract) -> dict[str, Any] | None:
    """The source table's SQL column types by name, or None when the table does not exist."""
    schema, _, name = contract.table.rpartition(".")
    inspector = sa.inspect(engine)
    if not inspector.has_table(name, schema=schema or None):
        return None
    return {c["name"]: c["type"] for c in inspector.get_columns(name, schema=schema or None)}


def check_declared_formats(contract: DatasetContract, present: dict[str, Any]) -> None:
    """A date, timestamp or number the source holds as text must declare its format: it is never guessed."""
    formats = contract.column_formats()
    for column, kind in contract.column_types().items():
        if not isinstance(present.get(column), sa.String) or kind == "text":
            continue
        if column == contract.id_column:
            raise ConfigError(f"dataset.id_column: '{column}' of {contract.table} is text; set dataset.id_type: text "
                              "to read ids such as 'P-0001' as they are")
        if column in (contract.timestamp_column, contract.label_timestamp_column):
            key = "timestamp_column" if column == contract.timestamp_column else "label_timestamp_column"
            raise ConfigError(f"dataset.{key}: '{column}' of {contract.table} is text; the watermark is "
                              "compared in SQL, so it must be a date or timestamp column")
        if column not in formats:
            key = "target_decimal" if column == contract.target_column else (
                "features[].format (e.g. format: '%d/%m/%Y')" if kind in ("date", "timestamp")
                else "features[].decimal ('.' or ',')")
            raise ConfigError(f"dataset: column '{column}' of {contract.table} holds {kind} values as text; declare "
                              f"how to read them with dataset.{key} for '{column}', never guessed")


def check_source_columns(engine: Engine, contract: DatasetContract) -> None:
    """Fail with the missing column names when the source table lacks contract columns."""
    present = source_column_types(engine, contract)
    if present is None:
        raise SchemaError(f"source table {contract.table} does not exist (dataset.table in the config)")
    missing = [c for c in contract.columns() if c not in present]
    if missing:
        raise SchemaError(
            f"source table {contract.table} lacks contract column(s) {missing}; "
            f"it has {sorted(present)}. Fix the table or the dataset section of the config."
        )
    label_time = contract.label_timestamp_column
    if label_time and not isinstance(present[label_time], sa.DateTime):
        raise SchemaError(
            f"dataset.label_timestamp_column: column '{label_time}' of {contract.table} is {present[label_time]}; "
            "it must be a timestamp column (timestamptz, as sql/009_outcome_time.sql adds it), because the time "
            "an outcome became known is compared with the watermark in SQL"
        )
    for column, kind in contract.column_types().items():
        if not isinstance(present[column], COMPATIBLE_SQL_TYPES[kind]):
            raise SchemaError(
                f"column '{column}' of {contract.table} is {present[column]}, but the contract expects "
                f"{kind} (SQL types {[t.__name__ for t in COMPATIBLE_SQL_TYPES[kind]]})"
            )
    check_declared_formats(contract, present)


class EmptySelection(ValueError):
    """No labelled row is recorded up to the run's watermark: nothing to train on."""


def check_selection(engine: Engine, contract: DatasetContract, watermark: datetime) -> None:
    """Refuse a watermark that selects no labelled row, with one EXISTS over the query ingest would run."""
    watermark = datetime.fromisoformat(watermark.isoformat())  # plain datetime (Airflow passes pendulum)
    with engine.connect() as conn:
        if conn.scalar(sa.select(labelled_rows_query(contract, watermark).order_by(None).exists())):
            return
        first = conn.scalar(sa.select(sa.func.min(source_table(contract).c[contract.timestamp_column])))
    raise EmptySelection(
        f"no labelled rows of {contract.table} recorded up to {watermark.isoformat()} (the run's watermark, "
        f"{contract.timestamp_column} <= it, {contract.target_column} known): nothing to train on" + (
            f"; its first row was recorded at {first}" if first is not None else "; the table has no rows"))


# SQL column types each contract type can be read from; text columns are cast row by row in
# validation, where a value that will not cast quarantines its row instead of failing the batch.
COMPATIBLE_SQL_TYPES: dict[str, tuple[type[Any], ...]] = {
    "float": (sa.Float, sa.Numeric, sa.Integer, sa.String),
    "integer": (sa.Integer, sa.Numeric, sa.String),
    "text": (sa.String, sa.Enum),
    "date": (sa.Date, sa.DateTime, sa.String),
    "timestamp": (sa.DateTime, sa.String),
}


def cast_to_contract(frame: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """Give every column the dtype its contract type names (text by its declared format), or fail naming it."""
    out, formats = {}, contract.column_formats()
    for column, kind in contract.column_types().items():
        try:
            out[column] = cast_strict(frame[column], kind, formats.get(column), column)
        except (ValueError, TypeError) as exc:
            raise SchemaError(f"column '{column}' does not hold {kind} values: {exc}") from exc
    return pd.DataFrame(out, columns=contract.columns())


def snapshot_bytes(frame: pd.DataFrame) -> bytes:
    """Serialise a snapshot deterministically: the same rows give the same bytes."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
    return buffer.getvalue()


def query_sql(query: sa.Select[Any]) -> str:
    """The query as PostgreSQL text with its values inlined: what runs is what the snapshot records."""
    # Named parameters: no "%" doubling in literals, which only psycopg2 would undo.
    dialect = postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]
    return str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def arrow_uri(engine: Engine) -> str:
    """The libpq URI of the engine's database, for the Arrow (ADBC) driver."""
    if engine.url.get_backend_name() != "postgresql":
        raise ValueError(f"fast ingest reads PostgreSQL only; the database URL names {engine.url.get_backend_name()}")
    base = engine.url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    # libpq decodes %XX but not '+', so spaces (as in options=-c timezone=...) must be %20.
    query = urlencode(dict(engine.url.query), doseq=True, quote_via=quote)
    return f"{base}?{query}" if query else base


def _is_numeric(field: pa.Field) -> bool:
    """NUMERIC arrives as its text (exact); read_sql hands it on as float64, and so do we."""
    postgres_type = (field.metadata or {}).get(b"POSTGRESQL:type")
    return postgres_type == b"numeric" or getattr(field.type, "type_name", None) == "numeric"


def _frame_type(field: pa.Field) -> pa.DataType:
    """The Arrow type a column is kept as: the one whose pandas form matches read_sql's."""
    kind = field.type
    if _is_numeric(field) or pa.types.is_floating(kind):
        return pa.float64()
    if isinstance(kind, pa.ExtensionType):
        return kind.storage_type
    if pa.types.is_integer(kind):
        return pa.int64()
    if pa.types.is_timestamp(kind):
        return pa.timestamp("us", kind.tz)
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    return kind


def _cast(column: pa.Array, target: pa.DataType) -> pa.Array:
    if isinstance(column.type, pa.ExtensionType):
        column = column.storage
    if pa.types.is_float32(column.type) or pa.types.is_float16(column.type):
        # Via the shortest decimal text, as PostgreSQL prints REAL: 0.1 stays 0.1, not 0.100000001.
        column = column.cast(pa.string())
    return column if column.type == target else column.cast(target)


def frame_schema(schema: pa.Schema) -> pa.Schema:
    """The snapshot schema for a result schema: plain Arrow types, no driver metadata."""
    return pa.schema([pa.field(f.name, _frame_type(f)) for f in schema])


def _normalised(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        columns = [_cast(column, field.type) for column, field in zip(batch.columns, schema, strict=True)]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


FIRST_USER_OID = 16_384  # PostgreSQL's FirstNormalObjectId: every type with a smaller oid is built in
BUILT_IN_TYPES = {"adbc.postgresql.type_resolver_mode": "builtin"}  # the driver's own list of PostgreSQL's types


def built_in_types(engine: Engine, contract: DatasetContract) -> bool:
    """Whether every contract column of the source has a type built into PostgreSQL; a domain counts as its
    base type, which is what the server sends. The Arrow driver then reads with its own list of the built-in
    types (`BUILT_IN_TYPES`) instead of loading the server's type catalogue on connecting (~40 ms, each time). An
    enum or another type of the database's own is read with the catalogue, as it names it."""
    schema, _, name = contract.table.rpartition(".")
    with engine.connect() as conn:
        return bool(conn.scalar(sa.text("""
            SELECT bool_and(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END < :first_user_oid)
              FROM pg_catalog.pg_attribute a
              JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
             WHERE c.relname = :name AND (n.nspname = :schema OR (:schema = '' AND pg_catalog.pg_table_is_visible(c.oid)))
               AND a.attname = ANY(:columns) AND a.attnum > 0 AND NOT a.attisdropped
        """), {"first_user_oid": FIRST_USER_OID, "name": name, "schema": schema, "columns": contract.columns()}))


def arrow_connect(engine: Engine, contract: DatasetContract, autocommit: bool) -> Any:
    """An Arrow (ADBC) connection to the source, its columns checked; with the driver's built-in types where
    they cover every column the contract reads (`built_in_types`)."""
    check_source_columns(engine, contract)
    options = BUILT_IN_TYPES if built_in_types(engine, contract) else {}
    return adbc.connect(arrow_uri(engine), autocommit=autocommit, db_kwargs=options)


class EarlyRead:
    """A query's rows over an Arrow (ADBC) connection, started on a thread of its own while the caller does other
    work: the connection opens (its columns checked), the query runs and its first `rows` rows are read and held,
    all mostly waiting on the server with the GIL released, while a scoring run records itself and loads its
    champion. `batches` hands on the held rows, then the rest as they stream; `close` closes the cursor and the
    connection however the read ends, and re-raises the error that stopped it starting, if any, at `batches`."""

    def __init__(self, engine: Engine, contract: DatasetContract, query: sa.Select[Any], rows: int) -> None:
        self._cursor: Any = None
        self._connection: Any = None
        self._future = threads.in_background("early-read", self._start, engine, contract, query, rows)

    def _start(self, engine: Engine, contract: DatasetContract, query: sa.Select[Any], rows: int
               ) -> tuple[pa.Schema, list[pa.RecordBatch], Iterator[pa.RecordBatch]]:
        self._connection = arrow_connect(engine, contract, autocommit=True)
        self._cursor = self._connection.cursor()
        schema, batches = cursor_batches(self._cursor, query)
        held, count = [], 0
        while count < rows and (batch := next(batches, None)) is not None:
            held.append(batch)
            count += batch.num_rows
        return schema, held, batches

    def batches(self) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        schema, held, rest = self._future.result()
        return schema, itertools.chain(held, rest)

    def close(self) -> None:
        wait([self._future])
        for handle in (self._cursor, self._connection):
            if handle is not None:
                handle.close()


@contextmanager
def arrow_cursor(engine: Engine, contract: DatasetContract, consistent: bool = False) -> Iterator[Any]:
    """An Arrow (ADBC) cursor on the source database, after checking its columns; `consistent`: every
    query on it sees the same committed rows (one read-only REPEATABLE READ transaction)."""
    with arrow_connect(engine, contract, autocommit=not consistent) as conn, conn.cursor() as cursor:
        if consistent:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield cursor


def cursor_batches(cursor: Any, query: sa.Select[Any]) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Run a query on an Arrow cursor; its rows as record batches over COPY (binary), typed by `frame_schema`."""
    cursor.execute(query_sql(query))
    reader = cursor.fetch_record_batch()
    schema = frame_schema(reader.schema)
    return schema, _normalised(reader, schema)


@contextmanager
def arrow_batches(engine: Engine, contract: DatasetContract, query: sa.Select[Any]) -> Iterator[
        tuple[pa.Schema, Iterator[pa.RecordBatch]]]:
    """Stream a query's rows as Arrow record batches over COPY (binary), typed by `frame_schema`."""
    with arrow_cursor(engine, contract) as cursor:
        yield cursor_batches(cursor, query)


def _row_groups(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.Table]:
    """The rows re-cut into contiguous tables of ROW_GROUP_ROWS rows (the last one shorter)."""
    held, rows = [], 0
    for batch in batches:
        held.append(batch)
        rows += batch.num_rows
        while rows >= ROW_GROUP_ROWS:
            table = pa.Table.from_batches(held, schema)
            yield table.slice(0, ROW_GROUP_ROWS).combine_chunks()
            rest = table.slice(ROW_GROUP_ROWS)
            held, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(held, schema).combine_chunks()


def _with_null_columns(table: pa.Table) -> pa.Table:
    """Columns with no value at all become Arrow's null type (read_sql gives them as None objects)."""
    empty = [i for i, column in enumerate(table.columns) if column.null_count == len(column)]
    for i in empty:
        table = table.set_column(i, pa.field(table.schema[i].name, pa.null()), pa.nulls(table.num_rows))
    return table


WRITES_AHEAD = 2  # row groups read but not yet written: the read waits for the writer beyond that


@dataclass
class Written:
    """What `_write_parquet` wrote: the Parquet bytes, the rows (when kept), how many, and each column's nulls."""

    data: memoryview
    table: pa.Table | None
    rows: int
    nulls: list[int]

    def has_empty_column(self) -> bool:
        """Some column holds no value at all (every column, when there is no row)."""
        return any(n == self.rows for n in self.nulls)


def _write_parquet(groups: Iterable[pa.Table], schema: pa.Schema, keep: bool = True) -> Written:
    """Write row groups to Parquet on a second thread while the next ones are read; the rows are kept as
    one table only if asked, else each group is dropped once written (memory: a few row groups)."""
    sink = pa.BufferOutputStream()
    kept: list[pa.Table] = []
    pending: deque[Future[None]] = deque()
    rows, nulls = 0, [0] * len(schema)
    writer = pq.ParquetWriter(sink, schema, **PARQUET_OPTIONS)
    with ThreadPoolExecutor(max_workers=1) as pool:  # one worker: row groups are written in order
        try:
            for group in groups:
                rows += group.num_rows
                nulls = [n + column.null_count for n, column in zip(nulls, group.columns, strict=True)]
                if keep:
                    kept.append(group)
                pending.append(pool.submit(writer.write_table, group, row_group_size=ROW_GROUP_ROWS))
                while len(pending) > WRITES_AHEAD:
                    pending.popleft().result()  # raises a write's error, if any
        finally:
            wait(pending)
            writer.close()
    for written in pending:
        written.result()
    table = (pa.concat_tables(kept) if kept else schema.empty_table()) if keep else None
    return Written(memoryview(sink.getvalue()), table, rows, nulls)  # the writer's buffer itself, not a copy


def snapshot_table_bytes(table: pa.Table) -> memoryview:
    """Serialise an Arrow snapshot deterministically: the same rows give the same bytes."""
    return _write_parquet(_row_groups(table.to_batches(), table.schema), table.schema, keep=False).data


def read_snapshot_table(engine: Engine, contract: DatasetContract, query: sa.Select[Any]) -> tuple[pa.Table, memoryview]:
    """Run a query over the source table into an Arrow table and its Parquet bytes, in one pass."""
    with arrow_cursor(engine, contract) as cursor:
        return cursor_snapshot_table(cursor, query)


def cursor_snapshot_table(cursor: Any, query: sa.Select[Any]) -> tuple[pa.Table, memoryview]:
    """A query's rows on an Arrow cursor as an Arrow table and its Parquet bytes, in one pass."""
    written = cursor_snapshot(cursor, query, keep_table=True)
    assert written.table is not None
    return written.table, written.data


@dataclass
class Refusal:
    """Which rows to leave out of a snapshot as erased: `erased(ids)` marks them, by the column `id_column`;
    `rows` counts those left out."""

    id_column: str
    erased: Callable[[pa.Array], np.ndarray]
    rows: int = 0

    def kept(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            out = self.erased(batch.column(self.id_column))
            if out.any():
                self.rows += int(out.sum())
                batch = batch.filter(pa.array(~out))
            yield batch


def cursor_snapshot(cursor: Any, query: sa.Select[Any], keep_table: bool, refusal: Refusal | None = None) -> Written:
    """A query's rows on an Arrow cursor as Parquet bytes, in one pass, and as an Arrow table if asked
    (without it the rows stream through: a few row groups in memory besides the bytes); rows `refusal`
    marks as erased are left out."""
    schema, batches = cursor_batches(cursor, query)
    if refusal is not None:
        batches = refusal.kept(batches)
    written = _write_parquet(_row_groups(batches, schema), schema, keep=keep_table)
    if not written.has_empty_column():
        return written
    # rare: a column holds no value at all; it is written as nulls (a snapshot's rows, read back from the bytes)
    table = written.table if written.table is not None else pq.read_table(pa.BufferReader(written.data))
    typed = _with_null_columns(table)
    data = snapshot_table_bytes(typed) if typed.schema != table.schema else written.data
    return Written(data, typed if keep_table else None, written.rows, written.nulls)


def read_arrow_rows(engine: Engine, contract: DatasetContract, query: sa.Select[Any]) -> pa.Table:
    """Run a query over the source table into an Arrow table; values as the database holds them."""
    with arrow_batches(engine, contract, query) as (schema, batches):
        table = pa.Table.from_batches(list(batches), schema)
    return _with_null_columns(table)


def _out_of_range_texts(column: pa.ChunkedArray) -> dict[int, str]:
    """Positions of dates and times outside years 1 to 9999, with their text: 'infinity', '-infinity',
    or the date as numpy writes it (e.g. '-4713-11-24')."""
    days = pa.types.is_date32(column.type)
    if days:
        counts, low, high, infinities = column.cast(pa.int32()), FIRST_DAY, LAST_DAY, DAY_INFINITIES
    elif pa.types.is_timestamp(column.type) and column.type.unit == "us":  # frame_schema reads every time in us
        counts, low, high, infinities = column.cast(pa.int64()), FIRST_MICROSECOND, LAST_MICROSECOND, MICROSECOND_INFINITIES
    else:
        return {}
    outside = pc.fill_null(pc.or_(pc.less(counts, low), pc.greater(counts, high)), False)
    positions = np.flatnonzero(outside.to_numpy(zero_copy_only=False))
    values = counts.take(pa.array(positions, pa.int64())).to_pylist()
    return {int(p): infinities.get(v) or str(np.datetime64(v, "D") if days else np.datetime64(v, "us"))
            for p, v in zip(positions, values, strict=True)}


def _nan_texts(column: pa.ChunkedArray) -> dict[int, str]:
    """Positions of NaN in a float column: pandas would hold it as it holds NULL, a missing value."""
    if not pa.types.is_floating(column.type):
        return {}
    positions = np.flatnonzero(pc.fill_null(pc.is_nan(column), False).to_numpy(zero_copy_only=False))
    return {int(p): "NaN" for p in positions}


def arrow_to_frame(table: pa.Table, consume: bool = False) -> pd.DataFrame:
    """The pandas form of an Arrow read: the dtypes `pandas.read_sql` gives (int64, or float64 with
    missing values; float64; str; dates as objects; datetime64[us, UTC]; None for columns with no value).

    Two kinds of value pandas cannot carry as the database holds them arrive as `Unreadable` cells
    (the column then holds objects): a date or time outside years 1 to 9999 (PostgreSQL's infinities
    among them: pandas cannot hold it, read_sql fails on it), and NaN in a float column (pandas cannot
    tell it from NULL). Casting quarantines their rows, naming the column and the value.

    `consume`: the caller hands the table over; each column's Arrow memory is freed as it is converted
    (one column per block, not consolidated), so the read never holds the table and the frame whole."""
    marked: dict[str, dict[int, Unreadable]] = {}
    for index, name in enumerate(table.column_names):
        column = table.column(index)
        cells = {p: Unreadable(OUT_OF_RANGE_DATE, t) for p, t in _out_of_range_texts(column).items()}
        cells |= {p: Unreadable(NOT_FINITE, t) for p, t in _nan_texts(column).items()}
        if cells:
            keep = np.ones(table.num_rows, dtype=bool)
            keep[list(cells)] = False
            table = table.set_column(index, name, pc.if_else(pa.array(keep), column, pa.nulls(1, column.type)[0]))
            marked[name] = cells
    if consume:
        frame = table.to_pandas(self_destruct=True, split_blocks=True)
        del table
        pa.default_memory_pool().release_unused()
    else:
        frame = table.to_pandas()
    for name, cells in marked.items():
        values = frame[name].astype(object)
        values.iloc[list(cells)] = list(cells.values())
        frame[name] = values
    return frame


def read_raw_rows(engine: Engine, contract: DatasetContract, query: sa.Select[Any]) -> pd.DataFrame:
    """Run a query over the source table; values as the database holds them."""
    return arrow_to_frame(read_arrow_rows(engine, contract, query))


def read_readable_rows(engine: Engine, contract: DatasetContract, query: sa.Select[Any]) -> tuple[pd.DataFrame, int]:
    """Run a query over the source table; the rows whose every cell reads by the contract, typed, and
    how many rows held a cell that did not (left out, never reinterpreted)."""
    return readable_rows(read_raw_rows(engine, contract, query), contract)


def readable_rows(raw: pd.DataFrame, contract: DatasetContract) -> tuple[pd.DataFrame, int]:
    """The rows whose every cell reads by the contract, typed, and how many rows held a cell that did not."""
    formats = contract.column_formats()
    out, unreadable = {}, pd.Series(False, index=raw.index)
    for column, kind in contract.column_types().items():
        out[column], failed = cast_column(raw[column], kind, formats.get(column), column)
        unreadable |= failed
    frame = pd.DataFrame(out, columns=contract.columns())
    return frame.loc[~unreadable].reset_index(drop=True), int(unreadable.sum())


def read_labelled_rows(engine: Engine, contract: DatasetContract, watermark: datetime) -> pd.DataFrame:
    """Read the labelled rows up to `watermark`, as the database holds them."""
    return read_raw_rows(engine, contract, labelled_rows_query(contract, watermark))


def take_snapshot(
    engine: Engine, contract: DatasetContract, watermark: datetime, store: Path | ArtifactStore,
    keep_table: bool = True, erased: Callable[[pa.Array], np.ndarray] | None = None,
) -> tuple[Snapshot, pa.Table | None]:
    """Read the labelled rows, unchanged, and store them as an immutable snapshot named by its hash.
    The rows come back as Arrow (`arrow_to_frame` makes the pandas copy for a caller that needs one);
    with `keep_table` False they only stream through to the snapshot's bytes, and None comes back. Rows whose
    id `erased` marks (`pipeline.data.tombstones`) are refused: never stored, counted in `erased_rows`."""
    watermark = datetime.fromisoformat(watermark.isoformat())  # plain datetime (Airflow passes pendulum)
    query, waiting_query = labelled_rows_query(contract, watermark), unlabelled_rows_query(contract, watermark)
    refusals = [Refusal(contract.id_column, erased) if erased else None for _ in range(2)]
    with arrow_cursor(engine, contract, consistent=True) as cursor:  # no row is in both, or in neither
        labelled = cursor_snapshot(cursor, query, keep_table, refusals[0])
        waiting = cursor_snapshot(cursor, waiting_query, keep_table=False, refusal=refusals[1])
    table, data, waiting_data = labelled.table, labelled.data, waiting.data
    digest, path = store_bytes(store, "snapshots", data, ".parquet")
    snapshot = Snapshot(digest, str(path), labelled.rows, watermark.isoformat(), contract.table, query_sql(query),
                        erased_rows=sum(r.rows for r in refusals if r is not None))
    if waiting.rows:
        waiting_digest, waiting_path = store_bytes(store, "snapshots", waiting_data, ".parquet")
        snapshot = replace(snapshot, unlabelled_rows=waiting.rows, unlabelled_hash=waiting_digest,
                           unlabelled_path=str(waiting_path), unlabelled_query=query_sql(waiting_query))
    return snapshot, table


def store_clean_snapshot(frame: pd.DataFrame, store: Path | ArtifactStore) -> tuple[str, Path]:
    """Store the valid, normalised, typed rows a model trains on, named by their hash."""
    return store_bytes(store, "snapshots", snapshot_bytes(frame), ".parquet")


def load_snapshot(path: Path, snapshot_hash: str, columns: list[str] | None = None,
                  keys: Keyring | None = None) -> pd.DataFrame:
    """Read a stored snapshot after checking its bytes against its name: every column, or only `columns`
    (those of them it has). A sealed snapshot opens with `keys`."""
    with SnapshotFile(path, snapshot_hash, keys) as snapshot:
        return snapshot.read(columns)


BATCH_ROWS = ROW_GROUP_ROWS  # rows decoded at a time when only some rows of a row group are wanted


class SnapshotFile:
    """A stored snapshot, checked against its name once (streamed through, never whole in memory), then
    read as often as a stage needs through the same open file: some columns of every row, or every column
    of some rows. Every read is refused if the file was rewritten since the check."""

    def __init__(self, path: Path, snapshot_hash: str, keys: Keyring | None = None) -> None:
        self.file = open_verified(path, snapshot_hash, keys)
        self.parquet = pq.ParquetFile(self.file.handle)

    def __enter__(self) -> SnapshotFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.parquet.close()
        self.file.close()

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Every row, of every column or of those of `columns` the snapshot has."""
        if columns is not None:
            present = set(self.parquet.schema_arrow.names)
            columns = [name for name in dict.fromkeys(columns) if name in present]
        table = self.parquet.read(columns=columns)
        self.file.confirm_unchanged()
        return arrow_to_frame(table, consume=True)

    def rows(self, positions: np.ndarray) -> pd.DataFrame:
        """The rows at `positions`, in that order, with every column: what `read().iloc[positions]` gives,
        index included, decoded BATCH_ROWS at a time (row groups without a wanted row are skipped), so
        neither the whole snapshot nor a whole row group is ever in memory at once."""
        index = (self.parquet.schema_arrow.pandas_metadata or {}).get("index_columns", [])
        if any(not isinstance(entry, dict) or entry.get("start", 0) != 0 or entry.get("step", 1) != 1
               for entry in index):  # labels other than the row positions: take them from the whole read
            return self.read().iloc[positions]
        order = np.argsort(positions, kind="stable")
        wanted, parts, start = positions[order], [], 0
        for group in range(self.parquet.num_row_groups):
            rows = self.parquet.metadata.row_group(group).num_rows
            low, high = np.searchsorted(wanted, [start, start + rows])
            if high > low:
                for batch in self.parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group]):
                    first, last = np.searchsorted(wanted, [start, start + batch.num_rows])
                    if last > first:
                        parts.append(batch.take(pa.array(wanted[first:last] - start)))
                    start += batch.num_rows
            else:
                start += rows
        self.file.confirm_unchanged()
        table = pa.Table.from_batches(parts, schema=self.parquet.schema_arrow)
        frame = arrow_to_frame(table.take(pa.array(np.argsort(order))), consume=True)  # back to the order asked
        frame.index = pd.Index(positions)
        return frame
