"""Ingest: labelled rows up to a watermark, frozen into a content-addressed snapshot."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.artifacts import store_bytes, verify_file
from pipeline.config import DatasetContract


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_table(contract: DatasetContract) -> sa.TableClause:
    """The source table as SQLAlchemy sees it, with the contract's columns."""
    schema, _, name = contract.table.rpartition(".")
    return sa.table(name, *(sa.column(c) for c in contract.columns()), schema=schema or None)


def labelled_rows_query(contract: DatasetContract, watermark: datetime) -> sa.Select[Any]:
    """Rows with a known label recorded up to the watermark, oldest first."""
    return recorded_rows_query(contract, watermark, labelled_only=True)


def recorded_rows_query(contract: DatasetContract, until: datetime, since: datetime | None = None,
                        labelled_only: bool = False) -> sa.Select[Any]:
    """Rows recorded in (since, until], oldest first; only those with a label if asked."""
    table = source_table(contract)
    ts = table.c[contract.timestamp_column]
    query = sa.select(*table.c).where(ts <= sa.bindparam("watermark", until))
    if since is not None:
        query = query.where(ts > sa.bindparam("since", since))
    if labelled_only:
        query = query.where(table.c[contract.target_column].is_not(None))
    return query.order_by(ts, table.c[contract.id_column])


def check_source_columns(engine: Engine, contract: DatasetContract) -> None:
    """Fail with the missing column names when the source table lacks contract columns."""
    schema, _, name = contract.table.rpartition(".")
    inspector = sa.inspect(engine)
    if not inspector.has_table(name, schema=schema or None):
        raise SchemaError(f"source table {contract.table} does not exist (dataset.table in the config)")
    present = {c["name"]: c["type"] for c in inspector.get_columns(name, schema=schema or None)}
    missing = [c for c in contract.columns() if c not in present]
    if missing:
        raise SchemaError(
            f"source table {contract.table} lacks contract column(s) {missing}; "
            f"it has {sorted(present)}. Fix the table or the dataset section of the config."
        )
    for column, kind in contract.column_types().items():
        if not isinstance(present[column], COMPATIBLE_SQL_TYPES[kind]):
            raise SchemaError(
                f"column '{column}' of {contract.table} is {present[column]}, but the contract expects "
                f"{kind} (SQL types {[t.__name__ for t in COMPATIBLE_SQL_TYPES[kind]]})"
            )


# SQL column types each contract type can be read from; text columns are cast row by row in
# validation, where a value that will not cast quarantines its row instead of failing the batch.
COMPATIBLE_SQL_TYPES: dict[str, tuple[type[Any], ...]] = {
    "float": (sa.Float, sa.Numeric, sa.Integer, sa.String),
    "integer": (sa.Integer, sa.Numeric, sa.String),
    "text": (sa.String, sa.Enum),
    "date": (sa.Date, sa.DateTime, sa.String),
    "timestamp": (sa.DateTime, sa.String),
}


def _cast_column(values: pd.Series, kind: str) -> pd.Series:
    if kind == "float":
        return pd.to_numeric(values, errors="raise").astype("float64")
    if kind == "integer":
        return pd.to_numeric(values, errors="raise").astype("Int64")
    if kind == "text":
        return values.astype("string")
    if kind == "date":
        return pd.to_datetime(values, errors="raise").astype("datetime64[us]")
    return pd.to_datetime(values, utc=True, errors="raise").astype("datetime64[us, UTC]")


def cast_to_contract(frame: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """Give every column the dtype its contract type names, or fail naming the column."""
    out = {}
    for column, kind in contract.column_types().items():
        try:
            out[column] = _cast_column(frame[column], kind)
        except (ValueError, TypeError) as exc:
            raise SchemaError(f"column '{column}' does not hold {kind} values: {exc}") from exc
    return pd.DataFrame(out, columns=contract.columns())


def snapshot_bytes(frame: pd.DataFrame) -> bytes:
    """Serialise a snapshot deterministically: the same rows give the same bytes."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
    return buffer.getvalue()


def read_raw_rows(engine: Engine, contract: DatasetContract, query: sa.Select[Any]) -> pd.DataFrame:
    """Run a query over the source table; values as the database holds them."""
    check_source_columns(engine, contract)
    with engine.connect() as conn:
        return pd.read_sql(query, conn)


def read_rows(engine: Engine, contract: DatasetContract, query: sa.Select[Any]) -> pd.DataFrame:
    """Run a query over the source table and type the result by the contract."""
    return cast_to_contract(read_raw_rows(engine, contract, query), contract)


def read_labelled_rows(engine: Engine, contract: DatasetContract, watermark: datetime) -> pd.DataFrame:
    """Read the labelled rows up to `watermark`, as the database holds them."""
    return read_raw_rows(engine, contract, labelled_rows_query(contract, watermark))


def take_snapshot(
    engine: Engine, contract: DatasetContract, watermark: datetime, artifact_dir: Path
) -> tuple[Snapshot, pd.DataFrame]:
    """Read the labelled rows, unchanged, and store them as an immutable snapshot named by its hash."""
    watermark = datetime.fromisoformat(watermark.isoformat())  # plain datetime (Airflow passes pendulum)
    frame = read_labelled_rows(engine, contract, watermark)
    digest, path = store_bytes(artifact_dir, "snapshots", snapshot_bytes(frame), ".parquet")
    query = str(labelled_rows_query(contract, watermark).compile(
        dialect=engine.dialect, compile_kwargs={"literal_binds": True}
    ))
    snapshot = Snapshot(digest, str(path), len(frame), watermark.isoformat(), contract.table, query)
    return snapshot, frame


def store_clean_snapshot(frame: pd.DataFrame, artifact_dir: Path) -> tuple[str, Path]:
    """Store the valid, normalised, typed rows a model trains on, named by their hash."""
    return store_bytes(artifact_dir, "snapshots", snapshot_bytes(frame), ".parquet")


def load_snapshot(path: Path, snapshot_hash: str) -> pd.DataFrame:
    """Read a stored snapshot after checking its bytes against its name."""
    verify_file(path, snapshot_hash)
    return pd.read_parquet(path)
